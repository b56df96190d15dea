//! The node's chain access against a real bcoin regtest node: LDK's block
//! sync runs over it, fees fall back when there is no estimate (the floor
//! for what peers may propose), and bad
//! transactions get a clear error.

use std::sync::Mutex;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, CompressedPublicKey, Network};
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BestBlock, Listen};
use lightning_block_sync::init::synchronize_listeners;
use lightning_block_sync::UnboundedCache;
use lnpd_tests::regtest::Bcoin;

struct Seen(Mutex<Vec<u32>>);

impl Listen for Seen {
    fn filtered_block_connected(
        &self,
        _h: &bitcoin::block::Header,
        _t: &TransactionData,
        height: u32,
    ) {
        self.0.lock().unwrap().push(height);
    }
    fn blocks_disconnected(&self, _fork_point: BestBlock) {}
}

fn address() -> Address {
    let s = Secp256k1::new();
    let pk = PublicKey::from_secret_key(&s, &SecretKey::from_slice(&[0x21; 32]).unwrap());
    Address::p2wpkh(&CompressedPublicKey(pk), Network::Regtest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldk_block_sync_fees_and_broadcast_work_against_bcoin() {
    let bcoin = Bcoin::start().await.expect("bcoin starts");
    let rpc = bcoin.rpc(2500).unwrap();
    let (genesis, height) = rpc.best_block().await.unwrap();
    assert_eq!(height, 0);
    assert_eq!(
        genesis.to_string(),
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    );

    let addr = address();
    bcoin.mine(&rpc, 120, &addr).await.unwrap();
    let (tip, height) = rpc.best_block().await.unwrap();
    assert_eq!(height, 120);
    let header = rpc.header(&tip).await.unwrap();
    assert_eq!((header.height, header.header.block_hash()), (120, tip));
    let block = rpc.block(&tip).await.unwrap();
    assert_eq!(
        block.txdata[0].output[0].script_pubkey,
        addr.script_pubkey(),
        "coinbase pays the mined-to address"
    );

    // LDK's own synchronisation (header chain and PoW checks) over our block source.
    let hash_50 = {
        let v = rpc
            .call("getblockhash", &[serde_json::json!(50)])
            .await
            .unwrap();
        v.as_str().unwrap().parse().unwrap()
    };
    let seen = Seen(Mutex::new(Vec::new()));
    let mut cache = UnboundedCache::new();
    let synced = synchronize_listeners(
        &*rpc,
        Network::Regtest,
        &mut cache,
        vec![(hash_50, &seen as &(dyn Listen + Send + Sync))],
    )
    .await
    .expect("LDK synchronises over the bcoin block source");
    assert_eq!(synced.height, 120);
    assert_eq!(*seen.0.lock().unwrap(), (51..=120).collect::<Vec<_>>());

    // A fresh chain has no fee estimate: the configured fallback is used
    // for our own spends, the network floor for what peers may propose.
    assert_eq!(rpc.estimate_fee(6).await.unwrap(), None);
    rpc.refresh_fees().await;
    assert_eq!(
        rpc.get_est_sat_per_1000_weight(ConfirmationTarget::NonAnchorChannelFee),
        2500
    );
    assert_eq!(
        rpc.get_est_sat_per_1000_weight(ConfirmationTarget::MinAllowedAnchorChannelRemoteFee),
        253
    );
    // bcoin estimates 15 blocks at most (longer targets are refused, not
    // "no estimate"); its mempool minimum is 1 sat/vB.
    assert_eq!(rpc.max_fee_target().await.unwrap(), 15);
    assert!(rpc.estimate_fee(16).await.is_err());
    assert_eq!(rpc.estimate_fee(15).await.unwrap(), None);
    assert_eq!(rpc.mempool_min_feerate().await.unwrap(), 253);

    // A backend error reaches the caller with the backend's reason.
    let err = rpc
        .call("sendrawtransaction", &[serde_json::json!("not hex")])
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty(), "{err}");
}
