//! The chain over bitcoind-style JSON-RPC, working against Bitcoin Core and
//! bcoin alike: LDK's [`BlockSource`] (raw headers and blocks), fee
//! estimation with a configured fallback, and broadcasting.
//!
//! LDK's own `RpcClient` block source expects Core's verbose header format
//! (bcoin gives `bits` as a number and no `nonce`), so headers are read raw
//! (`getblockheader <hash> false`) and only height and chainwork come from
//! the verbose form. Blocks are read raw (`getblock <hash> 0`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bitcoin::block::Header;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::hex::FromHex;
use bitcoin::{Block, BlockHash, Transaction, Txid, Work};
use lightning::chain::chaininterface::{BroadcasterInterface, ConfirmationTarget, FeeEstimator};
use lightning_block_sync::http::{HttpEndpoint, JsonResponse};
use lightning_block_sync::rpc::RpcClient;
use lightning_block_sync::{
    AsyncBlockSourceResult, BlockData, BlockHeaderData, BlockSource, BlockSourceError,
};
use serde_json::{json, Value};

/// LDK's floor: 253 sat per 1000 weight units (1 sat/vB after rounding).
pub const MIN_FEERATE_SAT_PER_KW: u32 = 253;

/// A failed chain call.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The backend could not be reached or answered garbage.
    #[error("chain backend: {0}")]
    Transport(#[from] std::io::Error),
    /// The backend answered with something we cannot use.
    #[error("chain backend gave an unexpected answer to {method}: {detail}")]
    Unexpected {
        /// The RPC method.
        method: String,
        /// What was wrong.
        detail: String,
    },
    /// A bad RPC URL in the configuration.
    #[error("invalid RPC URL {0:?}: expected http://host:port[/path]")]
    Url(String),
}

/// Any JSON answer (lets `RpcClient::call_method` return a raw value).
struct Json(Value);

impl TryFrom<JsonResponse> for Json {
    type Error = std::io::Error;
    fn try_from(r: JsonResponse) -> std::io::Result<Self> {
        Ok(Json(r.0))
    }
}

fn endpoint(host: &str, port: u16, path: &str) -> HttpEndpoint {
    HttpEndpoint::for_host(host.to_string())
        .with_port(port)
        .with_path(path.to_string())
}

/// What an LDK fee target is used for, which decides what stands in for a
/// missing estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetUse {
    /// A feerate we pay: the operator's fallback when there is no estimate.
    OwnSpend,
    /// The lowest feerate we accept from a peer (on its commitments, in a
    /// cooperative close): never above the network's floor when there is no
    /// estimate, or peers proposing the floor could not open channels to us
    /// and lowering a funder's feerate would close them.
    PeerFloor,
}

/// Which fee estimate each LDK target asks for (blocks to confirm, before
/// the backend's cap) and what it is used for.
fn target_blocks(t: ConfirmationTarget) -> (u16, TargetUse) {
    match t {
        ConfirmationTarget::MaximumFeeEstimate | ConfirmationTarget::UrgentOnChainSweep => {
            (1, TargetUse::OwnSpend)
        }
        ConfirmationTarget::OutputSpendingFee | ConfirmationTarget::NonAnchorChannelFee => {
            (6, TargetUse::OwnSpend)
        }
        ConfirmationTarget::AnchorChannelFee => (144, TargetUse::OwnSpend),
        ConfirmationTarget::ChannelCloseMinimum => (144, TargetUse::PeerFloor),
        ConfirmationTarget::MinAllowedAnchorChannelRemoteFee
        | ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee => (1008, TargetUse::PeerFloor),
    }
}

/// The confirmation targets LDK's estimates are read for (before the cap).
const TARGETS: [u16; 4] = [1, 6, 144, 1008];

/// The longest target Bitcoin Core estimates.
pub const CORE_MAX_TARGET: u16 = 1008;
/// The longest target bcoin estimates (its fee estimator tracks 15 blocks
/// and refuses longer targets).
pub const BCOIN_MAX_TARGET: u16 = 15;

/// Fee estimates as last read from the backend.
#[derive(Clone, Debug, Default)]
struct FeeView {
    /// Estimates by (capped) target, sat per 1000 weight units.
    by_target: HashMap<u16, u32>,
    /// The longest target the backend estimates (known after the first refresh).
    max_target: Option<u16>,
    /// The backend's mempool minimum (never below [`MIN_FEERATE_SAT_PER_KW`]).
    floor: u32,
}

