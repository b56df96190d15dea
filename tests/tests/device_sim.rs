//! The hardware signer, simulated: `lnpd-signer-sim` runs the firmware on
//! the host (flash in a file, HID reports on a Unix socket) and
//! `lnpd-signer run --device sim:<socket>` bridges a node to it as it would
//! to a USB device.
//! - a node pays and is paid through the bridge and the simulated device,
//!   a payment above the threshold confirmed on the device's button;
//! - the device is killed (SIGKILL) at random points while it writes its
//!   state, many times: it always restarts on a consistent state (channel
//!   keys ids never reissued), and the channel it holds goes on;
//! - random reports on the socket get error replies and leave the device
//!   usable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use lnpd_proto::device_client::DeviceClient;
use lnpd_proto::signer::{self as pb, device_reply, device_request, reply, request};
use lnpd_signer_core::testing::{memory_signer, ChannelPair, PairOptions, SignerHandle};
use lnpd_signer_core::{PolicyConfig, SignerError};
use lnpd_tests::network::{field, pay, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::sim::{SimProcess, SimSocket};
use lnpd_tests::{SignerProcess, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pays_through_the_bridge_and_the_simulated_device() {
    let chain = Chain::start().await.expect("bcoin");
    // The device's button confirms; payments above 20 000 sat ask it.
    let sim = SimProcess::start(
        "dev-pay-sim",
        &["--approve", "yes", "--approval-above-sat", "20000"],
    )
    .expect("simulator");
    let signer = SignerProcess::init_for_device(TempDir::new("dev-pay-bridge"), &sim.spec())
        .expect("init and pair the bridge");
    let a = NodeProcess::start_with(signer, TempDir::new("dev-pay-a"), "dev-pay-a", &chain.bcoin)
        .expect("node a over the bridge");
    let b = NodeProcess::start("dev-pay-b", &chain.bcoin).expect("node b");
    chain
        .fund(&[&a])
        .await
        .expect("funding A (wallet PSBT signed by the device)");
    chain
        .open_channel(&a, &b, 500_000)
        .await
        .expect("channel signed by the device");
    for i in 0..3 {
        let out = pay(&a, &b, 10_000_000, &format!("a-to-b {i}"))
            .unwrap_or_else(|e| panic!("{e}\n--- A ---\n{}\n--- sim ---\n{}", a.log(), sim.log()));
        assert_eq!(field(&out, "status"), "succeeded");
    }
    assert!(
        !sim.log().contains("[device display] Pay"),
        "small payments ask nobody"
    );
    let big = pay(&a, &b, 30_000_000, "big").expect("a payment confirmed on the device");
    assert_eq!(field(&big, "status"), "succeeded");
    assert!(
        sim.log().contains("[device display] Pay 30000 sat"),
        "{}",
        sim.log()
    );
    let back = pay(&b, &a, 5_000_000, "b-to-a").expect("A paid through the device");
    assert_eq!(field(&back, "status"), "succeeded");
    assert!(
        a.signer.log().contains("bridging sim:"),
        "{}",
        a.signer.log()
    );
    // A withdrawal to an address the device was never told about is refused
    // by the device and audited on the host; once the address is added on
    // the device (its button confirms), the same withdrawal is signed.
    let addr = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
    let refused = a.cli(&["withdraw", addr, "100000"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("onchain-outputs-known"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let operator = |args: &[&str]| {
        let out = std::process::Command::new(lnpd_tests::signer_bin())
            .args(args)
            .arg("--data-dir")
            .arg(a.signer.data_dir())
            .output()
            .expect("lnpd-signer");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(operator(&["log"]).contains("onchain-outputs-known"));
    operator(&["allowlist", "add", addr, "--device", &sim.spec()]);
    assert!(sim.log().contains("[device display] Allow sending to"));
    let sent = a.cli(&["withdraw", addr, "100000"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // The operator's command used a second connection while the bridge
    // kept its own (the payments below prove the bridge still works).
    assert!(
        sim.log().contains("host connection 1 opened"),
        "{}",
        sim.log()
    );
}

fn host_key() -> Vec<u8> {
    PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[9; 32]).unwrap())
        .serialize()
        .to_vec()
}

fn send(
    client: &mut DeviceClient<SimSocket>,
    body: device_request::Body,
) -> Result<device_reply::Body, String> {
    client
        .exchange(&pb::DeviceRequest { body: Some(body) })
        .map_err(|e| format!("{e:?}"))?
        .body
        .ok_or_else(|| "empty reply".into())
}

/// A connection that said hello (pairing first when `pair`).
fn hello(sim: &SimProcess, cid: u32, pair: bool) -> DeviceClient<SimSocket> {
    let mut c = sim.connect(cid).expect("socket");
    if pair {
        let r = send(
            &mut c,
            device_request::Body::Pair(pb::PairRequest {
                host_key: host_key(),
                nonce: vec![1; 32],
            }),
        );
        assert!(matches!(r, Ok(device_reply::Body::Pair(_))), "{r:?}");
    }
    let (device_key, nonce) = match send(&mut c, device_request::Body::Identity(Default::default()))
    {
        Ok(device_reply::Body::Identity(i)) => (i.device_key, i.nonce),
        other => panic!("identity: {other:?}"),
    };
    let digest = lnpd_proto::pairing::host_hello_digest(&nonce, cid, &device_key);
    let host_signature = Secp256k1::new()
        .sign_ecdsa(
            &bitcoin::secp256k1::Message::from_digest(digest),
            &SecretKey::from_slice(&[9; 32]).unwrap(),
        )
        .serialize_compact()
        .to_vec();
    let r = send(
        &mut c,
        device_request::Body::Hello(pb::HelloRequest {
            host_key: host_key(),
            challenge: vec![2; 32],
            host_signature,
        }),
    );
    assert!(matches!(r, Ok(device_reply::Body::Hello(_))), "{r:?}");
    c
}

/// The device as a signer for the in-process channel harness; the test
/// swaps the connection after a restart.
#[derive(Clone)]
struct Shared(Arc<Mutex<Option<DeviceClient<SimSocket>>>>);

impl SignerHandle for Shared {
    fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        let mut guard = self.0.lock().unwrap();
        let c = guard
            .as_mut()
            .ok_or_else(|| SignerError::internal("no connection"))?;
        let req = pb::Request {
            id: 1,
            body: Some(body),
        };
        match send(c, device_request::Body::Request(req)) {
            Ok(device_reply::Body::Reply(pb::Reply {
                body: Some(reply::Body::Error(e)),
                ..
            }))
            | Ok(device_reply::Body::Error(e)) => Err(SignerError::from_wire(&e)),
            Ok(device_reply::Body::Reply(pb::Reply { body: Some(b), .. })) => Ok(b),
            other => {
                *guard = None;
                Err(SignerError::internal(format!("link: {other:?}")))
            }
        }
    }
    fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        Ok(bodies.into_iter().map(|b| self.handle(b)).collect())
    }
}

fn new_keys_id(c: &mut DeviceClient<SimSocket>) -> Result<Vec<u8>, String> {
    match send(
        c,
        device_request::Body::Request(pb::Request {
            id: 1,
            body: Some(request::Body::NewChannelKeysId(Default::default())),
        }),
    )? {
        device_reply::Body::Reply(pb::Reply {
            body: Some(reply::Body::NewChannelKeysId(r)),
            ..
        }) => Ok(r.channel_keys_id),
        other => Err(format!("{other:?}")),
    }
}

/// A small deterministic generator for the kill delays.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn the_device_survives_kills_during_state_writes() {
    let mut sim = SimProcess::start("dev-cut-sim", &["--approve", "yes"]).expect("simulator");
    let conn = Shared(Arc::new(Mutex::new(Some(hello(&sim, 1, true)))));
    let mut p = ChannelPair::open(
        Box::new(conn.clone()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("a channel held by the device");
    let h = p.add_htlc(20_000_000, 1).expect("a payment");
    p.settle_htlc(&h).expect("settled");
    // The kills below cut this connection anyway.
    *conn.0.lock().unwrap() = None;

    let mut issued: Vec<Vec<u8>> = Vec::new();
    let mut rng = 0x5eed_u64;
    const ROUNDS: u32 = 40;
    let mut cut_mid_stream = 0;
    for round in 0..ROUNDS {
        let mut c = hello(&sim, 100 + round, false);
        let pid = sim.pid().expect("running");
        let delay = Duration::from_micros(next(&mut rng) % 20_000);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        // Every request rewrites the device's whole state in flash.
        let mut done = 0;
        while let Ok(id) = new_keys_id(&mut c) {
            assert!(!issued.contains(&id), "keys id reissued");
            issued.push(id);
            done += 1;
        }
        killer.join().unwrap();
        if done > 0 {
            cut_mid_stream += 1;
        }
        sim.kill9();
        sim.restart()
            .unwrap_or_else(|e| panic!("round {round}: the device does not start again: {e}"));
    }
    assert!(
        cut_mid_stream > ROUNDS / 2,
        "most kills landed while the device was writing ({cut_mid_stream}/{ROUNDS})"
    );
    // Consistent: nothing issued is issued again, and the channel goes on.
    let mut c = hello(&sim, 999, false);
    for _ in 0..5 {
        let id = new_keys_id(&mut c).expect("the device works after the cuts");
        assert!(!issued.contains(&id), "keys id reissued after a power cut");
    }
    *conn.0.lock().unwrap() = Some(c);
    let h = p.add_htlc(10_000_000, 2).expect("the channel goes on");
    p.settle_htlc(&h).expect("settled after the cuts");
}

#[test]
fn random_reports_get_error_replies_and_change_nothing() {
    use std::io::{Read, Write};
    let sim = SimProcess::start("dev-fuzz-sim", &["--approve", "yes"]).expect("simulator");
    drop(hello(&sim, 1, true));
    let mut raw = std::os::unix::net::UnixStream::connect(sim.socket()).unwrap();
    let mut reader = raw.try_clone().unwrap();
    // Drain the device's replies so it never blocks on a full socket.
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut rng = 77u64;
    for i in 0..5_000u32 {
        let mut r = [0u8; 64];
        for b in r.iter_mut() {
            *b = next(&mut rng) as u8;
        }
        // Mostly one channel and small sequence numbers, to reach deep
        // into the reassembler.
        if i % 3 != 0 {
            r[..4].copy_from_slice(&7u32.to_be_bytes());
            r[4] = 0;
            r[5] = (next(&mut rng) % 4) as u8;
        }
        raw.write_all(&r).unwrap();
    }
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let replied = drain.join().unwrap();
    assert!(
        replied > 0 && replied % 64 == 0,
        "{replied} bytes of replies"
    );
    // The device still answers, and still knows its host.
    let mut c = hello(&sim, 2, false);
    new_keys_id(&mut c).expect("usable after the fuzz");
}

#[test]
fn the_bridge_sends_a_batch_too_large_for_the_link_one_request_at_a_time() {
    let sim = SimProcess::start("dev-batch-sim", &["--approve", "yes"]).expect("simulator");
    let mut signer = SignerProcess::init_for_device(TempDir::new("dev-batch-bridge"), &sim.spec())
        .expect("init and pair the bridge");
    signer.start().expect("bridge");
    let mut client = signer.client().expect("mTLS client");
    // Two requests of 40 KB each: together over the 64 KiB a device takes.
    let big = |n: u8| {
        request::Body::ValidateHolderCommitment(pb::ValidateHolderCommitmentRequest {
            channel_keys_id: vec![n; 32],
            commitment: Some(pb::CommitmentData {
                transaction: vec![0; 40_000],
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let replies = client
        .handle_batch(vec![
            big(1),
            request::Body::Ping(Default::default()),
            big(2),
        ])
        .expect("a batch reply, not a broken link");
    assert_eq!(replies.len(), 3);
    assert!(replies[0].is_err(), "no such channel");
    assert!(replies[1].is_ok(), "the ping in between is answered");
    assert!(replies[2].is_err());
    // A single request too large for the link is refused as such.
    let huge = request::Body::ValidateHolderCommitment(pb::ValidateHolderCommitmentRequest {
        commitment: Some(pb::CommitmentData {
            transaction: vec![0; 70_000],
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = client.handle(huge).expect_err("too large");
    assert_eq!(err.kind, lnpd_signer_core::ErrorKind::Invalid, "{err}");
    // The link is still up.
    client
        .handle(request::Body::Ping(Default::default()))
        .expect("ping after the large requests");
}
