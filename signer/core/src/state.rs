//! What the signer remembers, per channel and globally. Encoded with prost
//! (the same encoding as the wire), so the store holds versionable records.

use alloc::vec::Vec;

use lnpd_proto::signer::{CommitmentData, SetupChannelRequest, ValidateHolderCommitmentRequest};
use prost::Message;

use crate::error::SignerError;

/// The latest holder commitment the peer countersigned and we validated.
#[derive(Clone, PartialEq, Message)]
pub struct HolderRecord {
    /// The commitment as rebuilt by the signer.
    #[prost(message, optional, tag = "1")]
    pub commitment: Option<CommitmentData>,
    /// The peer's signature of it (64 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub counterparty_signature: Vec<u8>,
    /// The peer's HTLC transaction signatures, in output order.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub htlc_signatures: Vec<Vec<u8>>,
}

/// Everything the signer keeps about one channel.
#[derive(Clone, PartialEq, Message)]
pub struct ChannelRecord {
    /// The channel keys id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub keys_id: Vec<u8>,
    /// Parameters recorded at set-up; immutable once present.
    #[prost(message, optional, tag = "2")]
    pub setup: Option<SetupChannelRequest>,
    /// Latest validated holder commitment.
    #[prost(message, optional, tag = "3")]
    pub holder: Option<HolderRecord>,
    /// Highest holder commitment number whose secret we released (revoked).
    #[prost(uint64, optional, tag = "4")]
    pub holder_revoked_through: Option<u64>,
    /// Latest counterparty commitment we signed.
    #[prost(message, optional, tag = "5")]
    pub counterparty: Option<CommitmentData>,
    /// The counterparty commitment before it, until the peer revokes it.
    #[prost(message, optional, tag = "6")]
    pub counterparty_previous: Option<CommitmentData>,
    /// The peer's revocation secrets (BOLT 3 compact storage, LDK encoding).
    #[prost(bytes = "vec", tag = "7")]
    pub counterparty_secrets: Vec<u8>,
    /// A mutual close was signed: no further commitment is.
    #[prost(bool, tag = "8")]
    pub closing_signed: bool,
    /// A holder commitment validation that arrived before the channel's
    /// parameters (inbound channels); validated at set-up.
    #[prost(message, optional, tag = "9")]
    pub parked_holder_validation: Option<ValidateHolderCommitmentRequest>,
    /// Lowest holder commitment number ever signed for broadcast (force close).
    #[prost(uint64, optional, tag = "10")]
    pub holder_signed_number: Option<u64>,
    /// Whether the signer issued this keys id itself.
    #[prost(bool, tag = "11")]
    pub issued_by_signer: bool,
    /// HTLCs we offered that some live commitment still carries (or whose
    /// settlement is not final), each admitted once by the payment
    /// controls or as a forward.
    #[prost(message, repeated, tag = "12")]
    pub outgoing: Vec<OutgoingHtlc>,
    /// HTLCs the peer offered us that cover forwards on other channels.
    #[prost(message, repeated, tag = "13")]
    pub covering: Vec<CoveringHtlc>,
    /// Net value our side lost to trimmed outputs, over the channel's
    /// life, along our own commitments (sat).
    #[prost(uint64, tag = "14")]
    pub trimmed_loss_holder_sat: u64,
    /// The same along the counterparty's commitments (sat).
    #[prost(uint64, tag = "15")]
    pub trimmed_loss_counterparty_sat: u64,
    /// Txid of the funding transaction the wallet signed (32 bytes; empty
    /// until then): a channel is funded once.
    #[prost(bytes = "vec", tag = "16")]
    pub funding_signed_txid: Vec<u8>,
    /// Where the funding transaction was proven confirmed.
    #[prost(message, optional, tag = "17")]
    pub funding_proof: Option<FundingProof>,
    /// Order in which keys ids were issued (for evicting unused ones).
    #[prost(uint64, tag = "18")]
    pub issued_seq: u64,
    /// `outgoing` holds every HTLC we offered in the live commitments (a
    /// record written before the ledger existed gets it at load).
    #[prost(bool, tag = "19")]
    pub ledger_ready: bool,
}

/// An HTLC we offered (`commitment-*`, payment controls, forwards).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct OutgoingHtlc {
    /// Its payment hash.
    #[prost(bytes = "vec", tag = "1")]
    pub payment_hash: Vec<u8>,
    /// Amount (msat).
    #[prost(uint64, tag = "2")]
    pub amount_msat: u64,
    /// Expiry height.
    #[prost(uint32, tag = "3")]
    pub cltv_expiry: u32,
    /// The channel whose incoming HTLC covers it (keys id), when admitted as
    /// a forward; empty for a payment of our own.
    #[prost(bytes = "vec", tag = "4")]
    pub forward_from: Vec<u8>,
    /// Amount and expiry of that incoming HTLC (same payment hash).
    #[prost(uint64, tag = "5")]
    pub forward_in_amount_msat: u64,
    #[prost(uint32, tag = "6")]
    pub forward_in_cltv_expiry: u32,
    /// The node showed its preimage: it is paid, not failed.
    #[prost(bool, tag = "7")]
    pub settled: bool,
}

