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

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available yet in this lnpd version (it needs the on-chain wallet)"
    ))
}

#[tonic::async_trait]
impl node_server::Node for AdminService {
    async fn get_info(
        &self,
        _r: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoReply>, Status> {
        let n = &self.node;
        let best = n.channel_manager.current_best_block();
        Ok(Response::new(pb::GetInfoReply {
            node_id: n.node_id().to_string(),
            alias: n.settings.alias.clone(),
            network: n.settings.network.to_core_arg().to_string(),
            block_height: best.height,
            block_hash: best.block_hash.to_string(),
            num_peers: n.peer_manager.list_peers().len() as u32,
            num_channels: n.channel_manager.list_channels().len() as u32,
            signer_endpoint: n.signer.endpoint().to_string(),
            signer_connected: n.signer.is_connected(),
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
        let b = self.node.wallet.balance();
        let channels = self
            .node
            .channel_manager
            .list_channels()
            .into_iter()
            .map(|c| pb::ChannelBalance {
                channel_id: c.channel_id.to_string(),
                outbound_msat: c.outbound_capacity_msat,
                inbound_msat: c.inbound_capacity_msat,
            })
            .collect();
        Ok(Response::new(pb::BalanceReply {
            onchain_confirmed_sat: b.spendable_sat,
            onchain_unconfirmed_sat: b.immature_sat,
            channels,
        }))
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
        _r: Request<pb::OpenChannelRequest>,
    ) -> Result<Response<pb::OpenChannelReply>, Status> {
        Err(not_yet("openchannel"))
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
        _r: Request<pb::CloseChannelRequest>,
    ) -> Result<Response<pb::CloseChannelReply>, Status> {
        Err(not_yet("closechannel"))
    }

    async fn invoice(
        &self,
        _r: Request<pb::InvoiceRequest>,
    ) -> Result<Response<pb::InvoiceReply>, Status> {
        Err(not_yet("invoice"))
    }

    async fn pay(&self, _r: Request<pb::PayRequest>) -> Result<Response<pb::PayReply>, Status> {
        Err(not_yet("pay"))
    }

    async fn payments(
        &self,
        _r: Request<pb::PaymentsRequest>,
    ) -> Result<Response<pb::PaymentsReply>, Status> {
        Err(not_yet("payments"))
    }

    async fn withdraw(
        &self,
        r: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        use std::str::FromStr;
        let r = r.into_inner();
        let network = self.node.settings.network;
        let address = bitcoin::Address::from_str(&r.address)
            .ok()
            .and_then(|a| a.require_network(network).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{:?} is not a {} address",
                    r.address,
                    network.to_core_arg()
                ))
            })?;
        if !r.all && r.amount_sat == 0 {
            return Err(Status::invalid_argument("give an amount, or --all"));
        }
        let feerate = match r.feerate_sat_per_vb {
            Some(f) => f as u64,
            None => {
                use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
                (self
                    .node
                    .chain
                    .get_est_sat_per_1000_weight(ConfirmationTarget::OutputSpendingFee)
                    as u64)
                    .div_ceil(250)
            }
        };
        let psbt = self
            .node
            .wallet
            .build_spend(address.script_pubkey(), r.amount_sat, r.all, feerate.max(1))
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let conn = self.node.signer.clone();
        let signed = tokio::task::spawn_blocking(move || {
            use lnpd_proto::signer::{reply, request, SignPsbtRequest};
            conn.call(
                request::Body::SignPsbt(SignPsbtRequest {
                    psbt: psbt.serialize(),
                }),
                std::time::Duration::from_secs(30),
            )
            .and_then(|r| match r {
                reply::Body::SignPsbt(p) => Ok(p.psbt),
                _ => Err(crate::remote_signer::CallError::Unavailable(
                    "unexpected reply".into(),
                )),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| {
            Status::permission_denied(format!("the signer did not sign the withdrawal: {e}"))
        })?;
        let psbt =
            bitcoin::Psbt::deserialize(&signed).map_err(|e| Status::internal(e.to_string()))?;
        let tx = self
            .node
            .wallet
            .finalize(psbt)
            .map_err(|e| Status::internal(e.to_string()))?;
        let txid = self
            .node
            .chain
            .send_raw_transaction(&tx)
            .await
            .map_err(|e| Status::unavailable(format!("broadcast failed: {e}")))?;
        tracing::info!(%txid, "withdrawal broadcast");
        Ok(Response::new(pb::WithdrawReply {
            txid: txid.to_string(),
        }))
    }
}
