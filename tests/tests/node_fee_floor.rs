//! Peers on the network's fee floor. bcoin has no estimate on a fresh
//! regtest chain (and none beyond 15 blocks ever), which is where lnpd used
//! to take its fallback feerate as the lowest it accepts from a peer. On
//! default settings lnpd must: keep a channel whose funder lowers its
//! feerate to 253 sat/kw, and accept a channel a peer opens at 253 sat/kw.

use lnpd_tests::network::{channels, field, node_id, ok, pay, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;

const FLOOR: u64 = 253;

/// B's channels with A, as B lists them.
fn b_channels_with(b: &NodeProcess, a_id: &str) -> Vec<serde_json::Value> {
    channels(b)
        .into_iter()
        .filter(|c| c["counterparty_node_id"] == a_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_feerate_opens_and_keeps_channels_on_defaults() {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start("floor-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("floor-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");
    let (a_id, b_id) = (node_id(&a), node_id(&b));

    // A channel at A's fallback feerate (no estimate on this chain).
    chain
        .open_channel(&a, &b, 500_000)
        .await
        .expect("first channel");
    let first = &b_channels_with(&b, &a_id)[0];
    assert_eq!(first["feerate_sat_per_kw"], 2500, "{first}");
    assert_eq!(first["is_outbound"], false);

    // A (the funder) now estimates the floor: its next timer tick lowers
    // the channel's feerate to 253 with update_fee. B must take it.
    a.restart_node(&["--fallback-feerate-sat-per-kw", &FLOOR.to_string()])
        .expect("A restarts");
    ok(&a, &["connect", &format!("{b_id}@{}", b.p2p_addr())]);
    let lowered = wait_for(200, || {
        b_channels_with(&b, &a_id)
            .first()
            .is_some_and(|c| c["feerate_sat_per_kw"] == FLOOR && c["is_usable"] == true)
    });
    assert!(
        lowered,
        "B did not accept the lowered feerate: {:?}\n--- A ---\n{}\n--- B ---\n{}",
        b_channels_with(&b, &a_id),
        a.log(),
        b.log()
    );
    let out = pay(&a, &b, 10_000_000, "after update_fee")
        .unwrap_or_else(|e| panic!("{e}\n--- A ---\n{}\n--- B ---\n{}", a.log(), b.log()));
    assert_eq!(field(&out, "status"), "succeeded", "{out}");

    // A new channel proposed at the floor is accepted.
    ok(&a, &["openchannel", &b_id, "400000"]);
    chain
        .mine_until(30, "second channel usable on both sides", || {
            let on_b = b_channels_with(&b, &a_id);
            on_b.len() == 2 && on_b.iter().all(|c| c["is_usable"] == true)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- A ---\n{}\n--- B ---\n{}", a.log(), b.log()));
    let on_b = b_channels_with(&b, &a_id);
    let second = on_b
        .iter()
        .find(|c| c["capacity_sat"] == 400_000)
        .expect("the second channel");
    assert_eq!(second["feerate_sat_per_kw"], FLOOR, "{second}");
    assert!(
        !b.log().contains("feerate much too low"),
        "B refused a feerate: {}",
        b.log()
    );
    assert_eq!(on_b.len(), 2, "no channel was closed: {on_b:?}");
}
