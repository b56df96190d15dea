//! The node's background tasks: the peer listener, the chain poller (which
//! also feeds the signer's chain and funding proofs), LDK's background
//! processor and the signer watch.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::BlockHash;
use lightning::events::Event;
use lightning_background_processor::{
    BackgroundProcessor, NO_LIQUIDITY_MANAGER_SYNC, NO_ONION_MESSENGER,
};
use lightning_block_sync::poll::ChainPoller;
use lightning_block_sync::{SpvClient, UnboundedCache};

use crate::node::Node;
use lnpd_proto::ErrorKind;

impl Node {
    pub(crate) fn spawn_listener(self: &Arc<Self>, listener: tokio::net::TcpListener) {
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

    pub(crate) fn spawn_chain_poller(self: &Arc<Self>, tip_hash: BlockHash, tip_height: u32) {
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
                        node.keep_wallet_txs_in_mempool().await;
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

    /// Sends again the wallet's unconfirmed transactions the backend's
    /// mempool lost (a reorganisation, bcoin's `invalidateblock`, a
    /// restarted backend). One missing whose inputs the backend shows spent
    /// elsewhere (double-spent on a new branch) for several tips in a row
    /// is forgotten, its other coins back in the wallet; one whose inputs
    /// are unspent stays (it is valid; `bumpfee` replaces it if stuck).
    /// Channel fundings are wallet spends too.
    async fn keep_wallet_txs_in_mempool(&self) {
        let mut conflicted = std::collections::HashSet::new();
        for tx in self.wallet.unconfirmed_txs() {
            let txid = tx.compute_txid();
            if self.chain.in_mempool(&txid).await {
                continue;
            }
            match self.chain.send_raw_transaction(&tx).await {
                Ok(_) => {
                    tracing::info!(%txid, "wallet transaction missing from the mempool: sent again")
                }
                Err(e) => {
                    tracing::warn!(%txid, "wallet transaction missing from the mempool, not taken again: {e}")
                }
            }
            if self.chain.in_mempool(&txid).await {
                continue;
            }
            let mut spent_elsewhere = false;
            for i in &tx.input {
                // An unanswered check counts as unspent: never forget on doubt.
                if matches!(self.chain.is_unspent(&i.previous_output).await, Ok(false)) {
                    spent_elsewhere = true;
                    break;
                }
            }
            if spent_elsewhere {
                conflicted.insert(txid);
            }
        }
        for txid in self.wallet.note_missing(&conflicted) {
            tracing::warn!(
                %txid,
                tips = crate::wallet::FORGET_AFTER_TIPS,
                "wallet transaction double-spent on the best chain: forgotten, its other coins are spendable again"
            );
        }
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
                Ok(Err(CallError::Refused(ref e))) if e.kind == ErrorKind::FailedPrecondition => {
                    match self.linked_proof(&proof).await {
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
                    }
                }
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
                    if e.refusal()
                        .is_none_or(|e| e.kind != ErrorKind::FailedPrecondition)
                    {
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
    pub(crate) fn start_background_processor(self: &Arc<Self>) {
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
    pub(crate) fn spawn_signer_watch(self: &Arc<Self>) {
        let node = self.clone();
        let answered = Arc::new(tokio::sync::Notify::new());
        let hook = answered.clone();
        self.signer.on_answer(move || hook.notify_one());
        tokio::spawn(async move {
            // Once at the start: an answer may have come before the hook was set.
            let mut first = true;
            const RECONNECT_EVERY: Duration = Duration::from_secs(2);
            const KEEP_COUNTER_EVERY: Duration = Duration::from_secs(1);
            let mut reconnect_due = std::time::Instant::now();
            let mut kept = crate::node::read_seen_state_counter(&node.store);
            let mut keep_due = std::time::Instant::now();
            loop {
                let seen = node.signer.seen_state_counter();
                if seen > kept && keep_due.elapsed() >= KEEP_COUNTER_EVERY {
                    // Behind by a second at most: each channel's commitment
                    // numbers cover the gap (state-rollback-detected).
                    keep_due = std::time::Instant::now();
                    let store = node.store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::node::write_seen_state_counter(&store, seen)
                    })
                    .await;
                    kept = seen;
                }
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
                if reconnect_due.elapsed() >= RECONNECT_EVERY {
                    // Nothing else may call the signer for a while (no
                    // block, no payment): a ping finds a lost, restarted or
                    // failed-over signer (which waits for our greeting), so
                    // that what LDK left pending is retried and a refusal
                    // is reported without waiting for traffic.
                    reconnect_due = std::time::Instant::now();
                    let n = node.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let was = n.signer.is_connected();
                        let ping = lnpd_proto::signer::request::Body::Ping(
                            lnpd_proto::signer::PingRequest { nonce: vec![] },
                        );
                        let mut answered = n.signer.call(ping.clone(), Duration::from_secs(5));
                        if answered.is_err() && n.signer.is_connected() != was {
                            // Lost just now: the next call reconnects.
                            answered = n.signer.call(ping, Duration::from_secs(5));
                        }
                        if answered.is_ok() && !was {
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
}
