//! A holder commitment's validation sent with the signature LDK asks right
//! after it (one signer round trip instead of two; see
//! `docs/plans/validation-with-signature.md`).
//!
//! When the peer's `commitment_signed` brings changes the peer's own
//! commitment does not have yet, LDK validates our new commitment, writes
//! its monitor, then asks for the revocation secret and signs the peer's
//! next commitment. Here the validation is answered at once and queued
//! (deferred on the signer connection); the secret and our next point are
//! "pending" until the signer has judged it; the signature request carries
//! it in one batch. Two things are closed before that may happen:
//!
//! - a node crash between LDK's monitor write and the signer's answer: the
//!   queued request is written in the same SQLite transaction as the
//!   monitor (a [`ValidationJournal`] rider) and sent again at start-up
//!   ([`replay`]) before LDK runs;
//! - a validation the signer refuses after LDK moved to that commitment:
//!   the node broadcasts the previous commitment, the latest the signer
//!   validated, which it still signs (nothing revoked it: the secret is
//!   released only with a successful validation) — [`RefusedValidation`].

use std::sync::{Arc, OnceLock};

use lightning::ln::chan_utils::{ChannelTransactionParameters, HolderCommitmentTransaction};
use lightning::util::ser::{Readable, ReadableArgs, Writeable};
use lnpd_proto::signer as pb;
use prost::Message;

use crate::store::SqliteStore;

/// The store namespace of queued validations, one key per channel.
pub const JOURNAL_NAMESPACE: &str = "lnpd_queued_validation";

/// Keeps queued validations durable no later than LDK's next write.
pub trait ValidationJournal: Send + Sync {
    /// `record` (a [`QueuedValidation`]) must be durable with the next write.
    fn queued(&self, keys_id: &[u8; 32], record: Vec<u8>);
    /// The signer answered: the record may go, with the next write.
    fn answered(&self, keys_id: &[u8; 32]);
}

impl ValidationJournal for SqliteStore {
    fn queued(&self, keys_id: &[u8; 32], record: Vec<u8>) {
        self.ride_along(JOURNAL_NAMESPACE, "", &hex::encode(keys_id), Some(record));
    }

    fn answered(&self, keys_id: &[u8; 32]) {
        self.ride_along(JOURNAL_NAMESPACE, "", &hex::encode(keys_id), None);
    }
}

/// A validation LDK was told succeeded, not yet judged by the signer, with
/// what the node needs if the signer refuses it.
pub struct QueuedValidation {
    /// LDK's index of the commitment being validated.
    pub number: u64,
    /// The request as it goes to the signer.
    pub request: pb::ValidateHolderCommitmentRequest,
    /// The previous holder commitment, the latest the signer validated.
    pub previous: HolderCommitmentTransaction,
    /// The channel's parameters (for the previous commitment's witness).
    pub params: ChannelTransactionParameters,
}

const RECORD_VERSION: u8 = 1;

fn put(out: &mut Vec<u8>, blob: &[u8]) {
    out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    out.extend_from_slice(blob);
}

fn take<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], String> {
    if input.len() < 4 {
        return Err("truncated record".into());
    }
    let (len, rest) = input.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err("truncated record".into());
    }
    let (blob, rest) = rest.split_at(len);
    *input = rest;
    Ok(blob)
}

impl QueuedValidation {
    /// The record written to the journal.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend_from_slice(&self.number.to_be_bytes());
        put(&mut out, &self.request.encode_to_vec());
        put(&mut out, &self.previous.encode());
        put(&mut out, &self.params.encode());
        out
    }

    /// Reads a record written by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (&version, rest) = bytes.split_first().ok_or("empty record")?;
        if version != RECORD_VERSION {
            return Err(format!("unknown record version {version}"));
        }
        if rest.len() < 8 {
            return Err("truncated record".into());
        }
        let (number, mut rest) = rest.split_at(8);
        let number = u64::from_be_bytes(number.try_into().map_err(|_| "truncated record")?);
        let request = pb::ValidateHolderCommitmentRequest::decode(take(&mut rest)?)
            .map_err(|e| format!("request: {e}"))?;
        let previous = HolderCommitmentTransaction::read(&mut take(&mut rest)?)
            .map_err(|e| format!("previous commitment: {e:?}"))?;
        let params = ChannelTransactionParameters::read(&mut take(&mut rest)?, None)
            .map_err(|e| format!("channel parameters: {e:?}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(QueuedValidation {
            number,
            request,
            previous,
            params,
        })
    }
}

