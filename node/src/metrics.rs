//! The node's metrics and readiness for `--metrics-listen` (served by
//! `lnpd_telemetry`): gauges read from the running node at each scrape;
//! counters (payments, signer round trips) are recorded where they happen
//! (events.rs, signer_client/connection.rs).

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

/// The running node, as the metrics endpoint sees it.
pub struct NodeProbe(pub Arc<Node>);

impl lnpd_telemetry::Probe for NodeProbe {
    fn refresh(&self) {
        let n = &self.0;
        metrics::gauge!("lnpd_node_peers").set(n.peer_manager.list_peers().len() as f64);
        let (mut usable, mut ready, mut pending) = (0u32, 0u32, 0u32);
        for c in n.channel_manager.list_channels() {
            if c.is_usable {
                usable += 1;
            } else if c.is_channel_ready {
                ready += 1;
            } else {
                pending += 1;
            }
        }
        for (state, count) in [
            ("usable", usable),
            ("peer_offline", ready),
            ("pending", pending),
        ] {
            metrics::gauge!("lnpd_node_channels", "state" => state).set(f64::from(count));
        }
        metrics::gauge!("lnpd_node_signer_available").set(if n.signer.is_connected() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("lnpd_node_signer_pending_requests").set(n.signer.unanswered() as f64);
        let height = n.channel_manager.current_best_block().height;
        metrics::gauge!("lnpd_node_chain_height").set(f64::from(height));
        // The backend's tip: how far behind the node is (left out when the
        // backend does not answer in time).
        let chain = n.chain.clone();
        let tip = tokio::runtime::Handle::try_current().ok().and_then(|h| {
            h.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), chain.best_block())
                    .await
                    .ok()?
                    .ok()
            })
        });
        if let Some((_, tip)) = tip {
            metrics::gauge!("lnpd_node_chain_backend_height").set(f64::from(tip));
            metrics::gauge!("lnpd_node_chain_lag_blocks")
                .set(f64::from(tip.saturating_sub(height)));
        }
    }

    /// Ready when the signer answers a ping now (a real round trip, not the
    /// last call's outcome).
    fn ready(&self) -> Result<String, String> {
        let ping = lnpd_proto::signer::request::Body::Ping(lnpd_proto::signer::PingRequest {
            nonce: vec![],
        });
        match self.0.signer.call(ping, Duration::from_secs(3)) {
            Ok(_) => Ok(format!(
                "the signer at {} answers",
                self.0.signer.endpoint()
            )),
            Err(e) => Err(format!(
                "the signer at {} does not answer: {e}",
                self.0.signer.endpoint()
            )),
        }
    }
}
