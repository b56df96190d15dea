//! What the signer remembers, per channel and globally: records of their
//! own, apart from the wire's messages (a protocol change is not a storage
//! migration), encoded with prost. The store carries a schema version
//! ([`SCHEMA_VERSION`], in the meta record); `migrate` brings an older
//! store up to it at start, in one durable write.
//!
//! Version 0 (releases up to protocol 2) persisted the wire's
//! `SetupChannelRequest`, `CommitmentData` and `ValidateHolderCommitmentRequest`
//! inside the records; the version 1 records below keep their field numbers
//! and types, so version 0 bytes decode as version 1 records, and from here
//! on the two evolve apart.

use alloc::vec::Vec;

use bitcoin::hashes::Hash;
use lightning::ln::chan_utils::{ChannelPublicKeys, HTLCOutputInCommitment};
use lightning::types::payment::PaymentHash;
use lnpd_proto::ldk::{channel_keys_from, parse_32};
use lnpd_proto::signer as pb;
use prost::Message;

use crate::error::SignerError;

/// The schema version this release writes; a store of a later one is
/// refused (it was written by a newer release).
pub const SCHEMA_VERSION: u32 = 1;

/// The kind of channel (its commitment format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ChannelKind {
    /// Not said (refused at set-up).
    Unspecified = 0,
    /// `option_static_remotekey`, no anchors.
    StaticRemoteKey = 1,
    /// Anchors with zero-fee HTLC transactions.
    AnchorsZeroFeeHtlcTx = 2,
}

/// Which way an HTLC goes, from the broadcaster of its commitment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum HtlcSide {
    /// Offered by the broadcaster.
    Offered = 0,
    /// Received by the broadcaster.
    Received = 1,
}

/// An outpoint as recorded.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct OutPointRecord {
    /// 32 bytes, internal byte order.
    #[prost(bytes = "vec", tag = "1")]
    pub txid: Vec<u8>,
    /// Output index.
    #[prost(uint32, tag = "2")]
    pub vout: u32,
}

/// A channel party's public keys as recorded (33 bytes each).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct KeysRecord {
    /// The funding key.
    #[prost(bytes = "vec", tag = "1")]
    pub funding_pubkey: Vec<u8>,
    /// The revocation basepoint.
    #[prost(bytes = "vec", tag = "2")]
    pub revocation_basepoint: Vec<u8>,
    /// The payment point (static remote key).
    #[prost(bytes = "vec", tag = "3")]
    pub payment_point: Vec<u8>,
    /// The delayed payment basepoint.
    #[prost(bytes = "vec", tag = "4")]
    pub delayed_payment_basepoint: Vec<u8>,
    /// The HTLC basepoint.
    #[prost(bytes = "vec", tag = "5")]
    pub htlc_basepoint: Vec<u8>,
}

/// A channel's parameters, recorded at set-up and never changed after.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SetupRecord {
    /// The channel keys id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub channel_keys_id: Vec<u8>,
    /// We funded the channel.
    #[prost(bool, tag = "2")]
    pub is_outbound: bool,
    /// The channel value.
    #[prost(uint64, tag = "3")]
    pub channel_value_sat: u64,
    /// What the funder pushed to the fundee at open.
    #[prost(uint64, tag = "4")]
    pub push_msat: u64,
    /// The funding output.
    #[prost(message, optional, tag = "5")]
    pub funding_outpoint: Option<OutPointRecord>,
    /// The channel kind (`ChannelKind`).
    #[prost(enumeration = "ChannelKind", tag = "6")]
    pub channel_type: i32,
    /// to_self_delay we selected (on the counterparty's commitment).
    #[prost(uint32, tag = "7")]
    pub holder_selected_contest_delay: u32,
    /// to_self_delay the counterparty selected (on ours).
    #[prost(uint32, tag = "8")]
    pub counterparty_selected_contest_delay: u32,
    /// Our dust limit.
    #[prost(uint64, tag = "9")]
    pub holder_dust_limit_sat: u64,
    /// The counterparty's dust limit.
    #[prost(uint64, tag = "10")]
    pub counterparty_dust_limit_sat: u64,
    /// The counterparty's channel public keys.
    #[prost(message, optional, tag = "11")]
    pub counterparty_keys: Option<KeysRecord>,
    /// The upfront shutdown script the counterparty committed to, if any.
    #[prost(bytes = "vec", tag = "12")]
    pub counterparty_shutdown_script: Vec<u8>,
    /// Our upfront shutdown script, if any.
    #[prost(bytes = "vec", tag = "13")]
    pub holder_shutdown_script: Vec<u8>,
}

