//! Signer replicas over a real 3-member etcd cluster (loopback): one
//! active, the other standing by; failover after `kill -9`; a replica
//! paused (`SIGSTOP`) past its lease signs nothing once resumed; one etcd
//! member down changes nothing, two stop the writes (no quorum) with a
//! clear error, and signing resumes when they return. The channel played
//! through the replicas (Alice's side) goes on across all of it: the state
//! lives in etcd, not in a replica.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lnpd_proto::signer as pb;
use lnpd_signer_core::testing::{memory_signer, ChannelPair, PairOptions, SignerHandle};
use lnpd_signer_core::{call, ErrorKind, PolicyConfig, SignerError};
use lnpd_tests::etcd::EtcdCluster;
use lnpd_tests::hostile::{still_usable, MNEMONIC};
use lnpd_tests::SignerProcess;

fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn ping(s: &SignerProcess) -> Result<(), SignerError> {
    let mut c = s
        .client()
        .map_err(|e| SignerError::unavailable(e.to_string()))?;
    call!(c, Ping(pb::PingRequest { nonce: vec![1] }) => Ping).map(|_| ())
}

/// How many times `s` became active so far.
fn terms(s: &SignerProcess) -> usize {
    s.log().matches("is active (leadership revision").count()
}

/// Waits until `s` serves (it won the leadership and loaded the state).
fn active(s: &SignerProcess, secs: u64) -> bool {
    wait_for(secs, || ping(s).is_ok())
}