impl FeeView {
    fn capped(&self, blocks: u16) -> u16 {
        blocks.min(self.max_target.unwrap_or(CORE_MAX_TARGET))
    }

    /// The feerate for an LDK target: the estimate, else the fallback (own
    /// spends) or the network floor (what we accept from peers).
    fn feerate(&self, t: ConfirmationTarget, fallback: u32) -> u32 {
        let (blocks, use_) = target_blocks(t);
        let floor = self.floor.max(MIN_FEERATE_SAT_PER_KW);
        match (self.by_target.get(&self.capped(blocks)), use_) {
            (Some(&f), _) => f.max(floor),
            (None, TargetUse::OwnSpend) => fallback.max(floor),
            (None, TargetUse::PeerFloor) => floor,
        }
    }
}

/// The chain backend.
pub struct ChainRpc {
    rpc: RpcClient,
    auth: String,
    host: String,
    port: u16,
    path: String,
    fallback_sat_per_kw: u32,
    fees: RwLock<FeeView>,
    runtime: tokio::runtime::Handle,
    /// Told of every transaction LDK broadcasts (the wallet: closes, sweeps
    /// and bumps that pay or spend it show as unconfirmed at once).
    tap: std::sync::OnceLock<BroadcastTap>,
}

/// Something told of each transaction broadcast through LDK's interface.
pub type BroadcastTap = Arc<dyn Fn(&[&Transaction]) + Send + Sync>;

