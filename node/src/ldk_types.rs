//! The LDK types of this node: LDK's generic parts filled in with the
//! remote signer, the JSON-RPC chain, the SQLite store and the wallet.

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
use lightning::util::sweep::OutputSweeperSync;
use lightning_net_tokio::SocketDescriptor;

use crate::chain::ChainRpc;
use crate::fee_bump::FeeBumpWallet;
use crate::logger::TracingLogger;
use crate::signer_client::{RemoteChannelSigner, RemoteKeysManager};
use crate::store::SqliteStore;

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
