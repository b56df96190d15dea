//! A signer on an isolated machine: it listens nowhere and dials its node
//! (`lnpd-signer run --connect`, `lnpd --signer-listen`). The node's payment
//! scenario runs over that connection; the payer's signer is killed
//! (`kill -9`) mid-burst and started again, and dials back in: every payment
//! completes or fails cleanly, each one counted as paid arrived exactly once
//! (reconciled with the payee), no channel is force-closed, and payments go
//! on. Meanwhile an impostor — a signer of another CA, and a client with no
//! certificate at all — dials the node's signer port: both are refused by
//! the mutual TLS and never used.

use std::io::Write;

use lnpd_tests::burst::{channel_goes_on, finish_after_signer_restart, received, Burst};
use lnpd_tests::network::{wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::{SignerProcess, TempDir};

const BURST: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_dialling_out_serves_payments_and_survives_a_kill() {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start_dialled("dial-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start_dialled("dial-b", &chain.bcoin).expect("node b");
    let a_listen = a.signer_listen_addr().expect("a's signer port");
    // The signer opened no port: no address file, and it says whom it dials.
    assert!(!a.signer.data_dir().join("signer.addr").exists());
    assert!(a
        .signer
        .log()
        .contains(&format!("dialling the node at {a_listen}")));
    assert!(a.log().contains("the signer connected from"), "{}", a.log());

    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");

    let burst = Burst::start(&a, &b, BURST);
    assert!(wait_for(60, || received(&b) >= 3), "burst did not start");
    a.signer.kill9();
    let at_kill = received(&b);
    assert!(at_kill < BURST, "the burst was over before the kill");

    // While the signer is down, impostors dial the node's signer port.
    let accepted = || a.log().matches("the signer connected from").count();
    let accepted_before = accepted();
    let mut impostor = SignerProcess::init_in(TempDir::new("dial-impostor")).expect("impostor");
    impostor
        .start_connecting(&a_listen)
        .expect("impostor dials");
    let mut plain = std::net::TcpStream::connect(&a_listen).expect("plain connect");
    let _ = plain.write_all(b"\x16\x03\x01 not a signer\r\n\r\n");
    assert!(
        wait_for(30, || a.log().matches("it is not our signer").count() >= 2),
        "the node did not refuse the impostors\n{}",
        a.log()
    );
    drop(plain);
    // The impostor's connections end at the handshake: it never serves.
    assert!(
        wait_for(30, || impostor.log().contains("ended; dialling again")),
        "{}",
        impostor.log()
    );
    assert_eq!(
        accepted(),
        accepted_before,
        "the node took an impostor's connection\n{}",
        a.log()
    );
    a.signer.restart().expect("signer restarts and dials again");

    finish_after_signer_restart(burst, &a, &b, BURST, at_kill);
    // Never an impostor's: every connection the node used came after a
    // successful mutual-TLS handshake, and the impostor still dials in vain.
    assert!(impostor.log().matches("ended; dialling again").count() >= 1);
    impostor.kill9();
    channel_goes_on(&a, &b, 5, &|| a.signer.log());
}
