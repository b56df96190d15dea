//! A reorganisation on bcoin regtest, seen by the node's wallet: a block
//! holding a wallet spend (a withdrawal), a channel's funding transaction
//! and a wallet receive (its coinbase) is invalidated and a longer branch
//! without them is mined. The wallet follows the new chain: the spend and
//! the funding are unconfirmed again and, since bcoin's `invalidateblock`
//! empties its mempool, sent again by the node; the stale coinbase leaves
//! the balance; history and balance match the new chain; once mined
//! again, both are confirmed on the new branch.

use std::str::FromStr;

use bitcoin::{Address, BlockHash, Network};
use lnpd_tests::network::{channel_with, field, node_id, ok, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;

/// The line of `transactions --json` for `txid`.
fn tx_entry(n: &NodeProcess, txid: &str) -> Option<serde_json::Value> {
    ok(n, &["--json", "transactions"])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["txid"] == txid)
}

fn confirmations(n: &NodeProcess, txid: &str) -> Option<u64> {
    tx_entry(n, txid).and_then(|e| e["confirmations"].as_u64())
}

fn balance(n: &NodeProcess, name: &str) -> u64 {
    field(&ok(n, &["--json", "balance"]), name).parse().unwrap()
}

async fn mempool(chain: &Chain) -> Vec<String> {
    chain
        .rpc
        .mempool_txids()
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_and_funding_follow_a_reorganisation() {
    let chain = Chain::start().await.expect("bcoin");
    let a = NodeProcess::start("reorg-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("reorg-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funded");
    assert_eq!(balance(&a, "onchain_immature_sat"), 0);

    // A withdrawal to the wallet itself (the signer knows its own
    // addresses), and a channel whose funding is broadcast.
    let own = ok(&a, &["newaddress"]);
    let spend = ok(&a, &["withdraw", &own, "100000", "--conf-target", "6"]);
    let b_id = node_id(&b);
    ok(&a, &["connect", &format!("{b_id}@{}", b.p2p_addr())]);
    ok(&a, &["openchannel", &b_id, "200000", "--fee-rate", "7"]);
    let funding = || {
        channel_with(&a, &b_id)
            .and_then(|c| c["funding_txo"].as_str().map(str::to_string))
            .filter(|t| !t.is_empty())
            .map(|t| t.split(':').next().unwrap_or_default().to_string())
    };
    assert!(wait_for(60, || funding().is_some()), "{}", a.log());
    let funding = funding().unwrap();
    let both_in_pool = || async {
        let pool = mempool(&chain).await;
        pool.contains(&spend) && pool.contains(&funding)
    };
    let mut waited = 0;
    while !both_in_pool().await {
        waited += 1;
        assert!(waited < 100, "not broadcast\n{}", a.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Block X holds both, and pays its coinbase to the wallet.
    let (fork, fork_height) = chain.rpc.best_block().await.unwrap();
    let coinbase_to = Address::from_str(&ok(&a, &["newaddress"]))
        .unwrap()
        .require_network(Network::Regtest)
        .unwrap();
    chain.bcoin.mine(&chain.rpc, 1, &coinbase_to).await.unwrap();
    let (x, _) = chain.rpc.best_block().await.unwrap();
    let block = chain.rpc.block(&x).await.unwrap();
    let in_x: Vec<String> = block
        .txdata
        .iter()
        .map(|t| t.compute_txid().to_string())
        .collect();
    assert!(in_x.contains(&spend) && in_x.contains(&funding));
    chain.sync(&[&a]).await.unwrap();
    assert!(wait_for(30, || confirmations(&a, &spend) == Some(1)));
    assert_eq!(confirmations(&a, &funding), Some(1));
    // The funding paid the rate asked at openchannel.
    let funding_tx = block
        .txdata
        .iter()
        .find(|t| t.compute_txid().to_string() == funding)
        .unwrap();
    let fee = tx_entry(&a, &funding).unwrap()["fee_sat"].as_u64().unwrap();
    let rate = fee as f64 * 4.0 / funding_tx.weight().to_wu() as f64;
    assert!(
        (6.95..7.5).contains(&rate),
        "funding fee rate {rate} sat/vB"
    );
    let coinbase = block.txdata[0].output[0].value.to_sat();
    assert_eq!(balance(&a, "onchain_immature_sat"), coinbase);
    let unconfirmed_before = balance(&a, "onchain_unconfirmed_sat");
    assert_eq!(unconfirmed_before, 0);

    // X is invalidated (bcoin also empties its mempool) and two blocks
    // of another branch are mined on the fork point.
    chain
        .rpc
        .call("invalidateblock", &[serde_json::json!(x.to_string())])
        .await
        .unwrap();
    assert_eq!(chain.rpc.best_block().await.unwrap(), (fork, fork_height));
    assert!(
        mempool(&chain).await.is_empty(),
        "bcoin empties its mempool"
    );
    chain.mine(2).await.unwrap();
    let (tip, tip_height) = chain.rpc.best_block().await.unwrap();
    assert_eq!(tip_height, fork_height + 2);
    let on_tip = || {
        field(&ok(&a, &["--json", "getinfo"]), "block_hash")
            .parse::<BlockHash>()
            .is_ok_and(|h| h == tip)
    };
    assert!(wait_for(60, on_tip), "{}", a.log());

    // The new chain's view: both unconfirmed, the stale coinbase gone, the
    // spend's outputs pending (not spendable), the history without X.
    assert!(
        wait_for(10, || confirmations(&a, &spend) == Some(0)),
        "{}",
        ok(&a, &["--json", "transactions"])
    );
    assert_eq!(confirmations(&a, &funding), Some(0));
    assert_eq!(balance(&a, "onchain_immature_sat"), 0);
    assert!(balance(&a, "onchain_unconfirmed_sat") >= 100_000);
    let stale_height = format!("\"height\":{}", fork_height + 1);
    let history = ok(&a, &["--json", "transactions"]);
    assert!(
        history.lines().all(|l| !l.contains(&stale_height)),
        "nothing of the wallet's is in the new branch's block: {history}"
    );
    // Sent again by the node, into bcoin's emptied mempool.
    let mut waited = 0;
    while !both_in_pool().await {
        waited += 1;
        assert!(waited < 150, "not sent again\n{}", a.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(a.log().contains("sent again"));

    // Mined on the new branch: confirmed again, and the channel opens.
    chain.mine(1).await.unwrap();
    assert!(wait_for(30, || confirmations(&a, &spend) == Some(1)));
    assert_eq!(confirmations(&a, &funding), Some(1));
    assert_eq!(balance(&a, "onchain_unconfirmed_sat"), 0);
    let a_id = node_id(&a);
    chain
        .mine_until(20, "channel usable", || {
            lnpd_tests::network::usable_with(&a, &b_id)
                && lnpd_tests::network::usable_with(&b, &a_id)
        })
        .await
        .unwrap();
}