fn new_keys_id(s: &SignerProcess) -> Result<(), SignerError> {
    let mut c = s
        .client()
        .map_err(|e| SignerError::unavailable(e.to_string()))?;
    call!(c, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
        .map(|_| ())
}

fn state_counter(s: &SignerProcess) -> u64 {
    s.client().unwrap().info().unwrap().state_counter
}

/// The counter in a replica's `state.witness` ("TAG N").
fn witness_of(s: &SignerProcess) -> u64 {
    std::fs::read_to_string(s.data_dir().join("state.witness"))
        .ok()
        .and_then(|w| w.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn replicas_fail_over_fence_a_paused_one_and_need_an_etcd_quorum() {
    let mut etcd = EtcdCluster::start("replicas", 3).expect("etcd cluster");
    let mut a = SignerProcess::init_restored("replica-a", MNEMONIC)
        .unwrap()
        .with_run_args(&["--store", &etcd.url()]);
    let toml = a.data_dir().join("signer.toml");
    let mut config = std::fs::read_to_string(&toml).unwrap();
    config.push_str("\n[store]\nlease_ttl_secs = 5\n");
    std::fs::write(&toml, config).unwrap();
    let mut b = a.replica("replica-b").unwrap();

    a.start().unwrap();
    assert!(active(&a, 30), "a never became active\n{}", a.log());
    b.start().unwrap();
    let a_addr = a.addr.clone().unwrap();
    // The other one stands by and names the active one.
    assert!(
        wait_for(10, || ping(&b)
            .is_err_and(|e| e.message.contains("active is"))),
        "b does not stand by\n{}",
        b.log()
    );
    let err = ping(&b).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains("standby, active is") && err.message.contains(&a_addr),
        "{err}"
    );

    let mut p = ChannelPair::open(
        Box::new(a.client().unwrap()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("channel opens through replica a");
    still_usable(&mut p);

    // kill -9 of the active one: the other takes over with the state.
    let before = Instant::now();
    a.kill9();
    assert!(active(&b, 30), "b never took over\n{}", b.log());
    println!("failover after kill -9 in {:?}", before.elapsed());
    p.alice.signer = Box::new(b.client().unwrap());
    still_usable(&mut p);

    // a comes back as standby.
    a.restart().unwrap();
    let b_addr = b.addr.clone().unwrap();
    assert!(
        wait_for(10, || ping(&a).is_err_and(|e| e
            .message
            .contains(&format!("active is {b_addr} at {b_addr}")))),
        "a does not stand by behind b\n{}",
        a.log()
    );

    // The standby's witness follows the state in etcd: an older copy
    // restored into etcd later is refused by it too.
    still_usable(&mut p);
    let now = state_counter(&b);
    assert!(
        wait_for(10, || witness_of(&a) >= now),
        "the standby's witness stays at {} below {now}",
        witness_of(&a)
    );

    // Split brain attempt: b paused past its lease, a takes over and signs.
    let b_client_before = b.client().unwrap();
    b.signal("STOP").unwrap();
    let a_terms = terms(&a);
    assert!(
        wait_for(30, || terms(&a) > a_terms && ping(&a).is_ok()),
        "a did not take over from the paused b\n{}",
        a.log()
    );
    p.alice.signer = Box::new(a.client().unwrap());
    still_usable(&mut p);
    let counter = state_counter(&a);
    // b resumes: it signs nothing (its lease is gone, its writes would be
    // refused) and stands by.
    b.signal("CONT").unwrap();
    let mut stale = b_client_before;
    let r =
        call!(stale, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind == ErrorKind::Unavailable && e.message.contains("standby")),
        "the resumed replica answered: {r:?}"
    );
    assert!(
        wait_for(10, || b.log().contains("stopped signing")
            || b.log().contains("stepped down")),
        "{}",
        b.log()
    );
    assert_eq!(state_counter(&a), counter, "the resumed replica wrote");
    still_usable(&mut p);

    // One etcd member down: nothing changes.
    etcd.kill(0);
    still_usable(&mut p);
    // Two down: no quorum; a write is refused with a clear error, nothing
    // is signed.
    etcd.kill(1);
    let err = wait_for(20, || {
        new_keys_id(&a).is_err_and(|e| e.kind == ErrorKind::Unavailable)
    });
    assert!(err, "a signed without an etcd quorum");
    let why = new_keys_id(&a).unwrap_err();
    assert!(
        why.message.contains("etcd") || why.message.contains("standby"),
        "{why}"
    );
    // They return: one replica is active again, and the channel goes on.
    etcd.start_member(0).unwrap();
    etcd.start_member(1).unwrap();
    etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    assert!(
        wait_for(60, || ping(&a).is_ok() || ping(&b).is_ok()),
        "no replica active after the quorum returned\n--- a ---\n{}\n--- b ---\n{}",
        a.log(),
        b.log()
    );
    let now = if ping(&a).is_ok() { &a } else { &b };
    p.alice.signer = Box::new(now.client().unwrap());
    still_usable(&mut p);
    new_keys_id(now).unwrap();
    let _ = etcd.client_addr(2);
}

/// An existing one-machine signer becomes replicated without closing its
/// channels: `copy-state` copies state.redb into etcd (refused while the
/// daemon runs, and into a prefix that already holds a state), and the
/// same signer goes on as a replica from the copied state.
#[test]
fn a_redb_signer_is_copied_into_etcd_and_goes_on_as_a_replica() {
    let etcd = EtcdCluster::start("copy", 3).expect("etcd cluster");
    let url = format!("{}/copied", etcd.url());
    let mut a = SignerProcess::init_restored("copy-a", MNEMONIC).unwrap();
    a.start().unwrap();
    let mut p = ChannelPair::open(
        Box::new(a.client().unwrap()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("channel opens on redb");
    still_usable(&mut p);
    let counter = state_counter(&a);
    assert!(counter > 0);

    // While the daemon holds state.redb: refused, nothing copied.
    let out = a.tool(&["copy-state", "--store", &url]).unwrap();
    assert!(!out.status.success(), "copied from a running signer");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop lnpd-signer first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(etcd.copy("copied").unwrap().is_empty(), "written anyway");

    a.kill9();
    let out = a.tool(&["copy-state", "--store", &url]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!a.data_dir().join("state.redb").exists());
    assert!(a.data_dir().join("state.redb.copied-to-etcd").exists());
    let copied = etcd.copy("copied").unwrap();

    // A second copy (an older state.redb put back) is refused: etcd unchanged.
    std::fs::copy(
        a.data_dir().join("state.redb.copied-to-etcd"),
        a.data_dir().join("state.redb"),
    )
    .unwrap();
    let out = a.tool(&["copy-state", "--store", &url]).unwrap();
    assert!(!out.status.success(), "copied over an existing state");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds a signer state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(etcd.copy("copied").unwrap(), copied, "etcd changed");
    std::fs::remove_file(a.data_dir().join("state.redb")).unwrap();

    // The same signer as a replica: the copied state, the channel goes on.
    a.add_run_args(&["--store", &url]);
    a.restart().unwrap();
    assert!(
        active(&a, 30),
        "the replica never became active\n{}",
        a.log()
    );
    assert_eq!(state_counter(&a), counter, "not the copied state");
    p.alice.signer = Box::new(a.client().unwrap());
    still_usable(&mut p);
    assert!(state_counter(&a) > counter);
}