impl ChainRpc {
    /// Connects to `url` (http://host:port[/path]) with RPC credentials.
    /// `fallback_sat_per_kw` is used whenever the backend has no estimate.
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        fallback_sat_per_kw: u32,
    ) -> Result<Arc<Self>, ChainError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ChainError::Url(url.into()))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| ChainError::Url(url.into()))?;
        let port: u16 = port.parse().map_err(|_| ChainError::Url(url.into()))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ChainError::Url("ChainRpc must be created inside the tokio runtime".into())
        })?;
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Arc::new(ChainRpc {
            rpc: RpcClient::new(&auth, endpoint(host, port, path)),
            auth,
            host: host.to_string(),
            port,
            path: path.to_string(),
            fallback_sat_per_kw: fallback_sat_per_kw.max(MIN_FEERATE_SAT_PER_KW),
            fees: RwLock::new(FeeView::default()),
            runtime,
            tap: std::sync::OnceLock::new(),
        }))
    }

    /// Tells `tap` of every transaction broadcast through LDK's interface
    /// from now on (set once).
    pub fn set_broadcast_tap(&self, tap: BroadcastTap) {
        let _ = self.tap.set(tap);
    }

    /// The txids in the backend's mempool.
    pub async fn mempool_txids(&self) -> Result<std::collections::HashSet<Txid>, ChainError> {
        let v = self.call("getrawmempool", &[]).await?;
        let list = v
            .as_array()
            .ok_or_else(|| Self::unexpected("getrawmempool", "not a list"))?;
        Ok(list
            .iter()
            .filter_map(|t| t.as_str().and_then(|t| t.parse().ok()))
            .collect())
    }

    /// Whether the backend's mempool holds `txid` (no answer: not known to).
    pub async fn in_mempool(&self, txid: &Txid) -> bool {
        self.call("getmempoolentry", &[json!(txid.to_string())])
            .await
            .is_ok_and(|v| v.is_object())
    }

    /// Whether `outpoint` is unspent in the backend's view, its mempool
    /// included (false: spent, or never created).
    pub async fn is_unspent(&self, outpoint: &bitcoin::OutPoint) -> Result<bool, ChainError> {
        let v = self
            .call(
                "gettxout",
                &[
                    json!(outpoint.txid.to_string()),
                    json!(outpoint.vout),
                    json!(true),
                ],
            )
            .await?;
        Ok(!v.is_null())
    }

    /// One JSON-RPC call.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, ChainError> {
        Ok(self.rpc.call_method::<Json>(method, params).await?.0)
    }

    fn unexpected(method: &str, detail: impl ToString) -> ChainError {
        ChainError::Unexpected {
            method: method.into(),
            detail: detail.to_string(),
        }
    }

    /// The best block's hash and height.
    pub async fn best_block(&self) -> Result<(BlockHash, u32), ChainError> {
        let v = self.call("getblockchaininfo", &[]).await?;
        let hash = v["bestblockhash"].as_str().and_then(|h| h.parse().ok());
        let height = v["blocks"].as_u64().and_then(|h| u32::try_from(h).ok());
        match (hash, height) {
            (Some(h), Some(n)) => Ok((h, n)),
            _ => Err(Self::unexpected(
                "getblockchaininfo",
                "no bestblockhash/blocks",
            )),
        }
    }

    /// The hash of the best chain's block at `height`.
    pub async fn block_hash_at(&self, height: u32) -> Result<BlockHash, ChainError> {
        let v = self.call("getblockhash", &[json!(height)]).await?;
        v.as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| Self::unexpected("getblockhash", "not a block hash"))
    }

    /// A block header alone (checked to hash to `hash`).
    pub async fn raw_header(&self, hash: &BlockHash) -> Result<Header, ChainError> {
        let raw = self
            .call("getblockheader", &[json!(hash.to_string()), json!(false)])
            .await?;
        let bytes = raw
            .as_str()
            .and_then(|h| Vec::<u8>::from_hex(h).ok())
            .ok_or_else(|| Self::unexpected("getblockheader", "not hex"))?;
        let header: Header =
            deserialize(&bytes).map_err(|e| Self::unexpected("getblockheader", e))?;
        if header.block_hash() != *hash {
            return Err(Self::unexpected(
                "getblockheader",
                "header of another block",
            ));
        }
        Ok(header)
    }

    /// A header with its height and chainwork.
    pub async fn header(&self, hash: &BlockHash) -> Result<BlockHeaderData, ChainError> {
        let header = self.raw_header(hash).await?;
        let verbose = self
            .call("getblockheader", &[json!(hash.to_string()), json!(true)])
            .await?;
        let height = verbose["height"]
            .as_u64()
            .and_then(|h| u32::try_from(h).ok());
        let work = verbose["chainwork"]
            .as_str()
            .and_then(|h| <[u8; 32]>::from_hex(h).ok());
        match (height, work) {
            (Some(height), Some(work)) => Ok(BlockHeaderData {
                header,
                height,
                chainwork: Work::from_be_bytes(work),
            }),
            _ => Err(Self::unexpected("getblockheader", "no height/chainwork")),
        }
    }

    /// A full block.
    pub async fn block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        let raw = self
            .call("getblock", &[json!(hash.to_string()), json!(0)])
            .await?;
        let bytes = raw
            .as_str()
            .and_then(|h| Vec::<u8>::from_hex(h).ok())
            .ok_or_else(|| Self::unexpected("getblock", "not hex"))?;
        let block: Block = deserialize(&bytes).map_err(|e| Self::unexpected("getblock", e))?;
        if block.block_hash() != *hash {
            return Err(Self::unexpected("getblock", "block of another hash"));
        }
        Ok(block)
    }

    /// Broadcasts a transaction.
    pub async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        send_raw(&self.rpc, tx).await
    }

    /// The backend's estimate for confirmation within `blocks`, in sat per
    /// 1000 weight units; `None` when it has none (a fresh regtest chain).
    pub async fn estimate_fee(&self, blocks: u16) -> Result<Option<u32>, ChainError> {
        // One argument only: bcoin refuses Core's optional mode string.
        let v = self.call("estimatesmartfee", &[json!(blocks)]).await?;
        // Core answers {"feerate": BTC/kvB}, bcoin {"fee": BTC/kvB}; -1 or absent means none.
        let btc_per_kvb = v["feerate"].as_f64().or_else(|| v["fee"].as_f64());
        Ok(btc_per_kvb
            .filter(|f| *f > 0.0)
            .map(|f| ((f * 1e8 / 4.0) as u32).max(MIN_FEERATE_SAT_PER_KW)))
    }

    /// The longest confirmation target the backend estimates: bcoin's
    /// estimator stops at 15 blocks, Bitcoin Core's at 1 008.
    pub async fn max_fee_target(&self) -> Result<u16, ChainError> {
        let v = self.call("getnetworkinfo", &[]).await?;
        let agent = v["subversion"].as_str().unwrap_or_default();
        Ok(if agent.to_ascii_lowercase().contains("bcoin") {
            BCOIN_MAX_TARGET
        } else {
            CORE_MAX_TARGET
        })
    }

    /// The backend's mempool minimum feerate in sat per 1000 weight units
    /// (never below [`MIN_FEERATE_SAT_PER_KW`]).
    pub async fn mempool_min_feerate(&self) -> Result<u32, ChainError> {
        let v = self.call("getmempoolinfo", &[]).await?;
        let btc_per_kvb = v["mempoolminfee"]
            .as_f64()
            .ok_or_else(|| Self::unexpected("getmempoolinfo", "no mempoolminfee"))?;
        Ok(((btc_per_kvb * 1e8 / 4.0).ceil() as u32).max(MIN_FEERATE_SAT_PER_KW))
    }

    /// Refreshes the fee estimates LDK reads. Targets are capped to what the
    /// backend estimates; a target without an estimate reads the fallback
    /// for our own spends and the network floor for what peers may propose.
    pub async fn refresh_fees(&self) {
        let known = self.fees.read().map(|f| f.clone()).unwrap_or_default();
        let max_target = match known.max_target {
            Some(m) => Some(m),
            None => match self.max_fee_target().await {
                Ok(m) => {
                    tracing::info!("the chain backend estimates fees up to {m} blocks");
                    Some(m)
                }
                Err(e) => {
                    tracing::warn!("cannot tell the backend's longest fee target: {e}");
                    None
                }
            },
        };
        let floor = match self.mempool_min_feerate().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "mempool minimum feerate unknown, using {MIN_FEERATE_SAT_PER_KW} sat/kw: {e}"
                );
                MIN_FEERATE_SAT_PER_KW
            }
        };
        let mut fresh = FeeView {
            by_target: HashMap::new(),
            max_target,
            floor,
        };
        let mut asked = Vec::new();
        for blocks in TARGETS.map(|b| fresh.capped(b)) {
            if asked.contains(&blocks) {
                continue;
            }
            asked.push(blocks);
            match self.estimate_fee(blocks).await {
                Ok(Some(f)) => {
                    fresh.by_target.insert(blocks, f);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "fee estimate for {blocks} blocks failed (own spends use the fallback, \
                     peers the floor): {e}"
                ),
            }
        }
        if let Ok(mut fees) = self.fees.write() {
            *fees = fresh;
        }
    }

    /// Mines `n` blocks to `address` (regtest backends).
    pub async fn generate_to_address(
        &self,
        n: u32,
        address: &str,
    ) -> Result<Vec<BlockHash>, ChainError> {
        let v = self
            .call("generatetoaddress", &[json!(n), json!(address)])
            .await?;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().and_then(|h| h.parse().ok()))
                    .collect()
            })
            .ok_or_else(|| Self::unexpected("generatetoaddress", "no block hashes"))
    }
}

