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

/// Which fee estimate each LDK target asks for (blocks to confirm).
fn target_blocks(t: ConfirmationTarget) -> u16 {
    match t {
        ConfirmationTarget::MaximumFeeEstimate | ConfirmationTarget::UrgentOnChainSweep => 1,
        ConfirmationTarget::OutputSpendingFee | ConfirmationTarget::NonAnchorChannelFee => 6,
        ConfirmationTarget::AnchorChannelFee | ConfirmationTarget::ChannelCloseMinimum => 144,
        ConfirmationTarget::MinAllowedAnchorChannelRemoteFee
        | ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee => 1008,
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
    fees: RwLock<HashMap<u16, u32>>,
    runtime: tokio::runtime::Handle,
}

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
            fees: RwLock::new(HashMap::new()),
            runtime,
        }))
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

    /// Refreshes the fee estimates LDK reads; targets without an estimate use the fallback.
    pub async fn refresh_fees(&self) {
        let mut fresh = HashMap::new();
        for blocks in [1u16, 6, 144, 1008] {
            match self.estimate_fee(blocks).await {
                Ok(Some(f)) => {
                    fresh.insert(blocks, f);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "fee estimate for {blocks} blocks failed, using the fallback: {e}"
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
        let blocks = target_blocks(target);
        let known = self.fees.read().ok().and_then(|f| f.get(&blocks).copied());
        known.unwrap_or(self.fallback_sat_per_kw)
    }
}

impl BroadcasterInterface for ChainRpc {
    fn broadcast_transactions(&self, txs: &[&Transaction]) {
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
