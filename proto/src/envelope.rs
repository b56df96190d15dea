//! The request envelope as both sides read it: each request's name, the
//! channel it is about, and which requests may travel in a batch. Every
//! list of requests is here, once (the `match`es are exhaustive: a new
//! request must be placed in each).

use crate::error::SignerError;
use crate::ids::ChannelKeysId;
use crate::signer::request::Body;
use crate::signer::{reply, Reply};

/// Version of the node <-> signer protocol; node and signer must agree.
/// 3: one `Call` rpc carrying the `Request`/`Reply` envelope, errors as
/// `Error` replies on every transport.
pub const SIGNER_PROTOCOL_VERSION: u32 = 3;

/// What a signer daemon answers (`Unavailable`) to every request but
/// `Info` until the node greeted it since it started or became
/// the active replica: the greeting (`Info` with the highest state counter
/// the node saw) comes before any signature, so that a signer restarted on
/// an older state is caught before it signs.
pub const AWAITING_GREETING: &str = "awaiting the node's greeting";

/// Most requests in one `Batch`.
pub const MAX_BATCH: usize = 16;

impl Body {
    /// The operation a request asks for, for logs.
    pub fn name(&self) -> &'static str {
        use Body as Q;
        match self {
            Q::Ping(_) => "ping",
            Q::Info(_) => "info",
            Q::GetNodeId(_) => "get_node_id",
            Q::Ecdh(_) => "ecdh",
            Q::SignInvoice(_) => "sign_invoice",
            Q::SignBolt12Invoice(_) => "sign_bolt12_invoice",
            Q::SignGossip(_) => "sign_gossip",
            Q::SignMessage(_) => "sign_message",
            Q::GetNodeKeys(_) => "get_node_keys",
            Q::NewChannelKeysId(_) => "new_channel_keys_id",
            Q::GetChannelPublicKeys(_) => "get_channel_public_keys",
            Q::SetupChannel(_) => "setup_channel",
            Q::GetDestinationScript(_) => "get_destination_script",
            Q::GetShutdownScript(_) => "get_shutdown_script",
            Q::GetPerCommitmentPoint(_) => "get_per_commitment_point",
            Q::ReleaseCommitmentSecret(_) => "release_commitment_secret",
            Q::ValidateHolderCommitment(_) => "validate_holder_commitment",
            Q::ValidateCounterpartyRevocation(_) => "validate_counterparty_revocation",
            Q::SignCounterpartyCommitment(_) => "sign_counterparty_commitment",
            Q::SignHolderCommitment(_) => "sign_holder_commitment",
            Q::SignHolderHtlcTransaction(_) => "sign_holder_htlc_transaction",
            Q::SignCounterpartyHtlcSweep(_) => "sign_counterparty_htlc_sweep",
            Q::SignJusticeRevokedOutput(_) => "sign_justice_revoked_output",
            Q::SignJusticeRevokedHtlc(_) => "sign_justice_revoked_htlc",
            Q::SignClosingTransaction(_) => "sign_closing_transaction",
            Q::SignChannelAnnouncement(_) => "sign_channel_announcement",
            Q::SignHolderAnchorInput(_) => "sign_holder_anchor_input",
            Q::SpendSpendableOutputs(_) => "spend_spendable_outputs",
            Q::GetWalletDescriptor(_) => "get_wallet_descriptor",
            Q::SignPsbt(_) => "sign_psbt",
            Q::ShowInvoice(_) => "show_invoice",
            Q::UpdateChain(_) => "update_chain",
            Q::ProveFunding(_) => "prove_funding",
        }
    }

    /// The channel a request is about, if any (for the audit log).
    pub fn channel_keys_id(&self) -> Option<ChannelKeysId> {
        use Body as Q;
        let id = match self {
            Q::NewChannelKeysId(_)
            | Q::Ping(_)
            | Q::Info(_)
            | Q::GetNodeId(_)
            | Q::Ecdh(_)
            | Q::SignInvoice(_) => return None,
            Q::SignBolt12Invoice(_)
            | Q::SignGossip(_)
            | Q::SignMessage(_)
            | Q::GetNodeKeys(_)
            | Q::GetShutdownScript(_) => return None,
            Q::SpendSpendableOutputs(_)
            | Q::GetWalletDescriptor(_)
            | Q::SignPsbt(_)
            | Q::ShowInvoice(_)
            | Q::UpdateChain(_) => return None,
            Q::GetChannelPublicKeys(r) => &r.channel_keys_id,
            Q::SetupChannel(r) => &r.channel_keys_id,
            Q::GetDestinationScript(r) => &r.channel_keys_id,
            Q::GetPerCommitmentPoint(r) => &r.channel_keys_id,
            Q::ReleaseCommitmentSecret(r) => &r.channel_keys_id,
            Q::ValidateHolderCommitment(r) => &r.channel_keys_id,
            Q::ValidateCounterpartyRevocation(r) => &r.channel_keys_id,
            Q::SignCounterpartyCommitment(r) => &r.channel_keys_id,
            Q::SignHolderCommitment(r) => &r.channel_keys_id,
            Q::SignHolderHtlcTransaction(r) => &r.channel_keys_id,
            Q::SignCounterpartyHtlcSweep(r) => &r.channel_keys_id,
            Q::SignJusticeRevokedOutput(r) => &r.channel_keys_id,
            Q::SignJusticeRevokedHtlc(r) => &r.channel_keys_id,
            Q::SignClosingTransaction(r) => &r.channel_keys_id,
            Q::SignChannelAnnouncement(r) => &r.channel_keys_id,
            Q::SignHolderAnchorInput(r) => &r.channel_keys_id,
            Q::ProveFunding(r) => &r.channel_keys_id,
        };
        ChannelKeysId::from_slice(id).ok()
    }

    /// Whether the signer answers at once: a key operation or a public
    /// value, with no durable write and no transaction to rebuild. The
    /// node's transport polls for these replies instead of sleeping (see
    /// `busy_poll`); for the others it would only take CPU time from a
    /// signer on the same machine while it writes.
    pub fn quick(&self) -> bool {
        use Body as Q;
        matches!(
            self,
            Q::Ecdh(_)
                | Q::GetPerCommitmentPoint(_)
                | Q::GetNodeId(_)
                | Q::GetChannelPublicKeys(_)
                | Q::SignGossip(_)
                | Q::Ping(_)
        )
    }

    /// Whether the request may be sent in a `Batch` (see `BatchRequest` in
    /// signer.proto): the channel-state requests whose only effect is on
    /// their channel's record.
    pub fn batchable(&self) -> bool {
        use Body as Q;
        match self {
            Q::ValidateCounterpartyRevocation(_)
            | Q::ValidateHolderCommitment(_)
            | Q::SignCounterpartyCommitment(_)
            | Q::ReleaseCommitmentSecret(_)
            | Q::GetPerCommitmentPoint(_)
            | Q::Ping(_) => true,
            Q::Info(_)
            | Q::GetNodeId(_)
            | Q::Ecdh(_)
            | Q::SignInvoice(_)
            | Q::SignBolt12Invoice(_)
            | Q::SignGossip(_)
            | Q::SignMessage(_)
            | Q::GetNodeKeys(_)
            | Q::NewChannelKeysId(_)
            | Q::GetChannelPublicKeys(_)
            | Q::SetupChannel(_)
            | Q::GetDestinationScript(_)
            | Q::GetShutdownScript(_)
            | Q::SignHolderCommitment(_)
            | Q::SignHolderHtlcTransaction(_)
            | Q::SignCounterpartyHtlcSweep(_)
            | Q::SignJusticeRevokedOutput(_)
            | Q::SignJusticeRevokedHtlc(_)
            | Q::SignClosingTransaction(_)
            | Q::SignChannelAnnouncement(_)
            | Q::SignHolderAnchorInput(_)
            | Q::SpendSpendableOutputs(_)
            | Q::GetWalletDescriptor(_)
            | Q::SignPsbt(_)
            | Q::ShowInvoice(_)
            | Q::UpdateChain(_)
            | Q::ProveFunding(_) => false,
        }
    }

    /// Whether the answer depends on no channel's state (such a request may
    /// overtake channel requests the node still holds back).
    pub fn independent_of_channels(&self) -> bool {
        self.node_key_only() || matches!(self, Body::Info(_))
    }

    /// Whether only the node key answers it, reading and writing no state
    /// (ECDH, the node id): it need wait for no other request, at the node
    /// (its own stream) or in the signer (answered beside a write).
    pub fn node_key_only(&self) -> bool {
        matches!(self, Body::Ecdh(_) | Body::GetNodeId(_))
    }
}

impl Reply {
    /// A reply to request `id`: the result, or its error as an `Error` body.
    pub fn from_result(id: u64, result: Result<reply::Body, SignerError>) -> Reply {
        let body = match result {
            Ok(b) => b,
            Err(e) => reply::Body::Error(e.to_wire()),
        };
        Reply {
            id,
            body: Some(body),
            state_counter: 0,
        }
    }

    /// The same reply, saying the signer's state counter after it.
    pub fn with_state_counter(mut self, counter: u64) -> Reply {
        self.state_counter = counter;
        self
    }

    /// The reply's body as a result: an `Error` body is the signer's error.
    pub fn into_result(self) -> Result<reply::Body, SignerError> {
        match self.body {
            Some(reply::Body::Error(e)) => Err(SignerError::from_wire(&e)),
            Some(b) => Ok(b),
            None => Err(SignerError::internal("the signer sent an empty reply")),
        }
    }
}