fn transient(e: ChainError) -> BlockSourceError {
    BlockSourceError::transient(e)
}

impl BlockSource for ChainRpc {
    fn get_header<'a>(
        &'a self,
        header_hash: &'a BlockHash,
        _height_hint: Option<u32>,
    ) -> AsyncBlockSourceResult<'a, BlockHeaderData> {
        Box::pin(async move { self.header(header_hash).await.map_err(transient) })
    }

    fn get_block<'a>(
        &'a self,
        header_hash: &'a BlockHash,
    ) -> AsyncBlockSourceResult<'a, BlockData> {
        Box::pin(async move {
            self.block(header_hash)
                .await
                .map(BlockData::FullBlock)
                .map_err(transient)
        })
    }

    fn get_best_block(&self) -> AsyncBlockSourceResult<'_, (BlockHash, Option<u32>)> {
        Box::pin(async move {
            self.best_block()
                .await
                .map(|(h, n)| (h, Some(n)))
                .map_err(transient)
        })
    }
}

impl FeeEstimator for ChainRpc {
    fn get_est_sat_per_1000_weight(&self, target: ConfirmationTarget) -> u32 {
        match self.fees.read() {
            Ok(f) => f.feerate(target, self.fallback_sat_per_kw),
            Err(_) => self.fallback_sat_per_kw,
        }
    }
}

