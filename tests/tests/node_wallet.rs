//! The node's watch-only wallet on bcoin regtest: coins mined to its address
//! appear in its balance; a withdrawal is refused by the signer until the
//! operator allow-lists the destination, then signed and broadcast; its
//! change shows as unconfirmed and in the history, `bumpfee` replaces it in
//! the mempool (the replacement is mined, not the original), and
//! `withdraw --all` empties the spendable balance in one change-less
//! transaction.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, CompressedPublicKey, Network};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::regtest::{Bcoin, SEGWIT_ACTIVATION_HEIGHT};

fn field(out: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    out[out.find(&key).unwrap() + key.len()..]
        .split([',', '}'])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_receives_and_withdraws_only_to_allowed_addresses() {
    let bcoin = Bcoin::start().await.expect("bcoin");
    let rpc = bcoin.rpc(2500).unwrap();
    let node = NodeProcess::start("wallet", &bcoin).expect("node");

    let out = node.cli(&["newaddress"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = Address::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap()
        .require_network(Network::Regtest)
        .unwrap();
    // Past segwit activation, so the wallet's P2WPKH coins can be spent.
    bcoin
        .mine(&rpc, SEGWIT_ACTIVATION_HEIGHT + 10, &addr)
        .await
        .unwrap();

    let mut balance = String::new();
    for _ in 0..200 {
        balance = String::from_utf8_lossy(&node.cli(&["--json", "balance"]).stdout).to_string();
        if balance.contains("onchain_spendable_sat") && field(&balance, "onchain_spendable_sat") > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        field(&balance, "onchain_spendable_sat") > 0,
        "mature coinbase is spendable: {balance}\n{}",
        node.log()
    );
    assert!(
        field(&balance, "onchain_immature_sat") > 0,
        "recent coinbase is immature: {balance}"
    );

    let s = Secp256k1::new();
    let stranger = Address::p2wpkh(
        &CompressedPublicKey(PublicKey::from_secret_key(
            &s,
            &SecretKey::from_slice(&[7; 32]).unwrap(),
        )),
        Network::Regtest,
    );
    let refused = node.cli(&["withdraw", &stranger.to_string(), "100000"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("onchain-outputs-known"),
        "the signer names the rule: {why}"
    );

    let allow = std::process::Command::new(lnpd_tests::signer_bin())
        .args(["allowlist", "add", &stranger.to_string(), "--data-dir"])
        .arg(node.signer.data_dir())
        .output()
        .unwrap();
    assert!(
        allow.status.success(),
        "{}",
        String::from_utf8_lossy(&allow.stderr)
    );
    let sent = node.cli(&[
        "withdraw",
        &stranger.to_string(),
        "100000",
        "--fee-rate",
        "2",
    ]);
    assert!(
        sent.status.success(),
        "{} / {}",
        String::from_utf8_lossy(&sent.stderr),
        node.log()
    );
    let txid = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    assert_eq!(txid.len(), 64);

    // Unconfirmed: in the history with no confirmation, its change pending.
    let history = cli_ok(&node, &["--json", "transactions"]);
    let entry = tx_entry(&history, &txid).expect("the withdrawal is in the history");
    assert_eq!(entry["confirmations"], 0, "{history}");
    assert!(entry["sent_sat"].as_u64().unwrap() > 100_000);
    let old_fee = entry["fee_sat"]
        .as_u64()
        .expect("a wallet spend's fee is known");
    let balance = cli_ok(&node, &["--json", "balance"]);
    assert!(field(&balance, "onchain_unconfirmed_sat") > 0, "{balance}");
    assert_eq!(field(&balance, "onchain_reserved_sat"), 0, "{balance}");
    assert!(mempool(&rpc).await.contains(&txid));

    // A replacement at a higher rate: signed by the signer, in the mempool
    // instead of the original, the only one in the history.
    let refused = node.cli(&["bumpfee", &txid, "--fee-rate", "1"]);
    assert!(!refused.status.success(), "a lower rate is refused");
    let bumped = cli_ok(&node, &["bumpfee", &txid, "--fee-rate", "25"]);
    assert_eq!(bumped.len(), 64);
    assert_ne!(bumped, txid);
    let history = cli_ok(&node, &["--json", "transactions"]);
    assert!(tx_entry(&history, &txid).is_none(), "{history}");
    let entry = tx_entry(&history, &bumped).expect("the replacement is in the history");
    assert!(
        entry["fee_sat"].as_u64().unwrap() > old_fee * 5,
        "{history}"
    );
    // bcoin 1.0.2 has no BIP 125 and keeps the original; its
    // invalidateblock empties the mempool, and on the longer branch the
    // node sends its wallet's view again: the replacement, which is mined.
    assert!(mempool(&rpc).await.contains(&txid));
    let (tip, _) = rpc.best_block().await.unwrap();
    rpc.call("invalidateblock", &[serde_json::json!(tip.to_string())])
        .await
        .unwrap();
    assert!(mempool(&rpc).await.is_empty());
    let s = Secp256k1::new();
    let miner = Address::p2wpkh(
        &CompressedPublicKey(PublicKey::from_secret_key(
            &s,
            &SecretKey::from_slice(&[8; 32]).unwrap(),
        )),
        Network::Regtest,
    );
    bcoin.mine(&rpc, 2, &miner).await.unwrap();
    let mut waited = 0;
    while !mempool(&rpc).await.contains(&bumped) {
        waited += 1;
        assert!(
            waited < 150,
            "the replacement is sent again\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!mempool(&rpc).await.contains(&txid));
    let txid = bumped;

    bcoin.mine(&rpc, 1, &miner).await.unwrap();
    let (tip, _) = rpc.best_block().await.unwrap();
    let block = rpc.block(&tip).await.unwrap();
    let tx = block
        .txdata
        .iter()
        .find(|t| t.compute_txid().to_string() == txid)
        .expect("the withdrawal is mined");
    assert!(tx
        .output
        .iter()
        .any(|o| o.script_pubkey == stranger.script_pubkey() && o.value.to_sat() == 100_000));
    let confirmed = || {
        tx_entry(&cli_ok(&node, &["--json", "transactions"]), &txid)
            .is_some_and(|e| e["confirmations"] == 1)
    };
    assert!(
        lnpd_tests::network::wait_for(30, confirmed),
        "{}",
        node.log()
    );

    // Everything spendable, in one transaction with no change.
    let before = cli_ok(&node, &["--json", "balance"]);
    let spendable = field(&before, "onchain_spendable_sat");
    let all = cli_ok(
        &node,
        &[
            "withdraw",
            &stranger.to_string(),
            "--all",
            "--fee-rate",
            "2",
        ],
    );
    let (tip_before, _) = rpc.best_block().await.unwrap();
    bcoin.mine(&rpc, 1, &miner).await.unwrap();
    let (tip, _) = rpc.best_block().await.unwrap();
    assert_ne!(tip, tip_before);
    let block = rpc.block(&tip).await.unwrap();
    let tx = block
        .txdata
        .iter()
        .find(|t| t.compute_txid().to_string() == all)
        .expect("the --all withdrawal is mined");
    assert_eq!(tx.output.len(), 1);
    assert_eq!(tx.output[0].script_pubkey, stranger.script_pubkey());
    assert!(tx.output[0].value.to_sat() + 100_000 > spendable);
    let emptied = || {
        let b = cli_ok(&node, &["--json", "balance"]);
        field(&b, "onchain_spendable_sat") == 0 && field(&b, "onchain_unconfirmed_sat") == 0
    };
    assert!(
        lnpd_tests::network::wait_for(30, emptied),
        "{}",
        cli_ok(&node, &["--json", "balance"])
    );
    let after = cli_ok(&node, &["--json", "balance"]);
    assert!(
        field(&after, "onchain_immature_sat") > 0,
        "coinbase not yet mature stays: {after}"
    );
}

fn cli_ok(node: &NodeProcess, args: &[&str]) -> String {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "lnpd-cli {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The line of `transactions --json` for `txid`.
fn tx_entry(history: &str, txid: &str) -> Option<serde_json::Value> {
    history
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["txid"] == txid)
}

/// The txids in bcoin's mempool.
async fn mempool(rpc: &lnpd_node::chain::ChainRpc) -> Vec<String> {
    rpc.mempool_txids()
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect()
}