/// An HTLC the peer offered us, and how much of it forwards already use.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct CoveringHtlc {
    /// Its payment hash.
    #[prost(bytes = "vec", tag = "1")]
    pub payment_hash: Vec<u8>,
    /// Amount (msat).
    #[prost(uint64, tag = "2")]
    pub amount_msat: u64,
    /// Expiry height.
    #[prost(uint32, tag = "3")]
    pub cltv_expiry: u32,
    /// Value of outgoing forwards it covers (msat), at most its amount.
    #[prost(uint64, tag = "4")]
    pub covered_msat: u64,
    /// A forward it covers was paid out: it must be paid to us, not failed.
    #[prost(bool, tag = "5")]
    pub claimable: bool,
}

/// The block a channel's funding transaction was proven in.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct FundingProof {
    /// Its height.
    #[prost(uint32, tag = "1")]
    pub height: u32,
    /// Its hash (32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub block_hash: Vec<u8>,
}

impl ChannelRecord {
    /// A fresh record for a keys id.
    pub fn new(keys_id: &[u8; 32], issued_by_signer: bool) -> Self {
        ChannelRecord {
            keys_id: keys_id.to_vec(),
            issued_by_signer,
            ..Default::default()
        }
    }

    /// Number of the latest validated holder commitment.
    pub fn holder_number(&self) -> Option<u64> {
        self.holder
            .as_ref()
            .and_then(|h| h.commitment.as_ref())
            .map(|c| c.commitment_number)
    }

    /// Number of the latest signed counterparty commitment.
    pub fn counterparty_number(&self) -> Option<u64> {
        self.counterparty.as_ref().map(|c| c.commitment_number)
    }

    /// Encodes for the store.
    pub fn encode_record(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a stored record.
    pub fn decode_record(bytes: &[u8]) -> Result<Self, SignerError> {
        Self::decode(bytes).map_err(|_| SignerError::internal("corrupt channel record in store"))
    }
}

/// Signer-wide counters.
#[derive(Clone, PartialEq, Message)]
pub struct MetaRecord {
    /// Channel keys ids issued so far.
    #[prost(uint64, tag = "1")]
    pub keys_ids_issued: u64,
    /// Next unused index on the wallet's internal (change) chain.
    #[prost(uint32, tag = "2")]
    pub next_internal_index: u32,
    /// Our own payments within the velocity window.
    #[prost(message, repeated, tag = "3")]
    pub recent_payments: Vec<RecentPayment>,
    /// Invoices the node showed before paying them, until they expire.
    #[prost(message, repeated, tag = "4")]
    pub shown_invoices: Vec<ShownInvoice>,
    /// Height of `chain_headers[0]`.
    #[prost(uint32, tag = "5")]
    pub chain_first_height: u32,
    /// The most recent block headers the node fed (80 bytes each), oldest
    /// first; empty until the first `UpdateChain`.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub chain_headers: Vec<Vec<u8>>,
    /// Hosts paired with a hardware signer (33-byte keys).
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub paired_hosts: Vec<Vec<u8>>,
    /// Allow-list entries kept with the state (a hardware signer's, each
    /// confirmed on its button): output scripts, then payee node ids.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub allowed_scripts: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub allowed_payees: Vec<Vec<u8>>,
    /// The header that starts the retarget period of the tip (80 bytes),
    /// kept once it leaves `chain_headers`: exact retargets need its time.
    #[prost(bytes = "vec", tag = "10")]
    pub chain_period_header: Vec<u8>,
    /// Height of `chain_period_header`.
    #[prost(uint32, tag = "11")]
    pub chain_period_height: u32,
    /// Fees of the wallet transactions signed within the rolling window
    /// (`onchain-fee-range`'s budget).
    #[prost(message, repeated, tag = "12")]
    pub recent_fees: Vec<RecentPayment>,
}

/// An invoice the node is about to pay (`payment-invoiced`).
#[derive(Clone, PartialEq, Message)]
pub struct ShownInvoice {
    /// Its payment hash.
    #[prost(bytes = "vec", tag = "1")]
    pub payment_hash: Vec<u8>,
    /// The amount it asks (msat).
    #[prost(uint64, tag = "2")]
    pub amount_msat: u64,
    /// Unix time it expires.
    #[prost(uint64, tag = "3")]
    pub expires_at: u64,
    /// The payee's node id.
    #[prost(bytes = "vec", tag = "4")]
    pub payee: Vec<u8>,
    /// Where the operator's approval stands (`payment-approval`).
    #[prost(enumeration = "Approval", tag = "5")]
    pub approval: i32,
    /// Unix time the invoice was first shown.
    #[prost(uint64, tag = "6")]
    pub shown_at: u64,
    /// What HTLCs for it that were settled paid in total (msat): with the
    /// ones pending, at most the amount plus the allowance.
    #[prost(uint64, tag = "7")]
    pub paid_msat: u64,
}

/// The operator's approval of a payment above the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Approval {
    /// Below the threshold: no approval needed.
    NotNeeded = 0,
    /// Waiting for the operator.
    Pending = 1,
    /// The operator approved it.
    Approved = 2,
}

/// One outgoing payment, for `payment-velocity`.
#[derive(Clone, PartialEq, Message)]
pub struct RecentPayment {
    /// When it was signed (unix seconds, the daemon's clock).
    #[prost(uint64, tag = "1")]
    pub at: u64,
    /// Amount (sat).
    #[prost(uint64, tag = "2")]
    pub sat: u64,
}

impl MetaRecord {
    /// Decodes a stored record.
    pub fn decode_record(bytes: &[u8]) -> Result<Self, SignerError> {
        Self::decode(bytes).map_err(|_| SignerError::internal("corrupt meta record in store"))
    }
}
