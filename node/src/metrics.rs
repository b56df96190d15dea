//! The node's metrics and readiness for `--metrics-listen` (served by
//! `lnpd_telemetry`): gauges read from the running node at each scrape;
//! counters (payments, signer round trips) are recorded where they happen
//! (events.rs, signer_client/connection.rs).

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

/// The running node, as the metrics endpoint sees it.
pub struct NodeProbe {
    node: Arc<Node>,
    /// The last readiness answer and when: one ping per [`READY_FOR`] at
    /// most, by one scrape at a time (a flood of health checks cannot
    /// queue pings ahead of the node's own requests).
    last: std::sync::Mutex<Option<(std::time::Instant, Result<String, String>)>>,
}

/// How long a readiness answer is reused.
const READY_FOR: Duration = Duration::from_secs(2);

impl NodeProbe {
    /// The probe of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        NodeProbe {
            node,
            last: std::sync::Mutex::new(None),
        }
    }
}

impl lnpd_telemetry::Probe for NodeProbe {
    fn refresh(&self) {
        let n = &self.node;
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

    /// Ready when the signer answers a ping (a real round trip, at most
    /// [`READY_FOR`] old) and does not refuse for an older state.
    fn ready(&self) -> Result<String, String> {
        let Ok(mut last) = self.last.lock() else {
            return Err("health check lock poisoned".into());
        };
        if let Some((at, r)) = &*last {
            if at.elapsed() < READY_FOR {
                return r.clone();
            }
        }
        let signer = &self.node.signer;
        let ping = lnpd_proto::signer::request::Body::Ping(lnpd_proto::signer::PingRequest {
            nonce: vec![],
        });
        // Within a scraper's patience; a signer slower than this (a device
        // waiting for its button) is reported not ready meanwhile.
        let r = match signer.call(ping, Duration::from_secs(5)) {
            Ok(_) if signer.rollback().is_some() => Err(format!(
                "the signer refuses to sign (state-rollback-detected): {}",
                signer.rollback().unwrap_or_default()
            )),
            Ok(_) => Ok(format!("the signer at {} answers", signer.endpoint())),
            Err(e) => Err(format!(
                "the signer at {} does not answer: {e}",
                signer.endpoint()
            )),
        };
        *last = Some((std::time::Instant::now(), r.clone()));
        r
    }
}
