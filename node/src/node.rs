//! The running node: what it holds, what it was started with, and what
//! the admin API asks of it directly. Start-up (`startup`), background
//! tasks (`tasks`) and event handling (`events`) are `impl Node` blocks of
//! their own modules; the LDK types are in `ldk_types`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use bitcoin::Network;
use lightning::sign::{NodeSigner, Recipient};
use lightning::util::persist::KVStoreSync;
use lightning::util::ser::Writeable;
use lightning_background_processor::BackgroundProcessor;

use crate::chain::ChainRpc;
use crate::chain_watch::ChainWatch;
use crate::fee_bump::FeeBumpWallet;
use crate::ldk_types::{
    Bumper, ChainMonitor, ChannelManager, GossipSync, Graph, PeerManager, Scorer, Sweeper,
};
use crate::logger::TracingLogger;
use crate::signer_client::{RemoteKeysManager, SignerConnection, SignerTls};
use crate::store::SqliteStore;
use crate::wallet::Wallet;

/// Key of the channel manager in the store (LDK's background processor
/// writes it under this name).
pub(crate) const MANAGER_KEY: &str = "manager";

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Something in the set-up failed; the message says what.
    #[error("{0}")]
    Startup(String),
}

pub(crate) fn fail(what: &str) -> impl FnOnce(String) -> NodeError + '_ {
    move |e| NodeError::Startup(format!("{what}: {e}"))
}

/// How the node and its signer find each other.
#[derive(Clone, Debug)]
pub enum SignerEndpoint {
    /// The node dials the signer at host:port (several, comma-separated:
    /// replicas).
    Dial(String),
    /// The node listens here and the signer dials it (`lnpd-signer run
    /// --connect`): the signer's machine opens no port. With addresses in
    /// the list, only from those.
    Accept(SocketAddr, Vec<std::net::IpAddr>),
}

impl std::fmt::Display for SignerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignerEndpoint::Dial(a) => f.write_str(a),
            SignerEndpoint::Accept(a, _) => write!(f, "accepting the signer on {a}"),
        }
    }
}

/// What the node needs to start.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Data directory (store, admin token).
    pub data_dir: PathBuf,
    /// Bitcoin network.
    pub network: Network,
    /// JSON-RPC URL of the chain backend.
    pub rpc_url: String,
    /// RPC user.
    pub rpc_user: String,
    /// RPC password.
    pub rpc_password: String,
    /// Fallback feerate (sat/kw).
    pub fallback_feerate: u32,
    /// How the node reaches its signer.
    pub signer: SignerEndpoint,
    /// TLS files for the signer.
    pub signer_tls: SignerTls,
    /// Peer-to-peer listen address.
    pub listen: SocketAddr,
    /// Node alias.
    pub alias: String,
}

/// A running node.
pub struct Node {
    /// Settings it runs with.
    pub settings: NodeSettings,
    /// The signer connection.
    pub signer: Arc<SignerConnection>,
    /// Keys (all remote).
    pub keys: Arc<RemoteKeysManager>,
    /// Chain access.
    pub chain: Arc<ChainRpc>,
    /// Store.
    pub store: Arc<SqliteStore>,
    /// Chain monitor.
    pub chain_monitor: Arc<ChainMonitor>,
    /// Channel manager.
    pub channel_manager: Arc<ChannelManager>,
    /// Peer manager.
    pub peer_manager: Arc<PeerManager>,
    /// Network graph.
    pub graph: Arc<Graph>,
    /// The watch-only on-chain wallet.
    pub wallet: Arc<Wallet>,
    /// The channels' transactions, for the signer's proofs.
    pub chain_watch: Arc<ChainWatch>,
    /// The address the peer-to-peer listener is bound to.
    pub listen_addr: SocketAddr,
    /// Fee rates asked for channels being opened (by user channel id),
    /// until their funding is built.
    pub(crate) funding_fee_rates:
        std::sync::Mutex<std::collections::HashMap<u128, bitcoin::FeeRate>>,
    /// Payments by hash.
    pub payments: std::sync::Mutex<std::collections::BTreeMap<[u8; 32], PaymentRecord>>,
    /// The output sweeper.
    pub sweeper: Arc<Sweeper>,
    pub(crate) fee_bump_wallet: Arc<FeeBumpWallet>,
    pub(crate) bumper: Bumper,
    pub(crate) gossip: Arc<GossipSync>,
    pub(crate) scorer: Arc<RwLock<Scorer>>,
    pub(crate) logger: Arc<TracingLogger>,
    /// LDK's background processor (persistence, timers, events, sweeps).
    pub(crate) background: std::sync::Mutex<Option<BackgroundProcessor>>,
    /// The chain height the signer last confirmed (it bounds HTLC expiries
    /// and sweep locktimes by it).
    pub signer_chain_height: std::sync::atomic::AtomicU32,
}