/// An HTLC of a commitment as recorded.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct HtlcRecord {
    /// Offered or received (`HtlcSide`).
    #[prost(enumeration = "HtlcSide", tag = "1")]
    pub direction: i32,
    /// Amount.
    #[prost(uint64, tag = "2")]
    pub amount_msat: u64,
    /// Expiry height.
    #[prost(uint32, tag = "3")]
    pub cltv_expiry: u32,
    /// Payment hash (32 bytes).
    #[prost(bytes = "vec", tag = "4")]
    pub payment_hash: Vec<u8>,
}

/// What a commitment was built from, as the signer validated or signed it.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct CommitmentRecord {
    /// Counting up from 0.
    #[prost(uint64, tag = "1")]
    pub commitment_number: u64,
    /// Feerate (sat per 1000 weight).
    #[prost(uint32, tag = "2")]
    pub feerate_per_kw: u32,
    /// The broadcaster's main output after fees and anchors (0 when trimmed).
    #[prost(uint64, tag = "3")]
    pub to_broadcaster_value_sat: u64,
    /// The countersignatory's main output (0 when trimmed).
    #[prost(uint64, tag = "4")]
    pub to_countersignatory_value_sat: u64,
    /// Non-dust HTLCs.
    #[prost(message, repeated, tag = "5")]
    pub htlcs: Vec<HtlcRecord>,
    /// The broadcaster's per-commitment point (33 bytes).
    #[prost(bytes = "vec", tag = "6")]
    pub per_commitment_point: Vec<u8>,
    /// The transaction the node built (compared with the signer's rebuild).
    #[prost(bytes = "vec", tag = "7")]
    pub transaction: Vec<u8>,
}

/// A validation of our first commitment that came before the channel's
/// set-up (inbound channels): replayed at set-up.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct ParkedValidation {
    /// The channel keys id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub channel_keys_id: Vec<u8>,
    /// The commitment.
    #[prost(message, optional, tag = "2")]
    pub commitment: Option<CommitmentRecord>,
    /// The peer's signature of it (64 bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub counterparty_signature: Vec<u8>,
    /// The peer's HTLC transaction signatures, in output order.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub htlc_signatures: Vec<Vec<u8>>,
    /// Preimages shown for HTLCs we offered.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub outbound_htlc_preimages: Vec<Vec<u8>>,
    /// Revoke the previous commitment in the same update.
    #[prost(bool, tag = "6")]
    pub release_previous: bool,
}

impl OutPointRecord {
    /// The outpoint.
    pub fn to_outpoint(&self) -> Result<bitcoin::OutPoint, SignerError> {
        Ok(bitcoin::OutPoint {
            txid: bitcoin::Txid::from_byte_array(parse_32("txid", &self.txid)?),
            vout: self.vout,
        })
    }
}

impl SetupRecord {
    /// The record of a set-up request.
    pub fn from_wire(r: &pb::SetupChannelRequest) -> Self {
        let kind = match pb::ChannelType::try_from(r.channel_type) {
            Ok(pb::ChannelType::StaticRemoteKey) => ChannelKind::StaticRemoteKey,
            Ok(pb::ChannelType::AnchorsZeroFeeHtlcTx) => ChannelKind::AnchorsZeroFeeHtlcTx,
            Ok(pb::ChannelType::Unspecified) | Err(_) => ChannelKind::Unspecified,
        };
        SetupRecord {
            channel_keys_id: r.channel_keys_id.clone(),
            is_outbound: r.is_outbound,
            channel_value_sat: r.channel_value_sat,
            push_msat: r.push_msat,
            funding_outpoint: r.funding_outpoint.as_ref().map(|o| OutPointRecord {
                txid: o.txid.clone(),
                vout: o.vout,
            }),
            channel_type: kind as i32,
            holder_selected_contest_delay: r.holder_selected_contest_delay,
            counterparty_selected_contest_delay: r.counterparty_selected_contest_delay,
            holder_dust_limit_sat: r.holder_dust_limit_sat,
            counterparty_dust_limit_sat: r.counterparty_dust_limit_sat,
            counterparty_keys: r.counterparty_keys.as_ref().map(|k| KeysRecord {
                funding_pubkey: k.funding_pubkey.clone(),
                revocation_basepoint: k.revocation_basepoint.clone(),
                payment_point: k.payment_point.clone(),
                delayed_payment_basepoint: k.delayed_payment_basepoint.clone(),
                htlc_basepoint: k.htlc_basepoint.clone(),
            }),
            counterparty_shutdown_script: r.counterparty_shutdown_script.clone(),
            holder_shutdown_script: r.holder_shutdown_script.clone(),
        }
    }

    /// The funding outpoint.
    pub fn funding(&self) -> Result<bitcoin::OutPoint, SignerError> {
        self.funding_outpoint
            .as_ref()
            .ok_or_else(|| SignerError::invalid("missing outpoint"))?
            .to_outpoint()
    }

