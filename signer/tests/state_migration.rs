//! A store written before records had a schema of their own (schema 0:
//! wire messages inside the channel records) opens with this release, is
//! migrated once, in one durable write, and keeps working.
//!
//! `data/state-v0-alice.redb` was written by commit 039385b (the last
//! release on schema 0) running `first_steps` below with Alice's signer over
//! a redb store: seed tag 1, test entropy 1, default policy and options,
//! Bob an in-memory signer of seed tag 2.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use bitcoin::Network;
use lnpd_signer::store_redb::RedbStore;
use lnpd_signer_core::state::{MetaRecord, SCHEMA_VERSION};
use lnpd_signer_core::store::Store;
use lnpd_signer_core::testing::{memory_signer, test_entropy, ChannelPair, PairOptions, TestChain};
use lnpd_signer_core::{PolicyConfig, Seed, Signer};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/state-v0-alice.redb"
);

fn first_steps(p: &mut ChannelPair, chain: &mut TestChain) {
    p.prove_funding(chain, 3).unwrap();
    let paid = p.add_htlc(20_000_000, 1).unwrap();
    p.settle_htlc(&paid).unwrap();
    p.add_htlc_from_bob(10_000_000, 2).unwrap();
    p.add_htlc(5_000_000, 3).unwrap();
}

fn alice_over(path: &std::path::Path) -> Signer<RedbStore> {
    Signer::new(
        &Seed::new(vec![1; 32]).unwrap(),
        Network::Regtest,
        PolicyConfig::default(),
        RedbStore::open(path).unwrap(),
        test_entropy(1),
    )
    .unwrap()
}

fn schema_of(path: &std::path::Path) -> (u32, usize) {
    let snapshot = RedbStore::open(path).unwrap().load().unwrap();
    let meta = MetaRecord::decode_record(&snapshot.meta.unwrap()).unwrap();
    (meta.schema_version, snapshot.channels.len())
}

#[test]
fn a_store_of_the_previous_schema_is_migrated_and_keeps_working() {
    // This release, the same steps from scratch: the state to arrive at.
    let mut chain = TestChain::default();
    let mut p = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    first_steps(&mut p, &mut chain);
    let want = p.alice.signer.state_digest().unwrap();

    let dir = tempdir();
    let path = dir.join("state.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    assert_eq!(schema_of(&path), (0, 1), "the fixture is a schema-0 store");

    let migrated = alice_over(&path);
    assert_eq!(
        migrated.state_digest(),
        want,
        "the migrated state is the state this release reaches by itself"
    );
    drop(migrated);
    assert_eq!(schema_of(&path), (SCHEMA_VERSION, 1), "migrated durably");
    let stored = |path: &std::path::Path| {
        let s = RedbStore::open(path).unwrap().load().unwrap();
        (s.meta, s.channels)
    };
    let before = stored(&path);
    let again = alice_over(&path);
    assert_eq!(again.state_digest(), want);
    drop(again);
    assert_eq!(stored(&path), before, "a migrated store opens unchanged");

    // It keeps working: the migrated signer goes on with the channel.
    p.alice.signer = Box::new(alice_over(&path));
    let h = p.add_htlc(7_000_000, 4).unwrap();
    p.settle_htlc(&h).unwrap();
    for h in p.htlcs.clone() {
        p.settle_htlc(&h).unwrap();
    }
    let (alice_sig, bob_sig) = p.close(1_000).unwrap();
    assert_eq!((alice_sig.len(), bob_sig.len()), (64, 64));
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lnpd-migration-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
