//! Wiring of the LDK node: chain monitor, channel manager, gossip, router
//! and peer manager over the remote signer, the JSON-RPC chain and the
//! SQLite store, plus the loops that drive them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{BlockHash, Network};
use lightning::chain::chainmonitor;
use lightning::chain::{BestBlock, Filter, Listen, Watch};
use lightning::events::bump_transaction::sync::{BumpTransactionEventHandlerSync, WalletSync};
use lightning::events::Event;
use lightning::ln::channelmanager::{self, ChainParameters, ChannelManagerReadArgs};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler};
use lightning::onion_message::messenger::DefaultMessageRouter;
use lightning::routing::gossip::{NetworkGraph, P2PGossipSync};
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::routing::utxo::UtxoLookup;
use lightning::sign::{EntropySource, NodeSigner, Recipient};
use lightning::util::config::UserConfig;
use lightning::util::persist::{
    read_channel_monitors, KVStoreSync, NETWORK_GRAPH_PERSISTENCE_KEY,
    OUTPUT_SWEEPER_PERSISTENCE_KEY, OUTPUT_SWEEPER_PERSISTENCE_PRIMARY_NAMESPACE,
    OUTPUT_SWEEPER_PERSISTENCE_SECONDARY_NAMESPACE, SCORER_PERSISTENCE_KEY,
};
use lightning::util::ser::{ReadableArgs, Writeable};
use lightning::util::sweep::OutputSweeperSync;
use lightning_background_processor::{
    BackgroundProcessor, NO_LIQUIDITY_MANAGER_SYNC, NO_ONION_MESSENGER,
};
use lightning_block_sync::poll::ChainPoller;
use lightning_block_sync::{SpvClient, UnboundedCache};
use lightning_net_tokio::SocketDescriptor;

use crate::chain::ChainRpc;
use crate::chain_watch::ChainWatch;
use crate::fee_bump::FeeBumpWallet;
use crate::logger::TracingLogger;
use crate::signer_client::{RemoteChannelSigner, RemoteKeysManager, SignerConnection, SignerTls};
use crate::store::SqliteStore;
use crate::wallet::Wallet;

/// The chain monitor of this node.
pub type ChainMonitor = chainmonitor::ChainMonitor<
    RemoteChannelSigner,
    Arc<dyn Filter + Send + Sync>,
    Arc<ChainRpc>,
    Arc<ChainRpc>,
    Arc<TracingLogger>,
    Arc<SqliteStore>,
    Arc<RemoteKeysManager>,
>;
/// The network graph.
pub type Graph = NetworkGraph<Arc<TracingLogger>>;
/// The scorer.
pub type Scorer = ProbabilisticScorer<Arc<Graph>, Arc<TracingLogger>>;
/// The payment router.
pub type Router = DefaultRouter<
    Arc<Graph>,
    Arc<TracingLogger>,
    Arc<RemoteKeysManager>,
    Arc<RwLock<Scorer>>,
    ProbabilisticScoringFeeParameters,
    Scorer,
>;
/// The onion message router.
pub type MessageRouter =
    DefaultMessageRouter<Arc<Graph>, Arc<TracingLogger>, Arc<RemoteKeysManager>>;
/// The channel manager.
pub type ChannelManager = channelmanager::ChannelManager<
    Arc<ChainMonitor>,
    Arc<ChainRpc>,
    Arc<RemoteKeysManager>,
    Arc<RemoteKeysManager>,
    Arc<RemoteKeysManager>,
    Arc<ChainRpc>,
    Arc<Router>,
    Arc<MessageRouter>,
    Arc<TracingLogger>,
>;
/// Gossip sync.
pub type GossipSync =
    P2PGossipSync<Arc<Graph>, Arc<dyn UtxoLookup + Send + Sync>, Arc<TracingLogger>>;
/// The peer manager.
pub type PeerManager = lightning::ln::peer_handler::PeerManager<
    SocketDescriptor,
    Arc<ChannelManager>,
    Arc<GossipSync>,
    IgnoringMessageHandler,
    Arc<TracingLogger>,
    IgnoringMessageHandler,
    Arc<RemoteKeysManager>,
    Arc<ChainMonitor>,
>;

/// Claims our outputs of closed channels (to_local after its delay, the
/// peer's payment to us, HTLCs) into the wallet.
pub type Sweeper = OutputSweeperSync<
    Arc<ChainRpc>,
    Arc<RemoteKeysManager>,
    Arc<ChainRpc>,
    Arc<dyn Filter + Send + Sync>,
    Arc<SqliteStore>,
    Arc<TracingLogger>,
    Arc<RemoteKeysManager>,