    /// The counterparty's channel public keys.
    pub fn counterparty_pubkeys(&self) -> Result<ChannelPublicKeys, SignerError> {
        let k = self
            .counterparty_keys
            .as_ref()
            .ok_or_else(|| SignerError::invalid("missing channel public keys"))?;
        channel_keys_from([
            &k.funding_pubkey,
            &k.revocation_basepoint,
            &k.payment_point,
            &k.delayed_payment_basepoint,
            &k.htlc_basepoint,
        ])
    }

    /// Whether the channel uses anchors with zero-fee HTLC transactions.
    pub fn is_anchors(&self) -> bool {
        self.channel_type == ChannelKind::AnchorsZeroFeeHtlcTx as i32
    }
}

impl CommitmentRecord {
    /// The record of a commitment as a request states it.
    pub fn from_wire(c: &pb::CommitmentData) -> Result<Self, SignerError> {
        let htlcs = c
            .htlcs
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let direction = match pb::HtlcDirection::try_from(h.direction) {
                    Ok(pb::HtlcDirection::Offered) => HtlcSide::Offered,
                    Ok(pb::HtlcDirection::Received) => HtlcSide::Received,
                    Err(_) => {
                        return Err(SignerError::invalid(alloc::format!(
                            "htlc {i}: unknown direction"
                        )))
                    }
                };
                Ok(HtlcRecord {
                    direction: direction as i32,
                    amount_msat: h.amount_msat,
                    cltv_expiry: h.cltv_expiry,
                    payment_hash: h.payment_hash.clone(),
                })
            })
            .collect::<Result<Vec<_>, SignerError>>()?;
        Ok(CommitmentRecord {
            commitment_number: c.commitment_number,
            feerate_per_kw: c.feerate_per_kw,
            to_broadcaster_value_sat: c.to_broadcaster_value_sat,
            to_countersignatory_value_sat: c.to_countersignatory_value_sat,
            htlcs,
            per_commitment_point: c.per_commitment_point.clone(),
            transaction: c.transaction.clone(),
        })
    }

    /// Its HTLCs as LDK's (output indexes are the rebuild's to assign).
    pub fn ldk_htlcs(&self) -> Result<Vec<HTLCOutputInCommitment>, SignerError> {
        self.htlcs
            .iter()
            .map(|h| {
                Ok(HTLCOutputInCommitment {
                    offered: h.offered(),
                    amount_msat: h.amount_msat,
                    cltv_expiry: h.cltv_expiry,
                    payment_hash: PaymentHash(parse_32("payment_hash", &h.payment_hash)?),
                    transaction_output_index: None,
                })
            })
            .collect()
    }
}

impl HtlcRecord {
    /// Offered by the broadcaster of its commitment.
    pub fn offered(&self) -> bool {
        self.direction == HtlcSide::Offered as i32
    }
}

impl ParkedValidation {
    /// The record of a validation request (its signatures move in).
    pub fn from_wire(r: pb::ValidateHolderCommitmentRequest) -> Result<Self, SignerError> {
        Ok(ParkedValidation {
            commitment: r
                .commitment
                .as_ref()
                .map(CommitmentRecord::from_wire)
                .transpose()?,
            channel_keys_id: r.channel_keys_id,
            counterparty_signature: r.counterparty_signature,
            htlc_signatures: r.htlc_signatures,
            outbound_htlc_preimages: r.outbound_htlc_preimages,
            release_previous: r.release_previous,
        })
    }
}

