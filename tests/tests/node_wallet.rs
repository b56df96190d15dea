//! The node's watch-only wallet on bcoin regtest: coins mined to its address
//! appear in its balance; a withdrawal is refused by the signer until the
//! operator allow-lists the destination, then signed, broadcast and mined.

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
    let sent = node.cli(&["withdraw", &stranger.to_string(), "100000"]);
    assert!(
        sent.status.success(),
        "{} / {}",
        String::from_utf8_lossy(&sent.stderr),
        node.log()
    );
    let txid = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    assert_eq!(txid.len(), 64);

    let miner = Address::p2wpkh(
        &CompressedPublicKey(PublicKey::from_secret_key(
            &s,
            &SecretKey::from_slice(&[8; 32]).unwrap(),
        )),
        Network::Regtest,
    );
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
}
