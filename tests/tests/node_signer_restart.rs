//! The payer's signer is killed (`kill -9`) in the middle of a burst of
//! payments and started again: every payment completes or fails cleanly, no
//! channel is force-closed, and payments go on afterwards.
//!
//! What the payer saw is reconciled with what the payee received, payment
//! by payment: each one the payer counts as paid arrived exactly once, for
//! its amount, and none it counts as failed arrived; every failure says why.

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
    let hashes: Vec<String> = invoices
        .iter()
        .map(|i| {
            use std::str::FromStr;
            let inv = lightning_invoice::Bolt11Invoice::from_str(i).expect("an invoice");
            hex::encode(bitcoin::hashes::Hash::to_byte_array(*inv.payment_hash()))
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
            // A clean failure says so, with its reason; it never leaves the
            // CLI hanging or the node dead.
            let err = String::from_utf8_lossy(&o.stderr);
            // The node's reason, or the admin API's refusal (e.g. the
            // signer away when the payment was to start).
            let reason = if out.is_empty() {
                err.trim().to_string()
            } else {
                field(&out, "reason")
            };
            assert!(
                err.contains("payment") && !reason.is_empty(),
                "payment {i}: a failure without a reason: {out} {err}"
            );
        }
    }

    // Payer and payee agree on every payment of the burst, once nothing is
    // in flight any more.
    let ledger = |n: &NodeProcess| -> Vec<serde_json::Value> {
        ok(n, &["--json", "payments"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("payments --json"))
            .collect()
    };
    let settled = wait_for(120, || {
        let paid = ledger(&a);
        hashes.iter().all(|h| {
            paid.iter()
                .find(|p| p["payment_hash"] == *h)
                .is_none_or(|p| p["status"] != "pending")
        })
    });
    assert!(
        settled,
        "payments still in flight:\n{}",
        ok(&a, &["payments"])
    );
    let (paid, got) = (ledger(&a), ledger(&b));
    let mut reconciled = 0;
    for h in &hashes {
        let sent = paid.iter().find(|p| p["payment_hash"] == *h);
        let arrived: Vec<_> = got
            .iter()
            .filter(|p| p["payment_hash"] == *h && p["direction"] == "inbound")
            .collect();
        match sent.map(|p| p["status"].as_str().unwrap_or("")) {
            Some("succeeded") => {
                assert_eq!(
                    arrived.len(),
                    1,
                    "payment {h}: paid, received {} times",
                    arrived.len()
                );
                assert_eq!(
                    arrived[0]["status"], "succeeded",
                    "payment {h}: {:?}",
                    arrived[0]
                );
                assert_eq!(
                    arrived[0]["amount_msat"], 5_000_000,
                    "payment {h}: {:?}",
                    arrived[0]
                );
                reconciled += 1;
            }
            Some("failed") => {
                let reason = sent
                    .map(|p| p["reason"].as_str().unwrap_or(""))
                    .unwrap_or("");
                assert!(!reason.is_empty(), "payment {h} failed without a reason");
                assert!(
                    arrived.iter().all(|p| p["status"] != "succeeded"),
                    "payment {h}: the payer counts it failed, the payee received it"
                );
            }
            // Never started (the signer was away when the CLI asked): the
            // payee must not have it either.
            None => assert!(arrived.is_empty(), "payment {h} arrived but was never sent"),
            Some(other) => panic!("payment {h}: status {other}"),
        }
    }
    assert_eq!(
        reconciled,
        got.iter()
            .filter(
                |p| hashes.contains(&p["payment_hash"].as_str().unwrap_or("").to_string())
                    && p["status"] == "succeeded"
            )
            .count(),
        "every payment the payee received, the payer counts as paid"
    );
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
