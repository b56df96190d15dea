//! A node served by two signer replicas over a real 3-member etcd cluster
//! (`lnpd --signer A,B`): the active replica is killed (`kill -9`) in the
//! middle of a burst of payments. The other one takes the leadership,
//! loads the state from etcd and waits for the node's greeting; the node
//! follows it. Every payment completes or fails cleanly (payer and payee
//! reconciled payment by payment), no channel is force-closed, and
//! payments go on through the new active replica. The killed one, started
//! again, stands by and names the active one.

use lnpd_tests::burst::{channel_goes_on, received, Burst};
use lnpd_tests::etcd::EtcdCluster;
use lnpd_tests::network::{wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::{SignerProcess, TempDir};

const BURST: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_replica_killed_mid_burst_the_other_takes_over() {
    let etcd = EtcdCluster::start("failover", 3).expect("etcd cluster");
    let chain = Chain::start().await.expect("bcoin");
    let first = SignerProcess::init("failover-a1")
        .expect("signer init")
        .with_run_args(&["--store", &etcd.url()]);
    let second = first.replica("failover-a2").expect("replica");
    let mut a = NodeProcess::start_replicated(
        first,
        vec![second],
        TempDir::new("failover-a"),
        "failover-a",
        &chain.bcoin,
    )
    .expect("node a on two replicas");
    let b = NodeProcess::start("failover-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    let standby = a.replicas[0].addr.clone().expect("second replica address");

    let burst = Burst::start(&a, &b, BURST);
    assert!(
        wait_for(60, || received(&b) >= 3),
        "burst did not start\n--- A ---\n{}\n--- active ---\n{}\n--- standby ---\n{}",
        a.log(),
        a.signer.log(),
        a.replicas[0].log()
    );
    a.signer.kill9();
    let at_kill = received(&b);
    assert!(at_kill < BURST, "the burst was over before the kill");

    let succeeded = burst.finish(&a, &b);
    println!("active replica killed after {at_kill} payments");
    assert!(
        succeeded > at_kill,
        "no payment went through the other replica ({succeeded} of {BURST})\n--- A ---\n{}\n--- replica ---\n{}",
        a.log(),
        a.replicas[0].log()
    );
    // The second replica took over (it loaded the state from etcd), and
    // the node followed it.
    assert!(
        a.replicas[0]
            .log()
            .contains("state loaded from etcd; signing"),
        "{}",
        a.replicas[0].log()
    );
    assert!(
        a.log()
            .contains(&format!("connected to the signer at {standby}")),
        "the node did not follow the other replica\n{}",
        a.log()
    );
    channel_goes_on(&a, &b, 5, &|| a.replicas[0].log());

    // The killed replica comes back as the standby, naming the active one,
    // and the node stays where it is.
    let log_len = a.signer.log().len();
    a.signer.restart().expect("first replica restarts");
    assert!(
        wait_for(30, || a.signer.log()[log_len..].contains("standby")),
        "the restarted replica does not stand by\n{}",
        &a.signer.log()[log_len..]
    );
    channel_goes_on(&a, &b, 2, &|| a.replicas[0].log());
}
