//! The etcd store against a real etcd (one member on loopback): what a
//! commit writes, and what it must refuse — a writer whose leadership key
//! was taken over, a record changed behind its back — with nothing
//! written either time.

use std::time::Duration;

use lnpd_signer::etcd::{Etcd, EtcdSettings};
use lnpd_signer::store_etcd::{EtcdStore, Leadership};
use lnpd_signer_core::store::{Store, Write};
use lnpd_tests::etcd::EtcdCluster;

fn settings(c: &EtcdCluster) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![c.client_addr(0).to_string()],
        prefix: "store".into(),
        tls: None,
        lease_ttl: Duration::from_secs(5),
    }
}

fn store(c: &EtcdCluster, leader_revision: i64) -> EtcdStore {
    EtcdStore::new(
        Etcd::new(&settings(c)).expect("client"),
        "store",
        Some(Leadership {
            key: b"store/leader".to_vec(),
            create_revision: leader_revision,
        }),
    )
}

#[test]
fn commits_are_whole_conditioned_and_take_the_last_write_of_a_record() {
    let etcd = EtcdCluster::start("store", 1).expect("etcd");
    let leader = etcd.put(b"store/leader", b"me").expect("leader key");
    let mut s = store(&etcd, leader);
    let id = [7u8; 32];

    // A batch writing one record twice (two requests for one channel):
    // one transaction, the last value kept.
    s.commit(vec![
        Write::Channel(id, b"first".to_vec()),
        Write::Meta(b"meta".to_vec()),
        Write::Channel(id, b"second".to_vec()),
        Write::Counter(1),
    ])
    .expect("commit");
    let snap = s.load().expect("load");
    assert_eq!(
        snap.channels.get(&id).map(Vec::as_slice),
        Some(&b"second"[..])
    );
    assert_eq!(snap.meta.as_deref(), Some(&b"meta"[..]));
    assert_eq!(snap.counter, 1);

    // A record changed behind this writer's back (another writer, an
    // operator): refused, nothing of the commit written.
    let mut other = store(&etcd, leader);
    other.load().expect("load");
    other
        .commit(vec![
            Write::Channel(id, b"other".to_vec()),
            Write::Counter(2),
        ])
        .expect("the other writer commits");
    let before = etcd.copy("store").expect("copy");
    let refused = s.commit(vec![
        Write::Channel(id, b"stale".to_vec()),
        Write::Meta(b"stale".to_vec()),
        Write::Counter(2),
    ]);
    assert!(refused.is_err(), "a write over a record it did not read");
    assert_eq!(etcd.copy("store").expect("copy"), before, "partly written");

    // The leadership key is not the one this writer created (another
    // replica's term created it again, with another create revision): the
    // commit is refused, nothing written.
    let mut deposed = store(&etcd, leader + 1_000);
    deposed.load().expect("load");
    let before = etcd.copy("store").expect("copy");
    let refused = deposed.commit(vec![Write::Meta(b"late".to_vec()), Write::Counter(3)]);
    assert!(refused.is_err(), "a write without the leadership");
    assert_eq!(
        etcd.copy("store").expect("copy"),
        before,
        "written without the leadership"
    );
}
