//! A burst of payments from one node to another, run while a test does
//! something to the payer's signer, and the reconciliation of both sides
//! afterwards: each payment the payer counts as paid arrived exactly once,
//! for its amount; none it counts as failed arrived; every failure says why.

use std::process::{Command, Output};
use std::thread::JoinHandle;

use crate::bin;
use crate::network::{channel_with, field, node_id, ok, pay, text, wait_for};
use crate::node_process::NodeProcess;

/// The amount of each payment of a burst, in msat.
pub const AMOUNT_MSAT: u64 = 5_000_000;

/// Payments running in the background, one after the other, through
/// `lnpd-cli pay`.
pub struct Burst {
    hashes: Vec<String>,
    thread: JoinHandle<Vec<Output>>,
}

/// How many payments `n` received so far.
pub fn received(n: &NodeProcess) -> usize {
    ok(n, &["payments"])
        .lines()
        .filter(|l| l.contains("inbound") && l.contains("succeeded"))
        .count()
}

fn ledger(n: &NodeProcess) -> Vec<serde_json::Value> {
    ok(n, &["--json", "payments"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("payments --json"))
        .collect()
}

impl Burst {
    /// `payee` issues `count` invoices; a thread pays them from `payer`.
    pub fn start(payer: &NodeProcess, payee: &NodeProcess, count: usize) -> Burst {
        let invoices: Vec<String> = (0..count)
            .map(|i| {
                ok(
                    payee,
                    &[
                        "invoice",
                        &AMOUNT_MSAT.to_string(),
                        "--description",
                        &format!("burst {i}"),
                    ],
                )
            })
            .collect();
        let hashes = invoices
            .iter()
            .map(|i| {
                use std::str::FromStr;
                let inv = lightning_invoice::Bolt11Invoice::from_str(i).expect("an invoice");
                hex::encode(bitcoin::hashes::Hash::to_byte_array(*inv.payment_hash()))
            })
            .collect();
        let dir = payer.data_dir();
        let thread = std::thread::spawn(move || {
            invoices
                .iter()
                .map(|inv| {
                    Command::new(bin("lnpd-cli"))
                        .arg("--data-dir")
                        .arg(&dir)
                        .args(["--json", "pay", inv, "--timeout", "90"])
                        .output()
                        .expect("lnpd-cli runs")
                })
                .collect()
        });
        Burst { hashes, thread }
    }

    /// Waits for the burst to end and reconciles payer and payee, payment
    /// by payment. Returns how many succeeded.
    pub fn finish(self, payer: &NodeProcess, payee: &NodeProcess) -> usize {
        let count = self.hashes.len();
        let results = self.thread.join().expect("burst thread");
        let mut succeeded = 0;
        for (i, o) in results.iter().enumerate() {
            let out = text(o);
            if o.status.success() {
                assert_eq!(field(&out, "status"), "succeeded");
                succeeded += 1;
            } else {
                // A clean failure says so, with its reason: the node's, or
                // the admin API's refusal (e.g. no signer when it started).
                let err = String::from_utf8_lossy(&o.stderr);
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

        // Both sides agree on every payment, once nothing is in flight.
        let settled = wait_for(120, || {
            let paid = ledger(payer);
            self.hashes.iter().all(|h| {
                paid.iter()
                    .find(|p| p["payment_hash"] == *h)
                    .is_none_or(|p| p["status"] != "pending")
            })
        });
        assert!(
            settled,
            "payments still in flight:\n{}",
            ok(payer, &["payments"])
        );
        let (paid, got) = (ledger(payer), ledger(payee));
        let mut reconciled = 0;
        for h in &self.hashes {
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
                        "payment {h}: received {} times",
                        arrived.len()
                    );
                    assert_eq!(
                        arrived[0]["status"], "succeeded",
                        "payment {h}: {:?}",
                        arrived[0]
                    );
                    assert_eq!(
                        arrived[0]["amount_msat"], AMOUNT_MSAT,
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
                // Never started (no signer when the CLI asked): the payee
                // must not have it either.
                None => assert!(arrived.is_empty(), "payment {h} arrived but was never sent"),
                Some(other) => panic!("payment {h}: status {other}"),
            }
        }
        let payee_has = got
            .iter()
            .filter(|p| {
                self.hashes
                    .contains(&p["payment_hash"].as_str().unwrap_or("").to_string())
                    && p["status"] == "succeeded"
            })
            .count();
        assert_eq!(
            reconciled, payee_has,
            "every payment the payee received, the payer counts as paid"
        );
        assert_eq!(
            reconciled, succeeded,
            "the CLI and the payer's ledger agree"
        );
        println!("{succeeded} of {count} payments of the burst succeeded");
        succeeded
    }
}

/// Ends a burst during which the payer's signer was killed (after
/// `at_kill` payments) and started again: at least three payments went
/// through, reconciled by [`Burst::finish`], and the payer's node lost its
/// signer connection and made a new one.
pub fn finish_after_signer_restart(
    burst: Burst,
    payer: &NodeProcess,
    payee: &NodeProcess,
    count: usize,
    at_kill: usize,
) {
    let succeeded = burst.finish(payer, payee);
    assert!(
        succeeded >= 3,
        "only {succeeded} of {count} payments went through"
    );
    println!("signer killed after {at_kill} payments");
    // What the node had to wait for was retried or answered "pending" and
    // resumed, depending on timing.
    let log = payer.log();
    assert!(
        log.contains("lost the signer connection")
            && log.matches("connected to the signer at").count() >= 2,
        "the node did not reconnect to the signer\n{log}"
    );
}

/// Nothing was force-closed: the channel is there and usable on both
/// sides, neither log saw a close, and `more` payments go through.
pub fn channel_goes_on(
    payer: &NodeProcess,
    payee: &NodeProcess,
    more: usize,
    logs: &dyn Fn() -> String,
) {
    let (a_id, b_id) = (node_id(payer), node_id(payee));
    for (n, peer) in [(payer, &b_id), (payee, &a_id)] {
        assert!(
            wait_for(60, || channel_with(n, peer)
                .is_some_and(|c| c["is_usable"] == true)),
            "channel not usable\n--- payer ---\n{}\n--- payee ---\n{}",
            payer.log(),
            payee.log()
        );
    }
    assert!(!payer.log().contains("channel closed"), "{}", payer.log());
    assert!(!payee.log().contains("channel closed"), "{}", payee.log());
    let before = received(payee);
    for i in 0..more {
        pay(payer, payee, AMOUNT_MSAT, &format!("afterwards {i}"))
            .unwrap_or_else(|e| panic!("{e}\n--- payer ---\n{}\n{}", payer.log(), logs()));
    }
    assert_eq!(received(payee), before + more);
}
