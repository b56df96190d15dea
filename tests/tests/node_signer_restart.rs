//! The payer's signer is killed (`kill -9`) in the middle of a burst of
//! payments and started again: every payment completes or fails cleanly, no
//! channel is force-closed, and payments go on afterwards.
//!
//! What the payer saw is reconciled with what the payee received, payment
//! by payment: each one the payer counts as paid arrived exactly once, for
//! its amount, and none it counts as failed arrived; every failure says why.

use std::time::Duration;

use lnpd_tests::burst::{channel_goes_on, finish_after_signer_restart, received, Burst};
use lnpd_tests::network::{wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;

const BURST: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_killed_mid_burst_no_force_close() {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start("restart-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("restart-b", &chain.bcoin).expect("node b");
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
    std::thread::sleep(Duration::from_secs(2));
    a.signer.restart().expect("signer restarts");

    finish_after_signer_restart(burst, &a, &b, BURST, at_kill);
    channel_goes_on(&a, &b, 5, &|| a.signer.log());
}
