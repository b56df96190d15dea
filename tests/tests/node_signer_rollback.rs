//! Anti-rollback with real processes (redb store): the payer's signer is
//! restarted on an older copy of `state.redb` while its node has moved on.
//!
//! 1. Only `state.redb` restored (the state witness kept): the signer finds
//!    its state older than its witness at start and signs nothing.
//! 2. The witness restored with it (a whole data directory from a backup):
//!    the node's greeting (the highest state counter it saw) gives it away.
//!
//! Both times: refused with `state-rollback-detected`, nothing written (the
//! old file's records and counter are the same afterwards), nothing paid, no channel closed.
//! Then the latest state is put back: the payment held meanwhile completes
//! (or fails cleanly) and payments go on.

use lnpd_tests::network::{channel_with, field, node_id, ok, pay, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;

/// The records a copy of `state.redb` holds (its counter included).
fn records(bytes: &[u8]) -> lnpd_signer_core::store::Snapshot {
    use lnpd_signer_core::store::Store;
    let dir = lnpd_tests::TempDir::new("rollback-records");
    let path = dir.path.join("state.redb");
    std::fs::write(&path, bytes).expect("copy");
    lnpd_signer::store_redb::RedbStore::open(&path)
        .expect("opens")
        .load()
        .expect("loads")
}

fn received(n: &NodeProcess) -> usize {
    ok(n, &["payments"])
        .lines()
        .filter(|l| l.contains("inbound") && l.contains("succeeded"))
        .count()
}

/// Copies of the signer's state file and witness.
struct Copy {
    state: Vec<u8>,
    witness: Option<Vec<u8>>,
}

fn copy_of(a: &NodeProcess) -> Copy {
    let dir = a.signer.data_dir();
    Copy {
        state: std::fs::read(dir.join("state.redb")).expect("state.redb"),
        witness: std::fs::read(dir.join("state.witness")).ok(),
    }
}

fn put_back(a: &NodeProcess, c: &Copy, with_witness: bool) {
    let dir = a.signer.data_dir();
    std::fs::write(dir.join("state.redb"), &c.state).expect("write state.redb");
    if with_witness {
        match &c.witness {
            Some(w) => std::fs::write(dir.join("state.witness"), w).expect("write witness"),
            None => {
                let _ = std::fs::remove_file(dir.join("state.witness"));
            }
        }
    }
}

/// A payment attempt while the signer refuses: it does not go through.
fn attempt(a: &NodeProcess, b: &NodeProcess, what: &str) -> String {
    let inv = ok(b, &["invoice", "7000000", "--description", what]);
    let o = a.cli(&["--json", "pay", &inv, "--timeout", "10"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        !o.status.success() || field(&out, "status") != "succeeded",
        "{what}: paid from an older state: {out}"
    );
    use std::str::FromStr;
    let inv = lightning_invoice::Bolt11Invoice::from_str(&inv).expect("an invoice");
    hex::encode(bitcoin::hashes::Hash::to_byte_array(*inv.payment_hash()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_restored_from_an_older_state_signs_nothing_until_the_latest_is_back() {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start("rollback-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("rollback-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    let (a_id, b_id) = (node_id(&a), node_id(&b));
    pay(&a, &b, 5_000_000, "before the copy").expect("first payment");

    a.signer.kill9();
    let old = copy_of(&a);
    a.signer.restart().expect("signer restarts");
    for i in 0..3 {
        pay(&a, &b, 5_000_000, &format!("after the copy {i}")).expect("payment");
    }
    let paid_before = received(&b);
    let seen: u64 = field(&ok(&a, &["--json", "getinfo"]), "signer_state_counter")
        .parse()
        .expect("a counter");
    a.signer.kill9();
    let latest = copy_of(&a);

    // 1. state.redb alone restored: the witness tells.
    put_back(&a, &old, false);
    a.signer
        .restart()
        .expect("signer restarts on the old state");
    assert!(
        a.signer.log().contains("state-rollback-detected")
            && a.signer.log().contains("state witness"),
        "{}",
        a.signer.log()
    );
    let held = attempt(&a, &b, "while rolled back (witness)");
    assert!(
        wait_for(30, || !field(
            &ok(&a, &["--json", "getinfo"]),
            "signer_rollback"
        )
        .is_empty()),
        "the node does not report the signer's refusal"
    );
    assert!(a.log().contains("state-rollback-detected"), "{}", a.log());
    a.signer.kill9();
    assert!(
        records(&std::fs::read(a.signer.data_dir().join("state.redb")).unwrap())
            == records(&old.state),
        "the signer wrote on an older state"
    );

    // 2. The witness restored too: the node's counter tells.
    put_back(&a, &old, true);
    let log_len = a.signer.log().len();
    a.signer
        .restart()
        .expect("signer restarts on the old state");
    assert!(
        wait_for(30, || a.signer.log()[log_len..]
            .contains("the node has seen state #")),
        "the node's counter did not give the older state away\n{}",
        &a.signer.log()[log_len..]
    );
    let _ = attempt(&a, &b, "while rolled back (node)");
    a.signer.kill9();
    assert!(
        records(&std::fs::read(a.signer.data_dir().join("state.redb")).unwrap())
            == records(&old.state),
        "the signer wrote on an older state"
    );
    assert_eq!(received(&b), paid_before, "paid while the signer refused");
    println!("node had seen state #{seen}; refused twice, nothing written");

    // The latest state back: the held payment goes through (or fails
    // cleanly), payments go on, nothing was closed.
    put_back(&a, &latest, true);
    a.signer
        .restart()
        .expect("signer restarts on the latest state");
    let settled = wait_for(120, || {
        ok(&a, &["--json", "payments"])
            .lines()
            .any(|l| l.contains(&held) && (l.contains("\"succeeded\"") || l.contains("\"failed\"")))
    });
    assert!(settled, "held payment still pending\n{}", a.log());
    pay(&a, &b, 5_000_000, "after the restore").expect("payment after the restore");
    for (n, peer) in [(&a, &b_id), (&b, &a_id)] {
        assert!(
            channel_with(n, peer).is_some_and(|c| c["is_usable"] == true),
            "channel not usable after the restore"
        );
    }
    assert!(!a.log().contains("channel closed"), "{}", a.log());
    assert!(!b.log().contains("channel closed"), "{}", b.log());
}