/// A queued validation the signer refused: LDK already moved to that
/// commitment, which the signer will never sign; the node must close the
/// channel with `previous`, which it still signs.
pub struct RefusedValidation {
    /// The channel's keys id in the signer.
    pub keys_id: [u8; 32],
    /// LDK's index of the refused commitment.
    pub number: u64,
    /// The latest holder commitment the signer validated.
    pub previous: HolderCommitmentTransaction,
    /// The channel's parameters.
    pub params: ChannelTransactionParameters,
    /// The signer's refusal.
    pub reason: String,
}

/// What the node does with a [`RefusedValidation`] (runs on a thread of
/// its own: it may call the signer).
pub type RefusalHandler = Arc<dyn Fn(RefusedValidation) + Send + Sync>;

/// Whether validations may be queued, and where their records and
/// refusals go. Shared by every channel signer of a node; off (every
/// validation waits for the signer, as LDK asks) until [`Self::enable`].
#[derive(Default)]
pub struct ValidationQueue {
    parts: OnceLock<(Arc<dyn ValidationJournal>, RefusalHandler)>,
    /// Channels (keys id) with a queued validation the signer refused, and
    /// LDK's index of that commitment: nothing more is asked for it (a
    /// signer asked to sign a holder commitment beyond its record takes
    /// its own state for a rolled-back copy and freezes the channel).
    refused: std::sync::Mutex<std::collections::BTreeMap<[u8; 32], u64>>,
}

impl ValidationQueue {
    /// Turns queueing on: records go to `journal`, refusals to `on_refused`.
    pub fn enable(&self, journal: Arc<dyn ValidationJournal>, on_refused: RefusalHandler) {
        let _ = self.parts.set((journal, on_refused));
    }

    /// The journal, if queueing is on.
    pub fn journal(&self) -> Option<&Arc<dyn ValidationJournal>> {
        self.parts.get().map(|(j, _)| j)
    }

    /// Notes that the signer refused holder commitment `number` (LDK's
    /// index) of channel `keys_id`.
    pub fn mark_refused(&self, keys_id: [u8; 32], number: u64) {
        if let Ok(mut r) = self.refused.lock() {
            r.insert(keys_id, number);
        }
    }

    /// LDK's index of the holder commitment of `keys_id` the signer refused.
    pub fn refused_number(&self, keys_id: &[u8; 32]) -> Option<u64> {
        self.refused
            .lock()
            .ok()
            .and_then(|r| r.get(keys_id).copied())
    }

    /// Notes the refusal and hands it to the node, on a thread of its own.
    pub fn refused(&self, refused: RefusedValidation) {
        self.mark_refused(refused.keys_id, refused.number);
        let Some((_, handler)) = self.parts.get() else {
            return;
        };
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("lnpd-refused-validation".into())
            .spawn(move || handler(refused));
        if let Err(e) = spawned {
            tracing::error!("cannot start the recovery of a refused validation: {e}");
        }
    }
}

/// Sends queued validations that no signature took along, once LDK's
/// handling of the peers' messages ended: LDK's peer manager asks each
/// custom handler for messages at the end of every round of processing
/// (`process_events`, which runs after each read), and this one answers
/// none, but flushes. Carries no custom message.
pub struct FlushAfterMessages(pub Arc<super::SignerConnection>);

impl lightning::ln::wire::CustomMessageReader for FlushAfterMessages {
    type CustomMessage = std::convert::Infallible;

    fn read<R: lightning::util::ser::LengthLimitedRead>(
        &self,
        _message_type: u16,
        _buffer: &mut R,
    ) -> Result<Option<Self::CustomMessage>, lightning::ln::msgs::DecodeError> {
        Ok(None)
    }
}

impl lightning::ln::peer_handler::CustomMessageHandler for FlushAfterMessages {
    fn handle_custom_message(
        &self,
        msg: std::convert::Infallible,
        _sender_node_id: bitcoin::secp256k1::PublicKey,
    ) -> Result<(), lightning::ln::msgs::LightningError> {
        match msg {}
    }

