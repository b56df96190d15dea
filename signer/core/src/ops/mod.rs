//! Request handling, one module per kind of request. This file takes a
//! request out of the envelope and hands it to its operation; each
//! operation looks up the state, rebuilds what it signs, runs its
//! validator (`crate::policy`) over the signer's own facts, persists the
//! new state, then signs.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use lnpd_proto::signer::{self as pb, reply, request};
use prost::Message;

use crate::error::SignerError;
use crate::signer::{Signer, MAX_REQUEST_BYTES};
use crate::store::Store;

mod announcement;
mod chain;
mod close;
mod counterparty;
mod force_close;
mod holder;
pub mod invoices;
mod node;
mod setup;
mod shared;
mod spend;
mod wallet;

pub use invoices::{approval_id, PendingApproval};
pub use node::{invoice_hash, NodeKey};

impl<S: Store> Signer<S> {
    /// Handles one typed request. Every refusal is logged here, once, with
    /// its rule id; the state is unchanged whenever an error is returned.
    pub fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        let op = body.name();
        let channel = body.channel_keys_id();
        let result = self
            .refuse_if_rolled_back(&body, channel)
            .and_then(|()| self.dispatch(body));
        if let (Err(e), Some(id)) = (&result, channel) {
            if e.rule == Some(crate::RuleId::StateRollbackDetected)
                && self.rollback.is_none()
                && self.rolled_back_channels.insert(id)
            {
                tracing::error!(
                    rule = crate::RuleId::StateRollbackDetected.as_str(),
                    "channel {id} is ahead of the signer's record: the signer's state is older than \
                     what it signed for this channel. Nothing more is signed for it until restart. \
                     Restore the latest copy of the signer's state; if it is lost, have the peer close \
                     the channel (its commitment pays this node's balance to a static key the signer \
                     can sweep) and do not broadcast this node's own commitment (it may be revoked)"
                );
            }
        }
        if let Err(e) = &result {
            match e.rule {
                Some(rule) => tracing::warn!(rule = rule.as_str(), op, "refused: {}", e.message),
                None => tracing::info!(kind = ?e.kind, op, "request failed: {}", e.message),
            }
        }
        result
    }

    /// Refuses what a state known to be older than one acknowledged must
    /// not answer: everything but `Ping` and `Info` when the whole state is
    /// older, and, for a channel found ahead of its record, everything but
    /// its public keys and points.
    fn refuse_if_rolled_back(
        &self,
        body: &request::Body,
        channel: Option<crate::ChannelKeysId>,
    ) -> Result<(), SignerError> {
        use request::Body as Q;
        let rule = crate::RuleId::StateRollbackDetected;
        if let Some(why) = &self.rollback {
            if !matches!(body, Q::Ping(_) | Q::Info(_)) {
                return Err(SignerError::policy(rule, why.clone()));
            }
        }
        match channel {
            Some(id)
                if self.rolled_back_channels.contains(&id)
                    && !matches!(body, Q::GetPerCommitmentPoint(_) | Q::GetChannelPublicKeys(_)) =>
            {
                Err(SignerError::policy(
                    rule,
                    format!(
                        "channel {id} was found ahead of the signer's record (an older copy of the state): \
                         nothing is signed for it until the latest state is restored"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    fn dispatch(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        use reply::Body as A;
        use request::Body as Q;
        Ok(match body {
            Q::Ping(r) => A::Ping(pb::PingReply { nonce: r.nonce }),
            Q::Info(r) => {
                // A node that saw a later state than this one: the answer
                // says so (`rollback`), and nothing is signed from now on.
                let _ = self.check_acknowledged(r.seen_state_counter, "the node");
                // The operator's acceptance of an older state covers the
                // state as found at start and the node's first greeting.
                self.accept_older = false;
                A::Info(self.info(&r)?)
            }
            Q::GetNodeId(r) => A::GetNodeId(self.get_node_id(&r)?),
            Q::Ecdh(r) => A::Ecdh(self.ecdh(&r)?),
            Q::SignInvoice(r) => A::RecoverableSignature(self.sign_invoice(&r)?),
            Q::SignBolt12Invoice(r) => A::SchnorrSignature(self.sign_bolt12_invoice(&r)?),
            Q::SignGossip(r) => A::Signature(self.sign_gossip(&r)?),
            Q::SignMessage(r) => A::SignMessage(self.sign_message(&r)),
            Q::GetNodeKeys(_) => A::GetNodeKeys(self.get_node_keys()),
            Q::NewChannelKeysId(r) => A::NewChannelKeysId(self.new_channel_keys_id(&r)?),
            Q::GetChannelPublicKeys(r) => A::ChannelPublicKeys(self.get_channel_public_keys(&r)?),
            Q::SetupChannel(r) => A::SetupChannel(self.setup_channel(r)?),
            Q::GetDestinationScript(r) => A::Script(self.get_destination_script(&r)?),
            Q::GetShutdownScript(_) => A::Script(self.get_shutdown_script()?),
            Q::GetPerCommitmentPoint(r) => {
                A::GetPerCommitmentPoint(self.get_per_commitment_point(&r)?)
            }
            Q::ReleaseCommitmentSecret(r) => {
                A::ReleaseCommitmentSecret(self.release_commitment_secret(&r)?)
            }
            Q::ValidateHolderCommitment(r) => {
                A::ValidateHolderCommitment(self.validate_holder_commitment(r)?)
            }
            Q::ValidateCounterpartyRevocation(r) => {
                A::ValidateCounterpartyRevocation(self.validate_counterparty_revocation(&r)?)
            }
            Q::SignCounterpartyCommitment(r) => {
                A::SignCounterpartyCommitment(self.sign_counterparty_commitment(&r)?)
            }
            Q::SignHolderCommitment(r) => A::Signature(self.sign_holder_commitment(&r)?),
            Q::SignHolderHtlcTransaction(r) => A::Signature(self.sign_holder_htlc_transaction(&r)?),
            Q::SignCounterpartyHtlcSweep(r) => A::Signature(self.sign_counterparty_htlc_sweep(&r)?),
            Q::SignJusticeRevokedOutput(r) => A::Signature(self.sign_justice_revoked_output(&r)?),
            Q::SignJusticeRevokedHtlc(r) => A::Signature(self.sign_justice_revoked_htlc(&r)?),
            Q::SignClosingTransaction(r) => A::Signature(self.sign_closing_transaction(&r)?),
            Q::SignChannelAnnouncement(r) => {
                A::SignChannelAnnouncement(self.sign_channel_announcement(&r)?)
            }
            Q::SignHolderAnchorInput(r) => A::Signature(self.sign_holder_anchor_input(&r)?),
            Q::SpendSpendableOutputs(r) => {
                A::SpendSpendableOutputs(self.spend_spendable_outputs(&r)?)
            }
            Q::GetWalletDescriptor(_) => A::GetWalletDescriptor(self.wallet_descriptor()),
            Q::SignPsbt(r) => A::SignPsbt(self.sign_psbt(&r)?),
            Q::ShowInvoice(r) => A::ShowInvoice(self.show_invoice(&r)?),
            Q::UpdateChain(r) => A::UpdateChain(self.update_chain(&r)?),
            Q::ProveFunding(r) => A::ProveFunding(self.prove_funding(&r)?),
        })
    }

    /// Handles an envelope; errors become an `Error` reply.
    pub fn handle_request(&mut self, req: pb::Request) -> pb::Reply {
        let result = match req.body {
            Some(b) => self.handle(b),
            None => Err(SignerError::invalid("empty request")),
        };
        pb::Reply::from_result(req.id, result)
    }

    /// Decodes an encoded `Request`, handles it and encodes the `Reply`
    /// (the USB wire's entry point). Never panics on any input.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        let reply = if bytes.len() > MAX_REQUEST_BYTES {
            pb::Reply::from_result(0, Err(SignerError::invalid("request too large")))
        } else {
            match pb::Request::decode(bytes) {
                Ok(req) => self.handle_request(req),
                Err(_) => pb::Reply::from_result(
                    0,
                    Err(SignerError::invalid(
                        "malformed request: not a valid protobuf Request",
                    )),
                ),
            }
        };
        reply.encode_to_vec()
    }

    /// What this signer is; a node of another protocol version is told so.
    fn info(&self, r: &pb::InfoRequest) -> Result<pb::InfoReply, SignerError> {
        if r.protocol_version != lnpd_proto::SIGNER_PROTOCOL_VERSION {
            return Err(SignerError::precondition(format!(
                "this signer speaks protocol version {}, the node {}: run node and signer of the same release",
                lnpd_proto::SIGNER_PROTOCOL_VERSION,
                r.protocol_version
            )));
        }
        Ok(pb::InfoReply {
            protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
            signer_version: env!("CARGO_PKG_VERSION").to_string(),
            network: self.keys.network().to_core_arg().to_string(),
            node_id: self.node_id().serialize().to_vec(),
            capabilities: [
                "static_remote_key",
                "anchors_zero_fee_htlc_tx",
                "psbt",
                "bolt12",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            channel_count: self.channels.values().filter(|c| c.setup.is_some()).count() as u32,
            state_counter: self.state_counter,
            rollback: self.rollback.clone().unwrap_or_default(),
        })
    }
}