/// The latest holder commitment the peer countersigned and we validated.
#[derive(Clone, PartialEq, Message)]
pub struct HolderRecord {
    /// The commitment as rebuilt by the signer.
    #[prost(message, optional, tag = "1")]
    pub commitment: Option<CommitmentRecord>,
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
    pub setup: Option<SetupRecord>,
    /// Latest validated holder commitment.
    #[prost(message, optional, tag = "3")]
    pub holder: Option<HolderRecord>,
    /// Highest holder commitment number whose secret we released (revoked).
    #[prost(uint64, optional, tag = "4")]
    pub holder_revoked_through: Option<u64>,
    /// Latest counterparty commitment we signed.
    #[prost(message, optional, tag = "5")]
    pub counterparty: Option<CommitmentRecord>,
    /// The counterparty commitment before it, until the peer revokes it.
    #[prost(message, optional, tag = "6")]
    pub counterparty_previous: Option<CommitmentRecord>,
    /// The peer's revocation secrets (BOLT 3 compact storage, LDK encoding).
    #[prost(bytes = "vec", tag = "7")]
    pub counterparty_secrets: Vec<u8>,
    /// A mutual close was signed: no further commitment is.
    #[prost(bool, tag = "8")]
    pub closing_signed: bool,
    /// A holder commitment validation that arrived before the channel's
    /// parameters (inbound channels); validated at set-up.
    #[prost(message, optional, tag = "9")]
    pub parked_holder_validation: Option<ParkedValidation>,
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
    /// Amount of that incoming HTLC (same payment hash).
    #[prost(uint64, tag = "5")]
    pub forward_in_amount_msat: u64,
    /// Expiry of that incoming HTLC.
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
    /// Allowed payee node ids (33 bytes).
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
    /// The schema the store is written in (0: before versions were kept).
    #[prost(uint32, tag = "13")]
    pub schema_version: u32,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store, Write};
    use alloc::boxed::Box;
    use alloc::string::ToString;

    fn open(store: MemoryStore) -> Result<crate::Signer<MemoryStore>, SignerError> {
        crate::Signer::new(
            &crate::Seed::new(alloc::vec![1; 32])?,
            bitcoin::Network::Regtest,
            crate::PolicyConfig::default(),
            store,
            Box::new(|| [7u8; 32]),
        )
    }

    #[test]
    fn a_store_of_a_newer_schema_is_refused_and_left_alone() {
        let mut store = MemoryStore::default();
        let meta = MetaRecord {
            schema_version: SCHEMA_VERSION + 1,
            keys_ids_issued: 3,
            ..Default::default()
        };
        store
            .commit(alloc::vec![Write::Meta(meta.encode_to_vec())])
            .unwrap();
        let before = store.load().unwrap();
        let e = open(store.clone()).unwrap_err();
        assert!(e.to_string().contains("written by a newer release"), "{e}");
        assert_eq!(store.load().unwrap(), before);
    }

    #[test]
    fn a_fresh_store_is_not_written_until_the_first_change() {
        let signer = open(MemoryStore::default()).unwrap();
        assert_eq!(
            signer.store().load().unwrap(),
            crate::store::Snapshot::default()
        );
    }

    #[test]
    fn wire_messages_become_records_field_for_field() {
        let wire = pb::CommitmentData {
            commitment_number: 5,
            feerate_per_kw: 253,
            to_broadcaster_value_sat: 1,
            to_countersignatory_value_sat: 2,
            htlcs: alloc::vec![pb::Htlc {
                direction: pb::HtlcDirection::Received as i32,
                amount_msat: 3,
                cltv_expiry: 4,
                payment_hash: alloc::vec![9; 32],
            }],
            per_commitment_point: alloc::vec![2; 33],
            transaction: alloc::vec![1, 2],
        };
        let record = CommitmentRecord::from_wire(&wire).unwrap();
        // Same field numbers as the schema-0 records: the bytes agree.
        assert_eq!(record.encode_to_vec(), wire.encode_to_vec());
        assert!(!record.htlcs[0].offered());
        let parked = pb::ValidateHolderCommitmentRequest {
            channel_keys_id: alloc::vec![4; 32],
            commitment: Some(wire.clone()),
            counterparty_signature: alloc::vec![5; 64],
            htlc_signatures: alloc::vec![alloc::vec![6; 64]],
            outbound_htlc_preimages: alloc::vec![alloc::vec![8; 32]],
            release_previous: true,
        };
        assert_eq!(
            ParkedValidation::from_wire(parked.clone())
                .unwrap()
                .encode_to_vec(),
            parked.encode_to_vec()
        );
        let setup = pb::SetupChannelRequest {
            channel_keys_id: alloc::vec![4; 32],
            is_outbound: true,
            channel_value_sat: 100_000,
            push_msat: 1_000,
            funding_outpoint: Some(pb::OutPoint {
                txid: alloc::vec![3; 32],
                vout: 1,
            }),
            channel_type: pb::ChannelType::AnchorsZeroFeeHtlcTx as i32,
            holder_selected_contest_delay: 144,
            counterparty_selected_contest_delay: 145,
            holder_dust_limit_sat: 354,
            counterparty_dust_limit_sat: 546,
            counterparty_keys: Some(pb::ChannelPublicKeys {
                funding_pubkey: alloc::vec![2; 33],
                revocation_basepoint: alloc::vec![3; 33],
                payment_point: alloc::vec![4; 33],
                delayed_payment_basepoint: alloc::vec![5; 33],
                htlc_basepoint: alloc::vec![6; 33],
            }),
            counterparty_shutdown_script: alloc::vec![0, 20],
            holder_shutdown_script: alloc::vec![0, 32],
        };
        let record = SetupRecord::from_wire(&setup);
        assert_eq!(record.encode_to_vec(), setup.encode_to_vec());
        assert!(record.is_anchors());
        let mut bad = wire;
        bad.htlcs[0].direction = 7;
        assert!(CommitmentRecord::from_wire(&bad).is_err());
    }
}