>;
/// Fee bumping of force-close transactions of anchor channels.
pub type Bumper = BumpTransactionEventHandlerSync<
    Arc<ChainRpc>,
    Arc<WalletSync<Arc<FeeBumpWallet>, Arc<TracingLogger>>>,
    Arc<RemoteKeysManager>,
    Arc<TracingLogger>,
>;

/// Key of the channel manager in the store (LDK's background processor
/// writes it under this name).
const MANAGER_KEY: &str = "manager";

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Something in the set-up failed; the message says what.
    #[error("{0}")]
    Startup(String),
}

fn fail(what: &str) -> impl FnOnce(String) -> NodeError + '_ {
    move |e| NodeError::Startup(format!("{what}: {e}"))
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
    /// Signer address host:port.
    pub signer: String,
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
    /// Funding transactions built but not yet signed: signed only once LDK
    /// says broadcasting is safe (the first commitment is countersigned).
    pending_funding:
        std::sync::Mutex<std::collections::HashMap<lightning::ln::types::ChannelId, bitcoin::Psbt>>,
    /// Payments by hash.
    pub payments: std::sync::Mutex<std::collections::BTreeMap<[u8; 32], PaymentRecord>>,
    /// The output sweeper.
    pub sweeper: Arc<Sweeper>,
    fee_bump_wallet: Arc<FeeBumpWallet>,
    bumper: Bumper,
    gossip: Arc<GossipSync>,
    scorer: Arc<RwLock<Scorer>>,
    logger: Arc<TracingLogger>,
    /// LDK's background processor (persistence, timers, events, sweeps).
    background: std::sync::Mutex<Option<BackgroundProcessor>>,
    /// The chain height the signer last confirmed (it bounds HTLC expiries
    /// and sweep locktimes by it).
    pub signer_chain_height: std::sync::atomic::AtomicU32,
}

