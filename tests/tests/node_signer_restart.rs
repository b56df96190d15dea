//! The payer's signer is killed (`kill -9`) in the middle of a burst of
//! payments and started again: every payment completes or fails cleanly, no
//! channel is force-closed, and payments go on afterwards.

use std::process::Command;
use std::time::Duration;

use lnpd_tests::bin;
use lnpd_tests::network::{channel_with, field, node_id, ok, pay, text, wait_for, Chain};
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
    let (a_id, b_id) = (node_id(&a), node_id(&b));

    let invoices: Vec<String> = (0..BURST)
        .map(|i| {
            ok(
                &b,
                &["invoice", "5000000", "--description", &format!("burst {i}")],
            )
        })
        .collect();
    let a_dir = a.data_dir();
    let burst = std::thread::spawn(move || {
        invoices
            .iter()
            .map(|inv| {
                Command::new(bin("lnpd-cli"))
                    .arg("--data-dir")
                    .arg(&a_dir)
                    .args(["--json", "pay", inv, "--timeout", "90"])
                    .output()
                    .expect("lnpd-cli runs")
            })
            .collect::<Vec<_>>()
    });
    let received = |n: &NodeProcess| {
        ok(n, &["payments"])
            .lines()
            .filter(|l| l.contains("inbound") && l.contains("succeeded"))
            .count()
    };
    assert!(wait_for(60, || received(&b) >= 3), "burst did not start");
    a.signer.kill9();
    let at_kill = received(&b);
    assert!(at_kill < BURST, "the burst was over before the kill");
    std::thread::sleep(Duration::from_secs(2));
    a.signer.restart().expect("signer restarts");

    let results = burst.join().expect("burst thread");
    let mut succeeded = 0;
    for (i, o) in results.iter().enumerate() {
        let out = text(o);
        if o.status.success() {
            assert_eq!(field(&out, "status"), "succeeded");
            succeeded += 1;
        } else {
            // A clean failure says so; it never leaves the CLI hanging or the node dead.
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("payment") || out.contains("failed"),
                "payment {i}: {out} {err}"
            );
        }
    }
    assert!(
        succeeded >= 3,
        "only {succeeded} of {BURST} payments went through"
    );
    println!("signer killed after {at_kill} payments; {succeeded} of {BURST} succeeded");
    // The node lost the signer and found it again (what it had to wait for
    // was retried or answered "pending" and resumed, depending on timing).
    let log = a.log();
    assert!(
        log.contains("lost the signer connection")
            && log.matches("connected to the signer at").count() >= 2,
        "the node did not reconnect to the signer\n{log}"
    );

    // Nothing was force-closed: the channel is there and usable on both sides.
    for (n, peer) in [(&a, &b_id), (&b, &a_id)] {
        assert!(
            wait_for(60, || channel_with(n, peer)
                .is_some_and(|c| c["is_usable"] == true)),
            "channel not usable after the restart\n--- A ---\n{}\n--- B ---\n{}",
            a.log(),
            b.log()
        );
    }
    assert!(!a.log().contains("channel closed"), "{}", a.log());
    assert!(!b.log().contains("channel closed"), "{}", b.log());

    let before = received(&b);
    for i in 0..5 {
        pay(&a, &b, 5_000_000, &format!("after restart {i}")).unwrap_or_else(|e| {
            panic!(
                "{e}\n--- A ---\n{}\n--- signer ---\n{}",
                a.log(),
                a.signer.log()
            )
        });
    }
    assert_eq!(received(&b), before + 5);
}