impl BroadcasterInterface for ChainRpc {
    fn broadcast_transactions(&self, txs: &[&Transaction]) {
        if let Some(tap) = self.tap.get() {
            tap(txs);
        }
        for tx in txs {
            let tx = (*tx).clone();
            // Detached: its own connection, so a slow backend never blocks LDK.
            let rpc = RpcClient::new(&self.auth, endpoint(&self.host, self.port, &self.path));
            self.runtime.spawn(async move {
                match send_raw(&rpc, &tx).await {
                    Ok(txid) => tracing::info!(%txid, "broadcast transaction"),
                    Err(e) => tracing::warn!(txid = %tx.compute_txid(), "broadcast failed: {e}"),
                }
            });
        }
    }
}

impl crate::wallet::ChainBlocks for ChainRpc {
    async fn tip(&self) -> Result<(BlockHash, u32), String> {
        self.best_block().await.map_err(|e| e.to_string())
    }

    async fn hash_at(&self, height: u32) -> Result<BlockHash, String> {
        self.block_hash_at(height).await.map_err(|e| e.to_string())
    }

    async fn block(&self, hash: &BlockHash) -> Result<Block, String> {
        ChainRpc::block(self, hash).await.map_err(|e| e.to_string())
    }
}

async fn send_raw(rpc: &RpcClient, tx: &Transaction) -> Result<Txid, ChainError> {
    let hex: String = serialize(tx).iter().map(|b| format!("{b:02x}")).collect();
    let v = rpc
        .call_method::<Json>("sendrawtransaction", &[json!(hex)])
        .await?
        .0;
    v.as_str()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ChainRpc::unexpected("sendrawtransaction", "no txid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(by_target: &[(u16, u32)], max_target: u16, floor: u32) -> FeeView {
        FeeView {
            by_target: by_target.iter().copied().collect(),
            max_target: Some(max_target),
            floor,
        }
    }

    #[test]
    fn without_estimates_peers_get_the_floor_and_our_spends_the_fallback() {
        let v = view(&[], BCOIN_MAX_TARGET, 0);
        for t in [
            ConfirmationTarget::MinAllowedAnchorChannelRemoteFee,
            ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee,
            ConfirmationTarget::ChannelCloseMinimum,
        ] {
            assert_eq!(v.feerate(t, 2500), MIN_FEERATE_SAT_PER_KW, "{t:?}");
        }
        for t in [
            ConfirmationTarget::UrgentOnChainSweep,
            ConfirmationTarget::AnchorChannelFee,
            ConfirmationTarget::NonAnchorChannelFee,
            ConfirmationTarget::OutputSpendingFee,
        ] {
            assert_eq!(v.feerate(t, 2500), 2500, "{t:?}");
        }
        // The backend's mempool minimum raises the floor (and the fallback).
        let v = view(&[], BCOIN_MAX_TARGET, 3000);
        assert_eq!(
            v.feerate(ConfirmationTarget::MinAllowedAnchorChannelRemoteFee, 2500),
            3000
        );
        assert_eq!(v.feerate(ConfirmationTarget::AnchorChannelFee, 2500), 3000);
    }

    #[test]
    fn long_targets_read_the_backends_longest_estimate() {
        // bcoin: 144 and 1 008 blocks read the 15-block estimate.
        let v = view(&[(1, 5000), (6, 2000), (15, 400)], BCOIN_MAX_TARGET, 253);
        assert_eq!(v.feerate(ConfirmationTarget::AnchorChannelFee, 2500), 400);
        assert_eq!(
            v.feerate(ConfirmationTarget::MinAllowedAnchorChannelRemoteFee, 2500),
            400
        );
        assert_eq!(
            v.feerate(ConfirmationTarget::UrgentOnChainSweep, 2500),
            5000
        );
        // Core: its own 1 008-block estimate.
        let v = view(&[(144, 900), (1008, 300)], CORE_MAX_TARGET, 253);
        assert_eq!(v.feerate(ConfirmationTarget::AnchorChannelFee, 2500), 900);
        assert_eq!(
            v.feerate(
                ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee,
                2500
            ),
            300
        );
    }
}