/// What the node knows of one payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRecord {
    /// "outbound" or "inbound".
    pub direction: &'static str,
    /// "pending", "succeeded", "failed".
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// Starts the node: connects to the signer and the chain, loads or
    /// creates its state, syncs to the chain tip and starts listening.
    pub async fn start(settings: NodeSettings) -> Result<Arc<Node>, NodeError> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| fail("data directory")(e.to_string()))?;
        let logger = Arc::new(TracingLogger);
        let store = Arc::new(
            SqliteStore::open(&settings.data_dir.join("node.sqlite"))
                .map_err(|e| fail("store")(e.to_string()))?,
        );
        let signer = SignerConnection::start(&settings.signer, settings.signer_tls.clone())
            .map_err(|e| fail("signer client")(e.to_string()))?;
        let chain_watch = Arc::new(ChainWatch::open(store.clone()));
        let conn = signer.clone();
        let txs: Arc<dyn crate::chain_watch::TxSource> = chain_watch.clone();
        let keys = tokio::task::spawn_blocking(move || {
            RemoteKeysManager::new(conn, txs, Duration::from_secs(30))
        })
        .await
        .map_err(|e| fail("signer")(e.to_string()))?
        .map_err(|e| fail("signer")(e.to_string()))?;
        let keys = Arc::new(keys);
        let conn = signer.clone();
        let descriptor = tokio::task::spawn_blocking(move || {
            use lnpd_proto::signer::{reply, request, GetWalletDescriptorRequest};
            match conn.call_retrying(
                "wallet descriptor",
                request::Body::GetWalletDescriptor(GetWalletDescriptorRequest {}),
                Duration::from_secs(30),
            ) {
                Ok(reply::Body::GetWalletDescriptor(d)) => Ok(d.external_descriptor),
                Ok(_) => Err("unexpected reply".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|e| fail("wallet descriptor")(e.to_string()))?
        .map_err(fail("wallet descriptor"))?;
        let wallet = Arc::new(
            Wallet::new(&descriptor, settings.network, store.clone())
                .map_err(|e| fail("wallet")(e.to_string()))?,
        );
        chain_watch.set_wallet(wallet.clone());
        let chain = ChainRpc::new(
            &settings.rpc_url,
            &settings.rpc_user,
            &settings.rpc_password,
            settings.fallback_feerate,
        )
        .map_err(|e| fail("chain backend")(e.to_string()))?;
        chain.refresh_fees().await;
        let (tip_hash, tip_height) = chain
            .best_block()
            .await
            .map_err(|e| fail("chain backend")(e.to_string()))?;

        let graph = match store.read("", "", NETWORK_GRAPH_PERSISTENCE_KEY) {
            Ok(bytes) => NetworkGraph::read(&mut &bytes[..], logger.clone())
                .map_err(|e| fail("network graph")(format!("{e:?}")))?,
            Err(_) => NetworkGraph::new(settings.network, logger.clone()),
        };
        let graph = Arc::new(graph);
        let decay = ProbabilisticScoringDecayParameters::default();
        let scorer = match store.read("", "", SCORER_PERSISTENCE_KEY) {
            Ok(bytes) => {
                ProbabilisticScorer::read(&mut &bytes[..], (decay, graph.clone(), logger.clone()))
                    .map_err(|e| fail("scorer")(format!("{e:?}")))?
            }
            Err(_) => ProbabilisticScorer::new(decay, graph.clone(), logger.clone()),
        };
        let scorer = Arc::new(RwLock::new(scorer));
        let router = Arc::new(DefaultRouter::new(
            graph.clone(),
            logger.clone(),
            keys.clone(),
            scorer.clone(),
            ProbabilisticScoringFeeParameters::default(),
        ));
        let message_router = Arc::new(DefaultMessageRouter::new(graph.clone(), keys.clone()));
        let chain_monitor: Arc<ChainMonitor> = Arc::new(chainmonitor::ChainMonitor::new(
            None,
            chain.clone(),
            logger.clone(),
            chain.clone(),
            store.clone(),
            keys.clone(),
            keys.get_peer_storage_key(),
        ));

        let mut user_config = UserConfig::default();
        user_config
            .channel_handshake_config
            .negotiate_anchors_zero_fee_htlc_tx = true;
        user_config.channel_handshake_config.announce_for_forwarding = false;
        // Channels are unannounced: forwarding over them is what a routing
        // node of private channels (and the A→B→C line) needs.
        user_config.accept_forwards_to_priv_channels = true;
        // LDK only accepts inbound anchor channels by hand (see OpenChannelRequest).
        user_config.manually_accept_inbound_channels = true;

        let (store2, keys2) = (store.clone(), keys.clone());
        let mut monitors = tokio::task::spawn_blocking(move || {
            read_channel_monitors(store2, keys2.clone(), keys2)
        })
        .await
        .map_err(|e| fail("channel monitors")(e.to_string()))?
        .map_err(|e| fail("channel monitors")(e.to_string()))?;
        let saved = store.read("", "", MANAGER_KEY).ok();
        let (manager_best, channel_manager) = match saved {
            Some(bytes) => {
                let mut refs: Vec<_> = monitors.iter().map(|(_, m)| m).collect();
                let args = ChannelManagerReadArgs::new(
                    keys.clone(),
                    keys.clone(),
                    keys.clone(),
                    chain.clone(),
                    chain_monitor.clone(),
                    chain.clone(),
                    router.clone(),
                    message_router.clone(),
                    logger.clone(),
                    user_config,
                    std::mem::take(&mut refs),
                );
                let (hash, cm) = <(BlockHash, ChannelManager)>::read(&mut &bytes[..], args)
                    .map_err(|e| fail("channel manager")(format!("{e:?}")))?;
                (hash, cm)
            }
            None => {
                let params = ChainParameters {
                    network: settings.network,
                    best_block: BestBlock::new(tip_hash, tip_height),
                };
                let cm = channelmanager::ChannelManager::new(
                    chain.clone(),
                    chain_monitor.clone(),
                    chain.clone(),
                    router.clone(),
                    message_router.clone(),
                    logger.clone(),
                    keys.clone(),
                    keys.clone(),
                    keys.clone(),
                    user_config,
                    params,
                    now_secs() as u32,
                );
                (tip_hash, cm)
            }
        };
        let channel_manager = Arc::new(channel_manager);

        let tip_block = BestBlock::new(tip_hash, tip_height);
        let sweeper_args = || {
            (
                chain.clone(),
                chain.clone(),
                None::<Arc<dyn Filter + Send + Sync>>,
                keys.clone(),
                keys.clone(),
                store.clone(),
                logger.clone(),
            )
        };
        let (sweeper_best, sweeper) = match store.read(
            OUTPUT_SWEEPER_PERSISTENCE_PRIMARY_NAMESPACE,
            OUTPUT_SWEEPER_PERSISTENCE_SECONDARY_NAMESPACE,
            OUTPUT_SWEEPER_PERSISTENCE_KEY,
        ) {
            Ok(bytes) => <(BestBlock, Sweeper)>::read(&mut &bytes[..], sweeper_args())
                .map_err(|e| fail("output sweeper")(format!("{e:?}")))?,
            Err(_) => {
                let (b, e, f, o, d, k, l) = sweeper_args();
                (tip_block, Sweeper::new(tip_block, b, e, f, o, d, k, l))
            }
        };
        let sweeper = Arc::new(sweeper);

        // Bring the manager and every monitor to the chain tip, then hand the monitors over.
        let monitor_listeners: Vec<(BlockHash, _)> = monitors
            .drain(..)
            .map(|(hash, m)| (hash, (m, chain.clone(), chain.clone(), logger.clone())))
            .collect();
        {
            let mut cache = UnboundedCache::new();
            let wallet_best = wallet.best_block_hash().unwrap_or(tip_hash);
            let mut listeners: Vec<(BlockHash, &(dyn Listen + Send + Sync))> = vec![
                (
                    manager_best,
                    &*channel_manager as &(dyn Listen + Send + Sync),
                ),
                (wallet_best, &*chain_watch as &(dyn Listen + Send + Sync)),
                (wallet_best, &*wallet as &(dyn Listen + Send + Sync)),
                (
                    sweeper_best.block_hash,
                    &*sweeper as &(dyn Listen + Send + Sync),
                ),
            ];
            for (hash, l) in &monitor_listeners {
                listeners.push((*hash, l as &(dyn Listen + Send + Sync)));
            }
            lightning_block_sync::init::synchronize_listeners(
                &*chain,
                settings.network,
                &mut cache,
                listeners,
            )
            .await
            .map_err(|e| fail("chain sync")(format!("{e:?}")))?;
        }
        for (_, (monitor, ..)) in monitor_listeners {
            let id = monitor.channel_id();
            chain_monitor
                .watch_channel(id, monitor)
                .map_err(|_| fail("channel monitor")(format!("cannot watch {id}")))?;
        }

        let gossip = Arc::new(P2PGossipSync::new(
            graph.clone(),
            None::<Arc<dyn UtxoLookup + Send + Sync>>,
            logger.clone(),
        ));
        let handler = MessageHandler {
            chan_handler: channel_manager.clone(),
            route_handler: gossip.clone(),
            onion_message_handler: IgnoringMessageHandler {},
            custom_message_handler: IgnoringMessageHandler {},
            send_only_message_handler: chain_monitor.clone(),
        };
        let peer_manager = Arc::new(PeerManager::new(
            handler,
            now_secs() as u32,
            &keys.get_secure_random_bytes(),
            logger.clone(),
            keys.clone(),
        ));

        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| fail("peer listener")(e.to_string()))?;
        let listen_addr = listener
            .local_addr()
            .map_err(|e| fail("peer listener")(e.to_string()))?;
        let fee_bump_wallet = Arc::new(FeeBumpWallet::new(wallet.clone(), signer.clone()));
        let bumper = BumpTransactionEventHandlerSync::new(
            chain.clone(),
            Arc::new(WalletSync::new(fee_bump_wallet.clone(), logger.clone())),
            keys.clone(),
            logger.clone(),
        );
        let node = Arc::new(Node {
            settings,
            signer,
            keys,
            chain,
            store,
            chain_monitor,
            channel_manager,
            peer_manager,
            graph,
            wallet,
            chain_watch,
            listen_addr,
            pending_funding: Default::default(),
            payments: Default::default(),
            sweeper,
            fee_bump_wallet,
            bumper,
            gossip,
            scorer,
            logger,
            background: std::sync::Mutex::new(None),
            signer_chain_height: Default::default(),
        });
        node.spawn_listener(listener);
        node.spawn_chain_poller(tip_hash, tip_height);
        node.start_background_processor();
        node.spawn_signer_watch();
        tracing::info!(node_id = %node.node_id(), "lnpd node up: peers on {listen_addr}, chain at height {tip_height}");
        Ok(node)
    }

    /// The node id (from the signer).
    pub fn node_id(&self) -> PublicKey {
        self.keys
            .get_node_id(Recipient::Node)
            .unwrap_or_else(|_| unreachable!("node recipient always has an id"))
    }

    fn spawn_listener(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let pm = self.peer_manager.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, addr)) => {
                        let pm = pm.clone();
                        match stream.into_std() {
                            Ok(std_stream) => {
                                tracing::debug!("inbound connection from {addr}");
                                tokio::spawn(lightning_net_tokio::setup_inbound(pm, std_stream));
                            }
                            Err(e) => tracing::warn!("inbound connection from {addr} dropped: {e}"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    fn spawn_chain_poller(self: &Arc<Self>, tip_hash: BlockHash, tip_height: u32) {
        let node = self.clone();
        tokio::spawn(async move {
            let chain = node.chain.clone();
            let tip = match chain.header(&tip_hash).await {
                Ok(h) => h,
                Err(e) => return tracing::error!("chain poller not started: {e}"),
            };
            let validated =
                match lightning_block_sync::init::validate_best_block_header(&*chain).await {
                    Ok(v) => v,
                    Err(e) => {
                        return tracing::error!(
                            "chain poller not started: {e:?} (tip {tip_height}: {})",
                            tip.height
                        )
                    }
                };
            let mut cache = UnboundedCache::new();
            let ldk = (node.chain_monitor.clone(), node.channel_manager.clone());
            let ours = (node.wallet.clone(), node.sweeper.clone());
            // The channels' transactions are kept before LDK sees a block:
            // a justice or sweep it signs at once needs them as proofs.
            let inner = (&ldk, &ours);
            let listener = (&*node.chain_watch, &inner);
            let poller = ChainPoller::new(&*chain, node.settings.network);
            let mut spv = SpvClient::new(validated, poller, &mut cache, &listener);
            let mut fees_at = tokio::time::Instant::now();
            // When the signer's chain must be fed next (now, then after each
            // new block; after a failure, again in 10 s).
            let mut feed_at = Some(tokio::time::Instant::now());
            loop {
                if feed_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    feed_at = node.feed_signer_chain().await;
                    if feed_at.is_none() {
                        node.deliver_funding_proofs().await;
                    }
                }
                match spv.poll_best_tip().await {
                    Ok((_, true)) => {
                        feed_at = Some(tokio::time::Instant::now());
                        // Claim what a new block made spendable now rather
                        // than at the background processor's next sweep timer.
                        let sweeper = node.sweeper.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = sweeper.regenerate_and_broadcast_spend_if_necessary();
                        });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("chain poll failed: {e:?}"),
                }
                if fees_at.elapsed() > Duration::from_secs(60) {
                    chain.refresh_fees().await;
                    fees_at = tokio::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Brings the signer's header chain up to the backend's tip; returns
    /// when to try again (none: up to date).
    async fn feed_signer_chain(&self) -> Option<tokio::time::Instant> {
        let result = match self.chain.best_block().await {
            Ok(best) => crate::signer_chain::feed(&self.chain, &self.signer, best).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(height) => {
                self.signer_chain_height
                    .store(height, std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::warn!("the signer's chain view is behind ({e}); retrying in 10 s");
                Some(tokio::time::Instant::now() + Duration::from_secs(10))
            }
        }
    }

    /// Proves confirmed fundings to the signer (a forward counts only
    /// against an HTLC received on a channel funded on chain). A proof the
    /// signer cannot check any more (its block left the signer's window)
    /// is dropped with a warning; one the signer is not ready for waits.
    async fn deliver_funding_proofs(&self) {
        use crate::signer_client::connection::CallError;
        for proof in self.chain_watch.pending_proofs() {
            let conn = self.signer.clone();
            let first = proof.clone();
            let r = tokio::task::spawn_blocking(move || {
                conn.call(
                    lnpd_proto::signer::request::Body::ProveFunding(first),
                    Duration::from_secs(10),
                )
            })
            .await;
            // A block older than the signer's window: send the headers that
            // link it (the node was away longer than the window).
            let r = match r {
                Ok(Err(CallError::Refused {
                    code: tonic::Code::FailedPrecondition,
                    ..
                })) => match self.linked_proof(&proof).await {
                    Some(linked) => {
                        let conn = self.signer.clone();
                        tokio::task::spawn_blocking(move || {
                            conn.call(
                                lnpd_proto::signer::request::Body::ProveFunding(linked),
                                Duration::from_secs(30),
                            )
                        })
                        .await
                    }
                    None => r,
                },
                other => other,
            };
            match r {
                Ok(Ok(_)) => self.chain_watch.proof_done(&proof),
                Ok(Err(CallError::Unavailable(e))) => {
                    tracing::warn!("funding proof not delivered yet: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!("the signer did not take a funding proof: {e}");
                    if !matches!(
                        &e,
                        CallError::Refused {
                            code: tonic::Code::FailedPrecondition,
                            ..
                        }
                    ) {
                        self.chain_watch.proof_done(&proof);
                    }
                }
                Err(e) => tracing::error!("delivering a funding proof aborted: {e}"),
            }
        }
    }

    /// `proof` with the headers linking its block to the signer's window.
    async fn linked_proof(
        &self,
        proof: &lnpd_proto::signer::ProveFundingRequest,
    ) -> Option<lnpd_proto::signer::ProveFundingRequest> {
        let block: bitcoin::MerkleBlock =
            bitcoin::consensus::deserialize(&proof.merkle_block).ok()?;
        let hash = block.header.block_hash();
        match crate::signer_chain::headers_linking(&self.chain, &self.signer, &hash).await {
            Ok(later_headers) if !later_headers.is_empty() => {
                Some(lnpd_proto::signer::ProveFundingRequest {
                    later_headers,
                    ..proof.clone()
                })
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("cannot link funding block {hash} to the signer's chain: {e}");
                None
            }
        }
    }

    /// Starts LDK's background processor: it persists the channel manager,
    /// graph, scorer and sweeper, handles events, drives HTLC forwarding,
    /// timers and the sweeper's (re)broadcasts, on its own thread (the
    /// handlers call the signer synchronously).
    fn start_background_processor(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let handler = move |event: Event| match weak.upgrade() {
            Some(node) => node.handle_event(event),
            None => Ok(()),
        };
        let bp = BackgroundProcessor::start(
            self.store.clone(),
            handler,
            self.chain_monitor.clone(),
            self.channel_manager.clone(),
            NO_ONION_MESSENGER,
            lightning_background_processor::GossipSync::p2p(self.gossip.clone()),
            self.peer_manager.clone(),
            NO_LIQUIDITY_MANAGER_SYNC,
            Some(self.sweeper.clone()),
            self.logger.clone(),
            Some(self.scorer.clone()),
        );
        if let Ok(mut b) = self.background.lock() {
            *b = Some(bp);
        }
    }

    /// Watches the signer connection: an answer to a request LDK was told
    /// "pending" for (a counterparty commitment signature) is taken up at
    /// once; once the signer answers again after an outage, LDK retries
    /// every operation left pending while it was away.
    fn spawn_signer_watch(self: &Arc<Self>) {
        let node = self.clone();
        let answered = Arc::new(tokio::sync::Notify::new());
        let hook = answered.clone();
        self.signer.on_answer(move || hook.notify_one());
        tokio::spawn(async move {
            // Once at the start: an answer may have come before the hook was set.
            let mut first = true;
            const RECONNECT_EVERY: Duration = Duration::from_secs(2);
            let mut reconnect_due = std::time::Instant::now();
            loop {
                let woken = std::mem::take(&mut first)
                    || tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => false,
                        _ = answered.notified() => true,
                    };
                if woken {
                    let n = node.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        n.channel_manager.signer_unblocked(None);
                        n.peer_manager.process_events();
                    })
                    .await;
                    if let Err(e) = r {
                        tracing::error!("taking up the signer's answer aborted: {e}");
                    }
                }
                if !node.signer.is_connected() && reconnect_due.elapsed() >= RECONNECT_EVERY {
                    // Nothing else may call the signer for a while (no
                    // block, no payment): try to reconnect so that what LDK
                    // left pending is retried without waiting for traffic.
                    reconnect_due = std::time::Instant::now();
                    let n = node.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let ping = lnpd_proto::signer::request::Body::Ping(
                            lnpd_proto::signer::PingRequest { nonce: vec![] },
                        );
                        if n.signer.call(ping, Duration::from_secs(5)).is_ok() {
                            tracing::info!("signer reachable again");
                        }
                    })
                    .await;
                }
                if node.signer.is_connected() && node.signer.take_pending() {
                    tracing::info!("signer is back: retrying operations left pending");
                    let n = node.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        n.channel_manager.signer_unblocked(None);
                        n.chain_monitor.signer_unblocked(None);
                    })
                    .await;
                    if let Err(e) = r {
                        tracing::error!("retrying pending signatures aborted: {e}");
                    }
                }
            }
        });
    }

    fn handle_event(&self, event: Event) -> Result<(), lightning::events::ReplayEvent> {
        use lightning::events::InboundChannelFunds;
        match event {
            Event::OpenChannelRequest {
                temporary_channel_id,
                counterparty_node_id,
                channel_negotiation_type,
                funding_satoshis,
                ..
            } => {
                let push_msat = match channel_negotiation_type {
                    // A push is the peer's gift: the signer learns it from
                    // the first commitment of ours the peer signs, never
                    // from us, and the wallet never funds an inbound channel.
                    InboundChannelFunds::PushMsat(p) => p,
                    InboundChannelFunds::DualFunded => {
                        tracing::warn!(%counterparty_node_id, "refusing a dual-funded channel: not supported");
                        let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                            &temporary_channel_id,
                            &counterparty_node_id,
                            "dual funding is not supported".into(),
                        );
                        return Ok(());
                    }
                };
                let user_id = u128::from_be_bytes(
                    self.keys.get_secure_random_bytes()[..16]
                        .try_into()
                        .unwrap_or([0; 16]),
                );
                match self.channel_manager.accept_inbound_channel(
                    &temporary_channel_id,
                    &counterparty_node_id,
                    user_id,
                    None,
                ) {
                    Ok(()) => {
                        tracing::info!(%counterparty_node_id, funding_satoshis, push_msat, "accepted an inbound channel")
                    }
                    Err(e) => {
                        tracing::warn!("cannot accept channel from {counterparty_node_id}: {e:?}")
                    }
                }
            }
            Event::FundingGenerationReady {
                temporary_channel_id,
                counterparty_node_id,
                channel_value_satoshis,
                output_script,
                ..
            } => {
                let feerate = {
                    use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
                    (self
                        .chain
                        .get_est_sat_per_1000_weight(ConfirmationTarget::NonAnchorChannelFee)
                        as u64)
                        .div_ceil(250)
                        .max(1)
                };
                let built = self.wallet.build_spend(
                    output_script.clone(),
                    channel_value_satoshis,
                    false,
                    feerate,
                );
                let psbt = match built {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!("cannot fund channel {temporary_channel_id}: {e}");
                        let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                            &temporary_channel_id,
                            &counterparty_node_id,
                            "funding failed".into(),
                        );
                        return Ok(());
                    }
                };
                let tx = &psbt.unsigned_tx;
                let Some(vout) = tx
                    .output
                    .iter()
                    .position(|o| o.script_pubkey == output_script)
                else {
                    return Ok(());
                };
                let outpoint = lightning::chain::transaction::OutPoint {
                    txid: tx.compute_txid(),
                    index: vout as u16,
                };
                // Segwit inputs only: the txid is final before any signature.
                match self
                    .channel_manager
                    .unsafe_manual_funding_transaction_generated(
                        temporary_channel_id,
                        counterparty_node_id,
                        outpoint,
                    ) {
                    Ok(()) => {
                        if let Ok(mut p) = self.pending_funding.lock() {
                            p.insert(temporary_channel_id, psbt);
                        }
                        tracing::info!(channel = %temporary_channel_id, "funding transaction built; it is signed once the peer countersigned our first commitment");
                    }
                    Err(e) => {
                        self.wallet.release(&psbt);
                        tracing::error!("funding {temporary_channel_id}: {e:?}")
                    }
                }
            }
            Event::FundingTxBroadcastSafe {
                former_temporary_channel_id,
                channel_id,
                ..
            } => {
                let psbt = self
                    .pending_funding
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&former_temporary_channel_id));
                let Some(psbt) = psbt else {
                    tracing::error!(%channel_id, "no funding transaction kept for this channel");
                    return Ok(());
                };
                match self.sign_and_broadcast(psbt.clone()) {
                    Ok(txid) => {
                        tracing::info!(%channel_id, %txid, "funding transaction signed and broadcast")
                    }
                    Err(e) => {
                        self.wallet.release(&psbt);
                        tracing::error!(%channel_id, "funding transaction not broadcast: {e}")
                    }
                }
            }
            Event::PaymentClaimable {
                payment_hash,
                purpose,
                amount_msat,
                ..
            } => match purpose.preimage() {
                Some(preimage)
                    if self.hold_state(&payment_hash.0) == crate::hold::HoldState::Held =>
                {
                    tracing::info!(payment_hash = %payment_hash, amount_msat, "payment held: settle or cancel it");
                    self.record_payment(
                        payment_hash.0,
                        "inbound",
                        "held",
                        amount_msat,
                        0,
                        Some(preimage.0),
                    );
                }
                Some(_)
                    if self.hold_state(&payment_hash.0) == crate::hold::HoldState::Cancelled =>
                {
                    tracing::info!(payment_hash = %payment_hash, "payment to a cancelled hold invoice: failed back");
                    self.record_payment(
                        payment_hash.0,
                        "inbound",
                        "cancelled",
                        amount_msat,
                        0,
                        None,
                    );
                    self.channel_manager.fail_htlc_backwards(&payment_hash);
                }
                Some(preimage) => {
                    self.record_payment(
                        payment_hash.0,
                        "inbound",
                        "pending",
                        amount_msat,
                        0,
                        Some(preimage.0),
                    );
                    self.channel_manager.claim_funds(preimage);
                }
                None => {
                    tracing::warn!(payment_hash = %payment_hash, "payment without a known preimage left unclaimed")
                }
            },
            Event::PaymentClaimed {
                payment_hash,
                amount_msat,
                ..
            } => {
                self.record_payment(payment_hash.0, "inbound", "succeeded", amount_msat, 0, None);
            }
            Event::PaymentSent {
                payment_hash,
                payment_preimage,
                amount_msat,
                fee_paid_msat,
                ..
            } => {
                self.record_payment(
                    payment_hash.0,
                    "outbound",
                    "succeeded",
                    amount_msat.unwrap_or(0),
                    fee_paid_msat.unwrap_or(0),
                    Some(payment_preimage.0),
                );
            }
            Event::PaymentFailed {
                payment_hash,
                reason,
                ..
            } => {
                if let Some(h) = payment_hash {
                    tracing::warn!(payment_hash = %h, "payment failed: {reason:?}");
                    self.record_payment(h.0, "outbound", "failed", 0, 0, None);
                    if let Ok(mut p) = self.payments.lock() {
                        if let Some(r) = p.get_mut(&h.0) {
                            r.reason = Some(match reason {
                                Some(r) => format!("{r:?}"),
                                None => "no reason given by the peer".into(),
                            });
                        }
                    }
                }
            }
            Event::SpendableOutputs {
                outputs,
                channel_id,
            } => {
                // One owner per coin: outputs paying a wallet script (a
                // cooperative close, our shutdown or destination script) are
                // the wallet's already; only outputs under channel keys go
                // to the sweeper, which moves them to the wallet.
                let (static_outputs, to_sweep): (Vec<_>, Vec<_>) = outputs.iter().partition(|d| {
                    matches!(
                        d,
                        lightning::sign::SpendableOutputDescriptor::StaticOutput { .. }
                    )
                });
                tracing::info!(
                    channel = ?channel_id,
                    to_sweeper = to_sweep.len(),
                    already_in_wallet = static_outputs.len(),
                    "outputs of a closed channel are ours: the sweeper claims those under channel keys"
                );
                if self
                    .sweeper
                    .track_spendable_outputs(outputs, channel_id, true, None)
                    .is_err()
                {
                    tracing::error!("the sweeper could not persist the outputs; retrying");
                    return Err(lightning::events::ReplayEvent());
                }
            }
            Event::BumpTransaction(bump) => {
                tracing::info!("fee bump requested: {}", bump_summary(&bump));
                self.fee_bump_wallet.remember(&bump);
                self.bumper.handle_event(&bump);
            }
            Event::ChannelClosed {
                channel_id,
                reason,
                counterparty_node_id,
                ..
            } => {
                tracing::info!(%channel_id, peer = ?counterparty_node_id, "channel closed: {reason}");
                if let Ok(mut p) = self.pending_funding.lock() {
                    if let Some(psbt) = p.remove(&channel_id) {
                        self.wallet.release(&psbt);
                    }
                }
            }
            Event::PaymentForwarded {
                prev_channel_id,
                next_channel_id,
                total_fee_earned_msat,
                outbound_amount_forwarded_msat,
                ..
            } => {
                tracing::info!(
                    from = ?prev_channel_id,
                    to = ?next_channel_id,
                    amount_msat = ?outbound_amount_forwarded_msat,
                    fee_msat = ?total_fee_earned_msat,
                    "forwarded a payment"
                );
            }
            other => tracing::debug!("event: {other:?}"),
        }
        Ok(())
    }

    fn record_payment(
        &self,
        hash: [u8; 32],
        direction: &'static str,
        status: &str,
        amount_msat: u64,
        fee_msat: u64,
        preimage: Option<[u8; 32]>,
    ) {
        if let Ok(mut p) = self.payments.lock() {
            let e = p.entry(hash).or_insert(PaymentRecord {
                direction,
                status: status.into(),
                amount_msat,
                fee_msat,
                preimage: None,
                reason: None,
            });
            e.status = status.into();
            if amount_msat > 0 {
                e.amount_msat = amount_msat;
            }
            if fee_msat > 0 {
                e.fee_msat = fee_msat;
            }
            if preimage.is_some() {
                e.preimage = preimage;
            }
        }
    }

    /// Has the signer sign a wallet PSBT, then broadcasts it.
    pub fn sign_and_broadcast(&self, psbt: bitcoin::Psbt) -> Result<bitcoin::Txid, String> {
        use lnpd_proto::signer::{reply, request, SignPsbtRequest};
        let signed = match self.signer.call(
            request::Body::SignPsbt(SignPsbtRequest {
                psbt: psbt.serialize(),
            }),
            Duration::from_secs(30),
        ) {
            Ok(reply::Body::SignPsbt(p)) => p.psbt,
            Ok(_) => return Err("unexpected reply".into()),
            Err(e) => return Err(format!("the signer did not sign: {e}")),
        };
        let psbt = bitcoin::Psbt::deserialize(&signed).map_err(|e| e.to_string())?;
        let tx = self.wallet.finalize(psbt).map_err(|e| e.to_string())?;
        let txid = tx.compute_txid();
        use lightning::chain::chaininterface::BroadcasterInterface;
        self.chain.broadcast_transactions(&[&tx]);
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

/// One line on a fee-bump event, for the log.
fn bump_summary(e: &lightning::events::bump_transaction::BumpTransactionEvent) -> String {
    use lightning::events::bump_transaction::BumpTransactionEvent as B;
    match e {
        B::ChannelClose {
            channel_id,
            commitment_tx,
            package_target_feerate_sat_per_1000_weight,
            ..
        } => format!(
            "channel {channel_id}: commitment {} to confirm at {package_target_feerate_sat_per_1000_weight} sat/kw",
            commitment_tx.compute_txid()
        ),
        B::HTLCResolution {
            channel_id,
            htlc_descriptors,
            target_feerate_sat_per_1000_weight,
            ..
        } => format!(
            "channel {channel_id}: {} HTLC claim(s) at {target_feerate_sat_per_1000_weight} sat/kw",
            htlc_descriptors.len()
        ),
    }
}
