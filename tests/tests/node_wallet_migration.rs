//! A node whose store holds the previous, hand-written wallet's record (one
//! JSON value of coins and address indexes) starts on the BDK wallet with
//! the same coins, balance and address indexes, and the old record is gone.
//! The record is written as the previous wallet wrote it, from the chain's
//! own blocks, into the node's store with the BDK tables removed.

use std::str::FromStr;

use bitcoin::{Address, Network};
use lightning::util::persist::KVStoreSync;
use lnpd_node::store::SqliteStore;
use lnpd_tests::network::{field, ok, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::regtest::SEGWIT_ACTIVATION_HEIGHT;

fn balance(n: &NodeProcess) -> (u64, u64) {
    let b = ok(n, &["--json", "balance"]);
    (
        field(&b, "onchain_spendable_sat").parse().unwrap(),
        field(&b, "onchain_immature_sat").parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_wallet_record_is_migrated() {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start("migrate", &chain.bcoin).expect("node");
    let first = ok(&a, &["newaddress"]);
    let addr = Address::from_str(&first)
        .unwrap()
        .require_network(Network::Regtest)
        .unwrap();
    chain.bcoin.mine(&chain.rpc, 10, &addr).await.unwrap();
    chain.mine(SEGWIT_ACTIVATION_HEIGHT).await.unwrap();
    chain
        .mine_until(5, "coins seen", || balance(&a).0 > 0)
        .await
        .unwrap();
    chain.sync(&[&a]).await.unwrap();
    let before = balance(&a);
    assert!(before.0 > 0);

    // The store as the previous wallet left it.
    a.stop_node();
    let (tip_hash, tip) = chain.rpc.best_block().await.unwrap();
    let mut coins = Vec::new();
    for h in 1..=10u32 {
        let hash = chain.rpc.block_hash_at(h).await.unwrap();
        let block = chain.rpc.block(&hash).await.unwrap();
        let cb = &block.txdata[0];
        assert_eq!(cb.output[0].script_pubkey, addr.script_pubkey());
        coins.push(serde_json::json!({
            "outpoint": format!("{}:0", cb.compute_txid()),
            "value_sat": cb.output[0].value.to_sat(),
            "chain": 0, "index": 0, "height": h, "coinbase": true,
            "prev_tx": bitcoin::consensus::encode::serialize_hex(cb),
            "spent_at": null,
        }));
    }
    let record = serde_json::json!({
        "next_external": 1,
        "next_internal": 0,
        "coins": coins,
        "best_height": tip,
        "best_hash": tip_hash.to_string(),
    });
    {
        let store = SqliteStore::open(&a.data_dir().join("node.sqlite")).unwrap();
        let dropped = store
            .in_transaction(|tx| {
                let names: Vec<String> = {
                    let mut st = tx.prepare(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'bdk_%'",
                    )?;
                    let rows = st.query_map([], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                };
                // Children before parents (foreign keys): retry what failed.
                let mut left = names.clone();
                for _ in 0..names.len() {
                    left.retain(|n| tx.execute_batch(&format!("DROP TABLE {n}")).is_err());
                }
                assert!(left.is_empty(), "not dropped: {left:?}");
                Ok(names.len())
            })
            .unwrap();
        assert!(dropped >= 5, "the BDK tables were there: {dropped}");
        store
            .write("wallet", "", "state", serde_json::to_vec(&record).unwrap())
            .unwrap();
    }

    a.restart_node(&[]).unwrap();
    chain.sync(&[&a]).await.unwrap();
    assert!(
        wait_for(30, || balance(&a) == before),
        "{:?} vs {before:?}\n{}",
        balance(&a),
        a.log()
    );
    assert!(a.log().contains("moving the previous wallet's record"));
    // The address handed out before is not handed out again.
    let next = ok(&a, &["newaddress"]);
    assert_ne!(next, first);
    // The old record went with the migration's write.
    let store = SqliteStore::open(&a.data_dir().join("node.sqlite")).unwrap();
    assert!(store.read("wallet", "", "state").is_err());
    drop(store);
    // The migrated coins are spendable (to the wallet itself).
    let txid = ok(&a, &["withdraw", &next, "100000"]);
    chain.mine(1).await.unwrap();
    let mined = || {
        ok(&a, &["--json", "transactions"])
            .lines()
            .any(|l| l.contains(&txid) && l.contains("\"confirmations\":1"))
    };
    assert!(wait_for(30, mined), "{}", a.log());
}
