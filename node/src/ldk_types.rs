//! The LDK types of lnpd: LDK's generic parts over keys `K` and a chain `C`
//! (broadcaster and fee estimator) with lnpd's store and logger (the `…Of`
//! aliases, shared with the payments benchmark), and this node's: the
//! remote signer, the JSON-RPC chain and the wallet.

use std::sync::{Arc, RwLock};

use lightning::chain::chainmonitor;
use lightning::chain::Filter;
use lightning::events::bump_transaction::sync::{BumpTransactionEventHandlerSync, WalletSync};
use lightning::ln::channelmanager::{self};
use lightning::ln::peer_handler::IgnoringMessageHandler;
use lightning::onion_message::messenger::DefaultMessageRouter;
use lightning::routing::gossip::{NetworkGraph, P2PGossipSync};
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{ProbabilisticScorer, ProbabilisticScoringFeeParameters};
use lightning::routing::utxo::UtxoLookup;
use lightning::sign::SignerProvider;
use lightning::util::sweep::OutputSweeperSync;
use lightning_net_tokio::SocketDescriptor;

use crate::chain::ChainRpc;
use crate::fee_bump::FeeBumpWallet;
use crate::logger::TracingLogger;
use crate::signer_client::onion_ecdh::PrefetchOnions;
use crate::signer_client::queued::FlushAfterMessages;
use crate::signer_client::RemoteKeysManager;
use crate::store::SqliteStore;

/// A chain monitor over keys `K` and chain `C`, persisting to SQLite.
pub type ChainMonitorOf<K, C> = chainmonitor::ChainMonitor<
    <K as SignerProvider>::EcdsaSigner,
    Arc<dyn Filter + Send + Sync>,
    Arc<C>,
    Arc<C>,
    Arc<TracingLogger>,
    Arc<SqliteStore>,
    Arc<K>,
>;
/// The chain monitor of this node.
pub type ChainMonitor = ChainMonitorOf<RemoteKeysManager, ChainRpc>;
/// The network graph.
pub type Graph = NetworkGraph<Arc<TracingLogger>>;
/// The scorer.
pub type Scorer = ProbabilisticScorer<Arc<Graph>, Arc<TracingLogger>>;
/// A payment router with keys `K`.
pub type RouterOf<K> = DefaultRouter<
    Arc<Graph>,
    Arc<TracingLogger>,
    Arc<K>,
    Arc<RwLock<Scorer>>,
    ProbabilisticScoringFeeParameters,
    Scorer,
>;
/// The payment router.
pub type Router = RouterOf<RemoteKeysManager>;
/// An onion message router with keys `K`.
pub type MessageRouterOf<K> = DefaultMessageRouter<Arc<Graph>, Arc<TracingLogger>, Arc<K>>;
/// The onion message router.
pub type MessageRouter = MessageRouterOf<RemoteKeysManager>;
/// A channel manager over keys `K` and chain `C`.
pub type ChannelManagerOf<K, C> = channelmanager::ChannelManager<
    Arc<ChainMonitorOf<K, C>>,
    Arc<C>,
    Arc<K>,
    Arc<K>,
    Arc<K>,
    Arc<C>,
    Arc<RouterOf<K>>,
    Arc<MessageRouterOf<K>>,
    Arc<TracingLogger>,
>;
/// The channel manager.
pub type ChannelManager = ChannelManagerOf<RemoteKeysManager, ChainRpc>;
/// Gossip sync.
pub type GossipSync =
    P2PGossipSync<Arc<Graph>, Arc<dyn UtxoLookup + Send + Sync>, Arc<TracingLogger>>;
/// The peer manager.
pub type PeerManager = lightning::ln::peer_handler::PeerManager<
    SocketDescriptor,
    Arc<PrefetchOnions<Arc<ChannelManager>>>,
    Arc<GossipSync>,
    IgnoringMessageHandler,
    Arc<TracingLogger>,
    Arc<FlushAfterMessages>,
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