    fn get_and_clear_pending_msg(
        &self,
    ) -> Vec<(bitcoin::secp256k1::PublicKey, Self::CustomMessage)> {
        self.0.flush_waited();
        Vec::new()
    }

    fn peer_disconnected(&self, _their_node_id: bitcoin::secp256k1::PublicKey) {}

    fn peer_connected(
        &self,
        _their_node_id: bitcoin::secp256k1::PublicKey,
        _msg: &lightning::ln::msgs::Init,
        _inbound: bool,
    ) -> Result<(), ()> {
        Ok(())
    }

    fn provided_node_features(&self) -> lightning::types::features::NodeFeatures {
        lightning::types::features::NodeFeatures::empty()
    }

    fn provided_init_features(
        &self,
        _their_node_id: bitcoin::secp256k1::PublicKey,
    ) -> lightning::types::features::InitFeatures {
        lightning::types::features::InitFeatures::empty()
    }
}

/// What [`replay`] did with one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// Sent again and accepted (or the signer had it already).
    Accepted,
    /// The signer is past it (it validated later commitments), or the
    /// channel is gone: the record was stale.
    Stale,
    /// Refused: the channel is closed with the previous commitment.
    Refused,
}

/// Sends again, before LDK runs, every validation queued when the node
/// last stopped, for the channels in `live` (the funding outpoints of the
/// loaded monitors); a record of another channel is dropped. Returns what each
/// became, and the refusals the node must act on once it runs. An
/// unreachable signer fails the start: LDK would ask for a secret the
/// signer cannot release yet.
pub fn replay(
    store: &SqliteStore,
    conn: &super::SignerConnection,
    live: &[lightning::chain::transaction::OutPoint],
    patience: std::time::Duration,
) -> Result<(Vec<Replayed>, Vec<RefusedValidation>), String> {
    use lightning::util::persist::KVStoreSync;
    use lnpd_proto::signer::request;

    let keys = store
        .list(JOURNAL_NAMESPACE, "")
        .map_err(|e| format!("queued validations: {e}"))?;
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for key in keys {
        let bytes = store
            .read(JOURNAL_NAMESPACE, "", &key)
            .map_err(|e| format!("queued validation {key}: {e}"))?;
        let record = QueuedValidation::decode(&bytes)
            .map_err(|e| format!("queued validation {key}: {e}"))?;
        let keys_id: Option<[u8; 32]> = hex::decode(&key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok());
        let is_live = record
            .params
            .funding_outpoint
            .is_some_and(|o| live.contains(&o));
        let Some(keys_id) = keys_id.filter(|_| is_live) else {
            tracing::info!("queued validation {key}: no such channel now, dropped");
            store
                .remove(JOURNAL_NAMESPACE, "", &key, false)
                .map_err(|e| format!("queued validation {key}: {e}"))?;
            done.push(Replayed::Stale);
            continue;
        };
        let body = request::Body::ValidateHolderCommitment(record.request.clone());
        let outcome = match conn.call_retrying("queued validation", body, patience) {
            Ok(_) => Replayed::Accepted,
            Err(e)
                if e.refusal().and_then(|r| r.rule)
                    == Some(lnpd_proto::RuleId::CommitmentNumberSequence) =>
            {
                // The answer came before the stop; its removal did not.
                tracing::info!(
                    "queued validation of commitment {} for {key}: the signer is past it ({e})",
                    record.number
                );
                Replayed::Stale
            }
            Err(e) if e.is_unavailable() => {
                return Err(format!(
                "cannot send the validation queued for channel {key} before the node stopped: {e}"
            ))
            }
            Err(e) => {
                tracing::error!(
                    "the signer refused holder commitment {} of channel {key}, queued before the node stopped: {e}",
                    record.number
                );
                refused.push(RefusedValidation {
                    keys_id,
                    number: record.number,
                    previous: record.previous,
                    params: record.params,
                    reason: e.to_string(),
                });
                done.push(Replayed::Refused);
                continue;
            }
        };
        store
            .remove(JOURNAL_NAMESPACE, "", &key, false)
            .map_err(|e| format!("queued validation {key}: {e}"))?;
        if outcome == Replayed::Accepted {
            tracing::info!(
                "sent again the validation of holder commitment {} queued for channel {key} before the node stopped",
                record.number
            );
        }
        done.push(outcome);
    }
    Ok((done, refused))
}
