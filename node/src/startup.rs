//! Start-up: the signer connection and keys, the chain and store, LDK's
//! parts loaded or created, synced to the chain tip, then the listener
//! and the background tasks.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bitcoin::BlockHash;
use lightning::chain::{BestBlock, Filter, Listen, Watch};
use lightning::events::bump_transaction::sync::{BumpTransactionEventHandlerSync, WalletSync};
use lightning::ln::channelmanager::ChannelManagerReadArgs;
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler};
use lightning::routing::gossip::{NetworkGraph, P2PGossipSync};
use lightning::routing::scoring::{ProbabilisticScorer, ProbabilisticScoringDecayParameters};
use lightning::routing::utxo::UtxoLookup;
use lightning::sign::EntropySource;
use lightning::util::persist::{
    read_channel_monitors, KVStoreSync, NETWORK_GRAPH_PERSISTENCE_KEY,
    OUTPUT_SWEEPER_PERSISTENCE_KEY, OUTPUT_SWEEPER_PERSISTENCE_PRIMARY_NAMESPACE,
    OUTPUT_SWEEPER_PERSISTENCE_SECONDARY_NAMESPACE, SCORER_PERSISTENCE_KEY,
};
use lightning::util::ser::ReadableArgs;
use lightning_block_sync::UnboundedCache;

use crate::chain::ChainRpc;
use crate::chain_watch::ChainWatch;
use crate::fee_bump::FeeBumpWallet;
use crate::ldk_types::{ChainMonitor, ChannelManager, PeerManager, Sweeper};
use crate::logger::TracingLogger;
use crate::node::{fail, now_secs, Node, NodeError, NodeSettings, MANAGER_KEY};
use crate::signer_client::onion_ecdh::PrefetchOnions;
use crate::signer_client::queued::FlushAfterMessages;
use crate::signer_client::{RemoteKeysManager, SignerConnection};
use crate::store::SqliteStore;
use crate::wallet::Wallet;

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
        let signer = match &settings.signer {
            crate::node::SignerEndpoint::Dial(addrs) => {
                SignerConnection::start(addrs, settings.signer_tls.clone())
            }
            crate::node::SignerEndpoint::Accept(listen, allow_from) => {
                SignerConnection::start_inbound(
                    *listen,
                    settings.signer_tls.clone(),
                    allow_from.clone(),
                )
                .and_then(|(conn, bound)| {
                    // For scripts and tests (port 0): where to point
                    // `lnpd-signer run --connect`.
                    std::fs::write(
                        settings.data_dir.join("signer-listen.addr"),
                        bound.to_string(),
                    )?;
                    Ok(conn)
                })
            }
        }
        .map_err(|e| fail("signer client")(e.to_string()))?;
        // The signer's state counter as last seen: a signer restored from
        // an older copy of its state is told so when it is greeted.
        signer.note_seen(crate::node::read_seen_state_counter(&store));
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
        let descriptors = tokio::task::spawn_blocking(move || {
            use lnpd_proto::signer::{reply, request, GetWalletDescriptorRequest};
            match conn.call_retrying(
                "wallet descriptor",
                request::Body::GetWalletDescriptor(GetWalletDescriptorRequest {}),
                Duration::from_secs(30),
            ) {
                Ok(reply::Body::GetWalletDescriptor(d)) => {
                    Ok((d.external_descriptor, d.internal_descriptor))
                }
                Ok(_) => Err("unexpected reply".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|e| fail("wallet descriptor")(e.to_string()))?
        .map_err(fail("wallet descriptor"))?;
        let chain = ChainRpc::new(
            &settings.rpc_url,
            &settings.rpc_user,
            &settings.rpc_password,
            settings.fallback_feerate,
        )
        .map_err(|e| fail("chain backend")(e.to_string()))?;
        let wallet = Arc::new(
            Wallet::open(
                &descriptors.0,
                &descriptors.1,
                settings.network,
                store.clone(),
                &*chain,
            )
            .await
            .map_err(|e| fail("wallet")(e.to_string()))?,
        );
        chain_watch.set_wallet(wallet.clone());
        {
            let wallet = wallet.clone();
            chain.set_broadcast_tap(Arc::new(move |txs| wallet.note_broadcast(txs, None)));
        }
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
        let (router, message_router) = crate::wiring::routers(&graph, &scorer, &keys);
        let chain_monitor: Arc<ChainMonitor> =
            crate::wiring::chain_monitor(&chain, store.clone(), &keys, None);
        let user_config = crate::wiring::user_config();

        let (store2, keys2) = (store.clone(), keys.clone());
        let mut monitors = tokio::task::spawn_blocking(move || {
            read_channel_monitors(store2, keys2.clone(), keys2)
        })
        .await
        .map_err(|e| fail("channel monitors")(e.to_string()))?
        .map_err(|e| fail("channel monitors")(e.to_string()))?;
        // Validations queued when the node stopped go to the signer before
        // LDK runs (it asks for the secrets they release).
        let live: Vec<_> = monitors.iter().map(|(_, m)| m.get_funding_txo()).collect();
        let (store2, conn) = (store.clone(), signer.clone());
        let (_, refused) = tokio::task::spawn_blocking(move || {
            crate::signer_client::queued::replay(&store2, &conn, &live, Duration::from_secs(60))
        })
        .await
        .map_err(|e| fail("queued validations")(e.to_string()))?
        .map_err(fail("queued validations"))?;
        for r in &refused {
            // Before LDK runs: it must not ask the signer for that commitment.
            keys.validations().mark_refused(r.keys_id, r.number);
        }
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
                let cm = crate::wiring::new_channel_manager(
                    &chain,
                    &chain_monitor,
                    (router.clone(), message_router.clone()),
                    &keys,
                    user_config,
                    settings.network,
                    BestBlock::new(tip_hash, tip_height),
                    now_secs() as u32,
                );
                (tip_hash, cm)
            }
        };
        let channel_manager = Arc::new(channel_manager);
        // Coins locked for a funding stay so only while LDK has the channel.
        let live: std::collections::HashSet<u128> = channel_manager
            .list_channels()
            .iter()
            .map(|c| c.user_channel_id)
            .collect();
        wallet
            .reconcile_locks(&live)
            .map_err(|e| fail("wallet")(e.to_string()))?;

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
            let wallet_best = wallet.best_block().map_or(tip_hash, |(h, _)| h);
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
            chan_handler: Arc::new(PrefetchOnions::new(channel_manager.clone(), {
                let keys = keys.clone();
                move |point| keys.ask_onion_ecdh(point)
            })),
            route_handler: gossip.clone(),
            onion_message_handler: IgnoringMessageHandler {},
            custom_message_handler: Arc::new(FlushAfterMessages(signer.clone())),
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
            funding_fee_rates: Default::default(),
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
        // Holder-commitment validations may now go with the signature LDK
        // asks next: their records ride with LDK's monitor writes, and a
        // refusal closes the channel with the previous commitment.
        let weak = Arc::downgrade(&node);
        node.keys.validations().enable(
            node.store.clone(),
            Arc::new(move |r| {
                if let Some(node) = weak.upgrade() {
                    node.close_with_previous_commitment(r);
                }
            }),
        );
        for r in refused {
            let node = node.clone();
            tokio::task::spawn_blocking(move || node.close_with_previous_commitment(r));
        }
        node.spawn_listener(listener);
        node.spawn_chain_poller(tip_hash, tip_height);
        node.start_background_processor();
        node.spawn_signer_watch();
        tracing::info!(node_id = %node.node_id(), "lnpd node up: peers on {listen_addr}, chain at height {tip_height}");
        Ok(node)
    }
}
