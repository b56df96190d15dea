//! The parts of LDK an lnpd node is made of, built one way for the node
//! (`startup`) and the payments benchmark alike: lnpd's configuration, the
//! routers, the chain monitor and a new channel manager.

use std::sync::{Arc, RwLock};

use bitcoin::Network;
use lightning::chain::chaininterface::{BroadcasterInterface, FeeEstimator};
use lightning::chain::{chainmonitor, BestBlock, Filter};
use lightning::ln::channelmanager::{self, ChainParameters};
use lightning::onion_message::messenger::DefaultMessageRouter;
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::ProbabilisticScoringFeeParameters;
use lightning::sign::{EntropySource, NodeSigner, SignerProvider};
use lightning::util::config::UserConfig;

use crate::ldk_types::{
    ChainMonitorOf, ChannelManagerOf, Graph, MessageRouterOf, RouterOf, Scorer,
};
use crate::logger::TracingLogger;
use crate::store::SqliteStore;

/// What lnpd asks of keys: LDK's three key traits.
pub trait Keys: EntropySource + NodeSigner + SignerProvider + Send + Sync + 'static {}
impl<T: EntropySource + NodeSigner + SignerProvider + Send + Sync + 'static> Keys for T {}

/// What lnpd asks of a chain: broadcasting and fee estimates.
pub trait Chain: BroadcasterInterface + FeeEstimator + Send + Sync + 'static {}
impl<T: BroadcasterInterface + FeeEstimator + Send + Sync + 'static> Chain for T {}

/// lnpd's LDK configuration.
pub fn user_config() -> UserConfig {
    let mut config = UserConfig::default();
    config
        .channel_handshake_config
        .negotiate_anchors_zero_fee_htlc_tx = true;
    config.channel_handshake_config.announce_for_forwarding = false;
    // Channels are unannounced: forwarding over them is what a routing
    // node of private channels (and the A->B->C line) needs.
    config.accept_forwards_to_priv_channels = true;
    // LDK only accepts inbound anchor channels by hand (see OpenChannelRequest).
    config.manually_accept_inbound_channels = true;
    config
}

/// The payment router over `graph` and `scorer`, and the onion message router.
pub fn routers<K: Keys>(
    graph: &Arc<Graph>,
    scorer: &Arc<RwLock<Scorer>>,
    keys: &Arc<K>,
) -> (Arc<RouterOf<K>>, Arc<MessageRouterOf<K>>) {
    let router = Arc::new(DefaultRouter::new(
        graph.clone(),
        Arc::new(TracingLogger),
        keys.clone(),
        scorer.clone(),
        ProbabilisticScoringFeeParameters::default(),
    ));
    let message_router = Arc::new(DefaultMessageRouter::new(graph.clone(), keys.clone()));
    (router, message_router)
}

/// The chain monitor, persisting channel monitors to `store`.
pub fn chain_monitor<K: Keys, C: Chain>(
    chain: &Arc<C>,
    store: Arc<SqliteStore>,
    keys: &Arc<K>,
    filter: Option<Arc<dyn Filter + Send + Sync>>,
) -> Arc<ChainMonitorOf<K, C>> {
    Arc::new(chainmonitor::ChainMonitor::new(
        filter,
        chain.clone(),
        Arc::new(TracingLogger),
        chain.clone(),
        store,
        keys.clone(),
        keys.get_peer_storage_key(),
    ))
}

/// The channel manager of a node without channels yet.
#[allow(clippy::too_many_arguments)]
pub fn new_channel_manager<K: Keys, C: Chain>(
    chain: &Arc<C>,
    monitor: &Arc<ChainMonitorOf<K, C>>,
    (router, message_router): (Arc<RouterOf<K>>, Arc<MessageRouterOf<K>>),
    keys: &Arc<K>,
    config: UserConfig,
    network: Network,
    best_block: BestBlock,
    now_secs: u32,
) -> ChannelManagerOf<K, C> {
    channelmanager::ChannelManager::new(
        chain.clone(),
        monitor.clone(),
        chain.clone(),
        router,
        message_router,
        Arc::new(TracingLogger),
        keys.clone(),
        keys.clone(),
        keys.clone(),
        config,
        ChainParameters {
            network,
            best_block,
        },
        now_secs,
    )
}