/// What the node knows of one payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRecord {
    /// "outbound" or "inbound".
    pub direction: &'static str,
    /// "awaiting_approval" (by the signer's operator), "pending",
    /// "succeeded", "failed".
    pub status: String,
    /// Amount.
    pub amount_msat: u64,
    /// Routing fee paid (outbound).
    pub fee_msat: u64,
    /// The preimage, once known.
    pub preimage: Option<[u8; 32]>,
    /// Why it failed (LDK's reason), when it did.
    pub reason: Option<String>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// The node id (from the signer).
    pub fn node_id(&self) -> PublicKey {
        self.keys
            .get_node_id(Recipient::Node)
            .unwrap_or_else(|_| unreachable!("node recipient always has an id"))
    }

    /// Keeps the fee rate asked for the funding of channel `user_id`.
    pub(crate) fn set_funding_fee_rate(&self, user_id: u128, rate: bitcoin::FeeRate) {
        if let Ok(mut f) = self.funding_fee_rates.lock() {
            f.insert(user_id, rate);
        }
    }

    /// Forgets it (the channel was not created, or is gone).
    pub(crate) fn forget_funding_fee_rate(&self, user_id: u128) {
        if let Ok(mut f) = self.funding_fee_rates.lock() {
            f.remove(&user_id);
        }
    }

    /// The fee rate for channel `user_id`'s funding: the one asked at
    /// open, else the estimate for a channel's transactions.
    pub(crate) fn funding_fee_rate(&self, user_id: u128) -> bitcoin::FeeRate {
        let asked = self
            .funding_fee_rates
            .lock()
            .ok()
            .and_then(|mut f| f.remove(&user_id));
        asked.unwrap_or_else(|| {
            use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
            bitcoin::FeeRate::from_sat_per_kwu(u64::from(
                self.chain
                    .get_est_sat_per_1000_weight(ConfirmationTarget::NonAnchorChannelFee),
            ))
        })
    }

    /// Has the signer sign a wallet PSBT (blocking), and finalizes it.
    pub fn sign_wallet_psbt(
        &self,
        psbt: &bitcoin::Psbt,
    ) -> Result<bitcoin::Transaction, crate::signer_client::CallError> {
        use crate::signer_client::CallError;
        use lnpd_proto::signer::{reply, request, SignPsbtRequest};
        let signed = match self.signer.call(
            request::Body::SignPsbt(SignPsbtRequest {
                psbt: psbt.serialize(),
            }),
            Duration::from_secs(30),
        )? {
            reply::Body::SignPsbt(p) => p.psbt,
            _ => return Err(CallError::Unavailable("unexpected reply".into())),
        };
        let psbt = bitcoin::Psbt::deserialize(&signed)
            .map_err(|e| CallError::Unavailable(format!("signed PSBT unreadable: {e}")))?;
        self.wallet
            .finalize(psbt)
            .map_err(|e| CallError::Unavailable(e.to_string()))
    }

    /// A fresh script of the signer's wallet (internal chain) for change:
    /// the signer hands out each one once, so change never reuses a close
    /// or sweep destination it gave LDK (blocking).
    pub fn change_script(&self) -> Result<bitcoin::ScriptBuf, crate::signer_client::CallError> {
        use crate::signer_client::CallError;
        use lnpd_proto::signer::{reply, request, GetShutdownScriptRequest};
        let script = match self.signer.call(
            request::Body::GetShutdownScript(GetShutdownScriptRequest {}),
            Duration::from_secs(30),
        )? {
            reply::Body::Script(s) => bitcoin::ScriptBuf::from_bytes(s.script_pubkey),
            _ => return Err(CallError::Unavailable("unexpected reply".into())),
        };
        // The wallet watches up to it, however many the signer handed out.
        self.wallet
            .adopt_change_script(&script)
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        Ok(script)
    }

    /// Has the signer sign a funding PSBT, broadcasts it, and ends the
    /// channel `owner`'s reservation of its coins.
    pub fn sign_and_broadcast_funding(
        &self,
        psbt: bitcoin::Psbt,
        owner: u128,
    ) -> Result<bitcoin::Txid, crate::signer_client::CallError> {
        let tx = self.sign_wallet_psbt(&psbt)?;
        let txid = tx.compute_txid();
        use lightning::chain::chaininterface::BroadcasterInterface;
        self.chain.broadcast_transactions(&[&tx]);
        self.wallet.note_broadcast(&[&tx], Some(owner));
        Ok(txid)
    }

    /// Connects to a peer.
    pub async fn connect_peer(&self, node_id: PublicKey, addr: SocketAddr) -> Result<(), String> {
        if self.peer_manager.peer_by_node_id(&node_id).is_some() {
            return Ok(());
        }
        match lightning_net_tokio::connect_outbound(self.peer_manager.clone(), node_id, addr).await
        {
            Some(conn) => {
                tokio::spawn(conn);
                for _ in 0..100 {
                    if self.peer_manager.peer_by_node_id(&node_id).is_some() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(format!("handshake with {node_id}@{addr} did not complete"))
            }
            None => Err(format!("cannot reach {addr}")),
        }
    }

    /// Stops the background processor, which writes the channel manager a
    /// last time (written here instead if it was not running).
    pub fn shutdown(&self) {
        write_seen_state_counter(&self.store, self.signer.seen_state_counter());
        let bp = self.background.lock().ok().and_then(|mut b| b.take());
        if let Some(bp) = bp {
            match bp.stop() {
                Ok(()) => return,
                Err(e) => tracing::error!("background processor: {e}"),
            }
        }
        if let Err(e) = self
            .store
            .write("", "", MANAGER_KEY, self.channel_manager.encode())
        {
            tracing::error!("cannot persist the channel manager: {e}");
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }
}

/// Where the node keeps the highest state counter its signer reported.
pub(crate) const SEEN_STATE_COUNTER_KEY: &str = "signer_state_counter";

/// The signer state counter the node kept (0 if none).
pub(crate) fn read_seen_state_counter(store: &SqliteStore) -> u64 {
    store
        .read("", "", SEEN_STATE_COUNTER_KEY)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Keeps the signer's state counter (see `InfoRequest.seen_state_counter`).
pub(crate) fn write_seen_state_counter(store: &SqliteStore, counter: u64) {
    if let Err(e) = store.write(
        "",
        "",
        SEEN_STATE_COUNTER_KEY,
        counter.to_be_bytes().to_vec(),
    ) {
        tracing::warn!("cannot keep the signer's state counter: {e}");
    }
}
