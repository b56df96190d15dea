//! Force close on bcoin regtest: A broadcasts its latest commitment; B's
//! output is swept into B's wallet after one block, A's to_local only after
//! the negotiated CSV delay, into A's wallet. Every sweep is signed by the
//! sweeping node's signer.

use bitcoin::OutPoint;
use lnpd_tests::network::{channel_with, node_id, ok, onchain_sat, pay, spender, Chain};
use lnpd_tests::node_process::NodeProcess;

/// The delay LDK asks the peer to wait (BOLT 2's `to_self_delay`), its default.
const TO_SELF_DELAY: u32 = 144;
const PAID_SAT: u64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_close_sweeps_each_side_into_its_wallet() {
    let chain = Chain::start().await.expect("bcoin");
    let a = NodeProcess::start("force-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("force-b", &chain.bcoin).expect("node b");
    let (_, start_height) = chain.rpc.best_block().await.unwrap();
    chain.fund(&[&a]).await.expect("funding A");
    let chan_id = chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    for i in 0..3 {
        pay(&a, &b, PAID_SAT * 1000 / 3, &format!("before close {i}"))
            .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    }
    let funding: OutPoint = channel_with(&a, &node_id(&b)).expect("channel")["funding_txo"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    let a_before = onchain_sat(&a);

    ok(&a, &["closechannel", &chan_id, "--force"]);
    chain
        .mine_until(60, "B's output swept into B's wallet", || {
            onchain_sat(&b) > 0
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- A ---\n{}\n--- B ---\n{}", a.log(), b.log()));
    let b_final = onchain_sat(&b);
    assert!(
        b_final < PAID_SAT && b_final > PAID_SAT - 5_000,
        "B has {b_final} sat of {PAID_SAT} (less its sweep fee)"
    );
    assert_eq!(onchain_sat(&a), a_before, "A's output is still locked");

    let txs = chain.transactions(start_height + 1).await.unwrap();
    let commitment = spender(&txs, &funding)
        .expect("commitment on chain")
        .clone();
    let commitment_txid = commitment.compute_txid();
    let to_local = commitment
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| o.value.to_sat() > PAID_SAT)
        .map(|(i, o)| (i as u32, o.value.to_sat()))
        .next()
        .expect("A's to_local output");

    chain
        .mine_until(
            TO_SELF_DELAY + 40,
            "A's to_local swept into A's wallet",
            || onchain_sat(&a) > a_before,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- A ---\n{}", a.log()));
    let txs = chain.transactions(start_height + 1).await.unwrap();
    let sweep = spender(
        &txs,
        &OutPoint {
            txid: commitment_txid,
            vout: to_local.0,
        },
    )
    .expect("A's sweep on chain");
    let input = sweep
        .input
        .iter()
        .find(|i| i.previous_output.txid == commitment_txid)
        .unwrap();
    assert_eq!(
        input.sequence.to_relative_lock_time(),
        bitcoin::relative::LockTime::from_height(TO_SELF_DELAY as u16).into(),
        "the sweep waits out the CSV delay"
    );
    let swept: u64 = sweep.output.iter().map(|o| o.value.to_sat()).sum();
    assert!(swept < to_local.1 && swept > to_local.1 - 5_000);
    assert_eq!(
        onchain_sat(&a),
        a_before + swept,
        "A's wallet got the sweep\n--- A ---\n{}",
        a.log()
    );
}
