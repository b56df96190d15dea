//! Anti-rollback with real processes, for each store: the payer's signer
//! is restarted on an older copy of its state while its node has moved on
//! (redb: an old `state.redb`; etcd: the signer's keys put back to their
//! old values, as restoring an old etcd backup would).
//!
//! 1. Only the store restored (this machine's state witness kept): the
//!    signer finds its state older than its witness and signs nothing.
//! 2. The witness restored with it (a whole data directory from a backup,
//!    or a machine that never saw the later state): the node's greeting
//!    (the highest state counter it saw) gives it away.
//!
//! Both times: refused with `state-rollback-detected`, nothing written (the
//! old copy's records and counter are the same afterwards), nothing paid,
//! no channel closed. Then the latest state is put back: a payment held
//! meanwhile completes (or fails cleanly; or it was refused before it
//! started), the node's kept requests go through, and payments go on.

use lnpd_tests::burst::received;
use lnpd_tests::etcd::{EtcdCluster, KeyCopy};
use lnpd_tests::network::{channel_with, field, node_id, ok, pay, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::{SignerProcess, TempDir};

/// Where the signer keeps its state.
enum Store {
    Redb,
    /// A 3-member cluster, and the signer's key prefix.
    Etcd(EtcdCluster, String),
}

/// A copy of the store's records.
#[derive(PartialEq, Debug)]
enum Records {
    Redb(lnpd_signer_core::store::Snapshot),
    Etcd(KeyCopy),
}

/// A copy of a signer's state: its store and this machine's witness.
struct Copy {
    state: StoreCopy,
    witness: Option<Vec<u8>>,
}

enum StoreCopy {
    Redb(Vec<u8>),
    Etcd(KeyCopy),
}

/// The records a copy of `state.redb` holds (its counter included).
fn redb_records(bytes: &[u8]) -> lnpd_signer_core::store::Snapshot {
    use lnpd_signer_core::store::Store;
    let dir = TempDir::new("rollback-records");
    let path = dir.path.join("state.redb");
    std::fs::write(&path, bytes).expect("copy");
    lnpd_signer::store_redb::RedbStore::open(&path)
        .expect("opens")
        .load()
        .expect("loads")
}

impl Store {
    fn signer(&self, tag: &str) -> SignerProcess {
        let s = SignerProcess::init(tag).expect("signer init");
        match self {
            Store::Redb => s,
            Store::Etcd(etcd, prefix) => {
                s.with_run_args(&["--store", &format!("{}/{prefix}", etcd.url())])
            }
        }
    }

    /// The signer's state now (the signer stopped).
    fn copy(&self, a: &NodeProcess) -> Copy {
        let dir = a.signer.data_dir();
        let state = match self {
            Store::Redb => {
                StoreCopy::Redb(std::fs::read(dir.join("state.redb")).expect("state.redb"))
            }
            Store::Etcd(etcd, prefix) => StoreCopy::Etcd(etcd.copy(prefix).expect("etcd copy")),
        };
        Copy {
            state,
            witness: std::fs::read(dir.join("state.witness")).ok(),
        }
    }

    /// Puts a copy back (the signer stopped); the witness too if asked.
    fn put_back(&self, a: &NodeProcess, c: &Copy, with_witness: bool) {
        let dir = a.signer.data_dir();
        match (self, &c.state) {
            (Store::Redb, StoreCopy::Redb(bytes)) => {
                std::fs::write(dir.join("state.redb"), bytes).expect("write state.redb")
            }
            (Store::Etcd(etcd, prefix), StoreCopy::Etcd(keys)) => {
                etcd.put_back(prefix, keys).expect("etcd put back")
            }
            _ => unreachable!("a copy of another store"),
        }
        if with_witness {
            match &c.witness {
                Some(w) => std::fs::write(dir.join("state.witness"), w).expect("write witness"),
                None => {
                    let _ = std::fs::remove_file(dir.join("state.witness"));
                }
            }
        }
    }

    /// The records of a copy.
    fn records_of(&self, c: &Copy) -> Records {
        match &c.state {
            StoreCopy::Redb(bytes) => Records::Redb(redb_records(bytes)),
            StoreCopy::Etcd(keys) => Records::Etcd(keys.clone()),
        }
    }

    /// The records the store holds now (the signer stopped).
    fn records(&self, a: &NodeProcess) -> Records {
        self.records_of(&self.copy(a))
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
async fn redb_a_signer_restored_from_an_older_state_signs_nothing_until_the_latest_is_back() {
    restored_from_an_older_state(Store::Redb, "rollback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_signer_restored_from_an_older_state_signs_nothing_until_the_latest_is_back() {
    let etcd = EtcdCluster::start("rollback", 3).expect("etcd cluster");
    restored_from_an_older_state(Store::Etcd(etcd, "rollback".into()), "rollback-etcd").await;
}

async fn restored_from_an_older_state(store: Store, tag: &str) {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start_with(
        store.signer(&format!("{tag}-a-signer")),
        TempDir::new(&format!("{tag}-a")),
        &format!("{tag}-a"),
        &chain.bcoin,
    )
    .expect("node a");
    let b = NodeProcess::start(&format!("{tag}-b"), &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    let (a_id, b_id) = (node_id(&a), node_id(&b));
    pay(&a, &b, 5_000_000, "before the copy").expect("first payment");

    a.signer.kill9();
    let old = store.copy(&a);
    a.signer.restart().expect("signer restarts");
    for i in 0..3 {
        pay(&a, &b, 5_000_000, &format!("after the copy {i}")).expect("payment");
    }
    let paid_before = received(&b);
    let seen: u64 = field(&ok(&a, &["--json", "getinfo"]), "signer_state_counter")
        .parse()
        .expect("a counter");
    a.signer.kill9();
    let latest = store.copy(&a);

    // 1. state.redb alone restored: the witness tells.
    store.put_back(&a, &old, false);
    a.signer
        .restart()
        .expect("signer restarts on the old state");
    // (A replica first waits for its previous lease to lapse.)
    assert!(
        wait_for(30, || a.signer.log().contains("state-rollback-detected")
            && a.signer.log().contains("state witness")),
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
    assert_eq!(
        store.records(&a),
        store.records_of(&old),
        "the signer wrote on an older state"
    );

    // 2. The witness restored too: the node's counter tells.
    store.put_back(&a, &old, true);
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
    assert_eq!(
        store.records(&a),
        store.records_of(&old),
        "the signer wrote on an older state"
    );
    assert_eq!(received(&b), paid_before, "paid while the signer refused");
    println!("node had seen state #{seen}; refused twice, nothing written");

    // The latest state back: the held payment goes through (or fails
    // cleanly), payments go on, nothing was closed.
    store.put_back(&a, &latest, true);
    a.signer
        .restart()
        .expect("signer restarts on the latest state");
    // Refused before it started (the signer would not sign the invoice
    // check), it is not in the ledger; started, it settles either way.
    let settled = wait_for(120, || {
        !ok(&a, &["--json", "payments"])
            .lines()
            .any(|l| l.contains(&held) && l.contains("\"pending\""))
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
