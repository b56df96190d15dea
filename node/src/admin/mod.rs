//! The admin API (`node.proto`), for `lnpd-cli`. Authenticated by a token
//! kept in the data directory (`admin.token`, owner-only), sent as
//! `authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bitcoin::secp256k1::PublicKey;
use lnpd_proto::node::{self as pb, node_server};
use tonic::{Request, Response, Status};

use crate::node::Node;

mod wallet;

/// Reads the admin token, creating it (random, mode 0600) on first use.
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok(t.trim().to_string());
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = hex::encode(b);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    opts.open(path)?.write_all(token.as_bytes())?;
    Ok(token)
}

/// Checks the bearer token of every admin request.
pub fn auth_interceptor(
    token: String,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected = format!("Bearer {token}");
    move |req: Request<()>| {
        let ok = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(expected.as_str());
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong admin token (see admin.token in the node's data directory)",
            ))
        }
    }
}

/// Longest the node waits for the signer's operator to answer an approval
/// request; the signer's own timeout (10 minutes unless configured) is
/// meant to answer first.
const APPROVAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Shows the invoice to the signer before paying it: its payment controls
/// refuse here, before an HTLC could get stuck on a refused signature. A
/// payment above the signer's approval threshold waits (showing the
/// invoice again every second) until the operator approves or denies it.
fn show_invoice_to_signer(node: &Node, bolt11: &str, amount: Option<u64>) -> Result<(), Status> {
    use lnpd_proto::signer::{reply, request, ShowInvoiceRequest};
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        // A hardware signer asks its user before it answers: wait for the
        // button (the bridge gives up after 300 s), not just for a restart.
        let shown = node.signer.call_retrying_each(
            "show invoice",
            request::Body::ShowInvoice(ShowInvoiceRequest {
                bolt11: bolt11.to_string(),
                amount_msat: amount.unwrap_or(0),
            }),
            std::time::Duration::from_secs(330),
            std::time::Duration::from_secs(15),
        );
        let reply = match shown {
            Ok(reply::Body::ShowInvoice(r)) => r,
            Ok(_) => {
                return Err(Status::internal(
                    "the signer answered with the wrong reply type",
                ))
            }
            Err(crate::signer_client::CallError::Refused(e)) => {
                return Err(Status::permission_denied(format!(
                    "payment not started: the signer refuses it{}: {}",
                    e.rule
                        .map(|r| format!(" (rule {})", r.as_str()))
                        .unwrap_or_default(),
                    e.message
                )))
            }
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "payment not started: the signer did not answer within 15 s; \
                     try again once it is up ({e})"
                )))
            }
        };
        if !reply.awaiting_approval {
            if announced {
                tracing::info!("payment {} approved on the signer", reply.approval_id);
            }
            return Ok(());
        }
        if !announced {
            tracing::warn!(
                "payment of {} msat waits for the signer operator's approval: \
                 on the signer, `lnpd-signer approve {}` (or `deny`)",
                reply.amount_msat,
                reply.approval_id
            );
            // Listed meanwhile (`payments`, and `pay`'s progress line).
            if let (Ok(mut p), Ok(hash)) = (
                node.payments.lock(),
                <[u8; 32]>::try_from(reply.payment_hash.as_slice()),
            ) {
                // Never over a payment of that hash under way or done.
                let vacant = p.get(&hash).is_none_or(|r| r.status == "failed");
                if vacant {
                    p.insert(
                        hash,
                        crate::node::PaymentRecord {
                            direction: "outbound",
                            status: "awaiting_approval".into(),
                            amount_msat: reply.amount_msat,
                            fee_msat: 0,
                            preimage: None,
                            reason: Some(format!(
                            "waits for the signer operator: `lnpd-signer approve {}` (or `deny`)",
                            reply.approval_id
                        )),
                        },
                    );
                }
            }
            announced = true;
        }
        if started.elapsed() > APPROVAL_PATIENCE {
            return Err(Status::deadline_exceeded(format!(
                "payment not started: the signer's operator did not answer approval request {} \
                 within {} s",
                reply.approval_id,
                APPROVAL_PATIENCE.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The admin service.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

#[tonic::async_trait]
impl node_server::Node for AdminService {
    async fn get_info(
        &self,
        _r: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoReply>, Status> {
        let n = &self.node;
        let best = n.channel_manager.current_best_block();
        let tip = tokio::time::timeout(std::time::Duration::from_secs(5), n.chain.best_block())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map_or(0, |(_, h)| h);
        Ok(Response::new(pb::GetInfoReply {
            chain_tip_height: tip,
            node_id: n.node_id().to_string(),
            alias: n.settings.alias.clone(),
            network: n.settings.network.to_core_arg().to_string(),
            block_height: best.height,
            block_hash: best.block_hash.to_string(),
            num_peers: n.peer_manager.list_peers().len() as u32,
            num_channels: n.channel_manager.list_channels().len() as u32,
            signer_endpoint: n.signer.endpoint().to_string(),
            signer_connected: n.signer.is_connected(),
            signer_block_height: n
                .signer_chain_height
                .load(std::sync::atomic::Ordering::Relaxed),
            signer_state_counter: n.signer.seen_state_counter(),
            signer_rollback: n.signer.rollback().unwrap_or_default(),
        }))
    }

    async fn new_address(
        &self,
        _r: Request<pb::NewAddressRequest>,
    ) -> Result<Response<pb::NewAddressReply>, Status> {
        let a = self
            .node
            .wallet
            .new_address()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::NewAddressReply {
            address: a.to_string(),
        }))
    }

    async fn balance(
        &self,
        _r: Request<pb::BalanceRequest>,
    ) -> Result<Response<pb::BalanceReply>, Status> {
        Ok(Response::new(self.wallet_balance()))
    }

    async fn connect_peer(
        &self,
        r: Request<pb::ConnectPeerRequest>,
    ) -> Result<Response<pb::ConnectPeerReply>, Status> {
        let r = r.into_inner();
        let node_id: PublicKey = r.node_id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "{:?} is not a node id (66 hex characters)",
                r.node_id
            ))
        })?;
        let addr = match r.address.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(&r.address)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    Status::invalid_argument(format!("{:?} is not a host:port address", r.address))
                })?,
        };
        self.node
            .connect_peer(node_id, addr)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(pb::ConnectPeerReply {}))
    }

    async fn peers(
        &self,
        _r: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersReply>, Status> {
        let peers = self
            .node
            .peer_manager
            .list_peers()
            .into_iter()
            .map(|p| pb::Peer {
                node_id: p.counterparty_node_id.to_string(),
                address: p.socket_address.map(|a| a.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::PeersReply { peers }))
    }

    async fn open_channel(
        &self,
        r: Request<pb::OpenChannelRequest>,
    ) -> Result<Response<pb::OpenChannelReply>, Status> {
        let r = r.into_inner();
        let node_id: PublicKey = r
            .node_id
            .parse()
            .map_err(|_| Status::invalid_argument(format!("{:?} is not a node id", r.node_id)))?;
        if self.node.peer_manager.peer_by_node_id(&node_id).is_none() {
            return Err(Status::failed_precondition(format!(
                "not connected to {node_id}: connect first"
            )));
        }
        if r.push_msat != 0 {
            return Err(Status::invalid_argument(
                "push is not supported: the signer refuses it unless configured (allow_push)",
            ));
        }
        let fee_rate = self
            .fee_rate(
                r.fee_rate_sat_per_vb,
                r.conf_target,
                lightning::chain::chaininterface::ConfirmationTarget::NonAnchorChannelFee,
            )
            .await?;
        let mut config = lightning::util::config::UserConfig::default();
        config
            .channel_handshake_config
            .negotiate_anchors_zero_fee_htlc_tx = true;
        config.channel_handshake_config.announce_for_forwarding = r.announce;
        // Unique: `openchannel --wait` follows the channel by it.
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
        let user_id = u128::from_be_bytes(b);
        self.node.set_funding_fee_rate(user_id, fee_rate);
        let id = self
            .node
            .channel_manager
            .create_channel(node_id, r.amount_sat, 0, user_id, None, Some(config))
            .map_err(|e| {
                self.node.forget_funding_fee_rate(user_id);
                Status::failed_precondition(format!("{e:?}"))
            })?;
        Ok(Response::new(pb::OpenChannelReply {
            channel_id: id.to_string(),
            funding_txid: String::new(),
            user_channel_id: user_id.to_string(),
        }))
    }

    async fn channels(
        &self,
        _r: Request<pb::ChannelsRequest>,
    ) -> Result<Response<pb::ChannelsReply>, Status> {
        let channels = self
            .node
            .channel_manager
            .list_channels()
            .into_iter()
            .map(|c| pb::Channel {
                channel_id: c.channel_id.to_string(),
                counterparty_node_id: c.counterparty.node_id.to_string(),
                funding_txo: c
                    .funding_txo
                    .map(|o| o.into_bitcoin_outpoint().to_string())
                    .unwrap_or_default(),
                capacity_sat: c.channel_value_satoshis,
                outbound_msat: c.outbound_capacity_msat,
                inbound_msat: c.inbound_capacity_msat,
                is_ready: c.is_channel_ready,
                is_usable: c.is_usable,
                feerate_sat_per_kw: c.feerate_sat_per_1000_weight.unwrap_or(0),
                is_outbound: c.is_outbound,
                confirmations: c.confirmations.unwrap_or(0),
                user_channel_id: c.user_channel_id.to_string(),
                confirmations_required: c.confirmations_required.unwrap_or(0),
                short_channel_id: c
                    .short_channel_id
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ChannelsReply { channels }))
    }

    async fn close_channel(
        &self,
        r: Request<pb::CloseChannelRequest>,
    ) -> Result<Response<pb::CloseChannelReply>, Status> {
        let r = r.into_inner();
        let ch = self
            .node
            .channel_manager
            .list_channels()
            .into_iter()
            .find(|c| c.channel_id.to_string() == r.channel_id)
            .ok_or_else(|| Status::not_found(format!("no channel {}", r.channel_id)))?;
        let cm = &self.node.channel_manager;
        let res = if r.force {
            cm.force_close_broadcasting_latest_txn(
                &ch.channel_id,
                &ch.counterparty.node_id,
                "closed by the operator".into(),
            )
        } else {
            cm.close_channel(&ch.channel_id, &ch.counterparty.node_id)
        };
        res.map_err(|e| Status::failed_precondition(format!("{e:?}")))?;
        Ok(Response::new(pb::CloseChannelReply {}))
    }

    async fn invoice(
        &self,
        r: Request<pb::InvoiceRequest>,
    ) -> Result<Response<pb::InvoiceReply>, Status> {
        use lightning::ln::channelmanager::Bolt11InvoiceParameters;
        use lightning_invoice::{Bolt11InvoiceDescription, Description};
        let r = r.into_inner();
        let description = Description::new(r.description)
            .map_err(|e| Status::invalid_argument(format!("description: {e:?}")))?;
        let params = Bolt11InvoiceParameters {
            amount_msats: r.amount_msat,
            description: Bolt11InvoiceDescription::Direct(description),
            invoice_expiry_delta_secs: Some(if r.expiry_secs == 0 {
                3600
            } else {
                r.expiry_secs
            }),
            ..Default::default()
        };
        let node = self.node.clone();
        let invoice =
            tokio::task::spawn_blocking(move || node.channel_manager.create_bolt11_invoice(params))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| {
                    Status::unavailable(format!(
                        "invoice not created (is the signer reachable?): {e:?}"
                    ))
                })?;
        if r.hold {
            use bitcoin::hashes::Hash;
            let hash =
                lightning::types::payment::PaymentHash(invoice.payment_hash().to_byte_array());
            let secret = lightning::types::payment::PaymentSecret(invoice.payment_secret().0);
            let preimage = self
                .node
                .channel_manager
                .get_payment_preimage(hash, secret)
                .map_err(|e| Status::internal(format!("no preimage for the invoice: {e:?}")))?;
            self.node
                .hold_invoice(hash.0, preimage.0)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(Response::new(pb::InvoiceReply {
            invoice: invoice.to_string(),
            payment_hash: invoice.payment_hash().to_string(),
        }))
    }

    async fn settle_invoice(
        &self,
        r: Request<pb::SettleInvoiceRequest>,
    ) -> Result<Response<pb::SettleInvoiceReply>, Status> {
        let hash = parse_hash(&r.into_inner().payment_hash)?;
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.settle_held(hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(hold_status)?;
        Ok(Response::new(pb::SettleInvoiceReply {}))
    }

    async fn cancel_invoice(
        &self,
        r: Request<pb::CancelInvoiceRequest>,
    ) -> Result<Response<pb::CancelInvoiceReply>, Status> {
        let hash = parse_hash(&r.into_inner().payment_hash)?;
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.cancel_held(hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(hold_status)?;
        Ok(Response::new(pb::CancelInvoiceReply {}))
    }

    async fn pay(&self, r: Request<pb::PayRequest>) -> Result<Response<pb::PayReply>, Status> {
        use bitcoin::hashes::Hash;
        use lightning::ln::channelmanager::{PaymentId, Retry};
        use lightning::routing::router::RouteParametersConfig;
        use std::str::FromStr;
        let r = r.into_inner();
        let invoice = lightning_invoice::Bolt11Invoice::from_str(r.invoice.trim())
            .map_err(|e| Status::invalid_argument(format!("not a BOLT 11 invoice: {e}")))?;
        let hash = invoice.payment_hash().to_byte_array();
        let timeout = std::time::Duration::from_secs(if r.timeout_secs == 0 {
            60
        } else {
            r.timeout_secs as u64
        });
        let node = self.node.clone();
        let amount = r.amount_msat;
        let bolt11 = r.invoice.trim().to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(refused) = show_invoice_to_signer(&node, &bolt11, amount) {
                // A payment listed as awaiting approval: now failed, why.
                if let Ok(mut p) = node.payments.lock() {
                    if let Some(rec) = p.get_mut(&hash).filter(|r| r.status == "awaiting_approval")
                    {
                        rec.status = "failed".into();
                        rec.reason = Some(refused.message().to_string());
                    }
                }
                return Err(refused);
            }
            let mut was_awaiting = false;
            if let Ok(mut p) = node.payments.lock() {
                if let Some(rec) = p.get_mut(&hash).filter(|r| r.status == "awaiting_approval") {
                    rec.status = "pending".into();
                    rec.reason = None;
                    was_awaiting = true;
                }
            }
            node.channel_manager
                .pay_for_bolt11_invoice(
                    &invoice,
                    PaymentId(hash),
                    amount,
                    RouteParametersConfig::default(),
                    Retry::Timeout(timeout),
                )
                .map_err(|e| {
                    let why = format!("payment not started: {e:?}");
                    // The record this call made pending: failed, not pending forever.
                    if was_awaiting {
                        if let Ok(mut p) = node.payments.lock() {
                            if let Some(rec) = p.get_mut(&hash) {
                                rec.status = "failed".into();
                                rec.reason = Some(why.clone());
                            }
                        }
                    }
                    Status::failed_precondition(why)
                })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        if let Ok(mut p) = self.node.payments.lock() {
            p.entry(hash).or_insert(crate::node::PaymentRecord {
                direction: "outbound",
                status: "pending".into(),
                amount_msat: amount.unwrap_or(0),
                fee_msat: 0,
                preimage: None,
                reason: None,
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self
                .node
                .payments
                .lock()
                .ok()
                .and_then(|p| p.get(&hash).cloned());
            if let Some(rec) =
                rec.filter(|r| r.status != "pending" && r.status != "awaiting_approval")
            {
                return Ok(Response::new(pb::PayReply {
                    payment_hash: hex::encode(hash),
                    status: rec.status,
                    preimage: rec.preimage.map(hex::encode).unwrap_or_default(),
                    fee_msat: rec.fee_msat,
                    reason: rec.reason.unwrap_or_default(),
                }));
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(Response::new(pb::PayReply {
                    payment_hash: hex::encode(hash),
                    status: "pending".into(),
                    preimage: String::new(),
                    fee_msat: 0,
                    reason: format!(
                        "not settled within {} s; the node goes on trying",
                        timeout.as_secs()
                    ),
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn payments(
        &self,
        _r: Request<pb::PaymentsRequest>,
    ) -> Result<Response<pb::PaymentsReply>, Status> {
        let payments = self
            .node
            .payments
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .iter()
            .map(|(h, p)| pb::Payment {
                payment_hash: hex::encode(h),
                direction: p.direction.into(),
                status: p.status.clone(),
                amount_msat: p.amount_msat,
                fee_msat: p.fee_msat,
                reason: p.reason.clone().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::PaymentsReply { payments }))
    }

    async fn withdraw(
        &self,
        r: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        self.wallet_withdraw(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn transactions(
        &self,
        _r: Request<pb::TransactionsRequest>,
    ) -> Result<Response<pb::TransactionsReply>, Status> {
        Ok(Response::new(self.wallet_transactions()))
    }

    async fn bump_fee(
        &self,
        r: Request<pb::BumpFeeRequest>,
    ) -> Result<Response<pb::BumpFeeReply>, Status> {
        self.wallet_bump_fee(r.into_inner())
            .await
            .map(Response::new)
    }
}

/// A payment hash given in hex.
fn parse_hash(s: &str) -> Result<[u8; 32], Status> {
    hex::decode(s.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("{s:?} is not a payment hash (64 hex digits)"))
        })
}

fn hold_status(e: crate::hold::HoldError) -> Status {
    use crate::hold::HoldError;
    match e {
        HoldError::Unknown(_) => Status::not_found(e.to_string()),
        HoldError::Store(_) => Status::internal(e.to_string()),
    }
}
