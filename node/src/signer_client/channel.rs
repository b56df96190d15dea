//! `RemoteChannelSigner`: LDK's per-channel signer traits over the signer
//! connection. Only the channel's public keys are cached.
//!
//! The counterparty commitment, the signature of every payment's round, is
//! asked for without waiting: LDK hears "pending" (`Err(())`) and goes on
//! with its other work, the answer is kept here, and the connection's
//! answer hook has the node call `signer_unblocked`, when LDK asks again
//! and gets it. Where LDK can take "pending" but the operation is rare
//! (revocation secret, holder commitment, closing, sweeps, anchors), the
//! call waits, and an unavailable signer gets `Err(())` with the
//! connection marked pending: the node calls `signer_unblocked` when the
//! signer is back. Where LDK cannot (points, validation), the call waits
//! for the signer with bounded retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::ecdsa::Signature;
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use bitcoin::{Transaction, Txid};
use lightning::ln::chan_utils::{
    ChannelPublicKeys, ChannelTransactionParameters, ClosingTransaction, CommitmentTransaction,
    HTLCOutputInCommitment, HolderCommitmentTransaction,
};
use lightning::ln::msgs::UnsignedChannelAnnouncement;
use lightning::sign::ecdsa::EcdsaChannelSigner;
use lightning::sign::{ChannelSigner, HTLCDescriptor};
use lightning::types::payment::PaymentPreimage;
use lightning::util::ser::Writeable;
use lnpd_proto::signer::{self as pb, request};

use super::connection::expect_reply;
use super::connection::{CallError, SignerConnection};
use super::convert;
use super::queued::{QueuedValidation, RefusedValidation, ValidationQueue};
use crate::chain_watch::TxSource;

/// How long a call LDK can retry later waits before answering "pending".
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call LDK cannot retry waits for the signer.
pub const VALIDATION_PATIENCE: Duration = Duration::from_secs(120);

/// One channel's signer, living in the remote `lnpd-signer`.
#[derive(Clone)]
pub struct RemoteChannelSigner {
    conn: Arc<SignerConnection>,
    txs: Arc<dyn TxSource>,
    keys_id: [u8; 32],
    pubkeys: ChannelPublicKeys,
    setup_sent: Arc<Mutex<bool>>,
    /// What the last validation brought back ahead of LDK asking: the
    /// previous state's secret (already revoked in the signer; LDK asks for
    /// it next to send it to the peer) and our next per-commitment point.
    /// Saves two round trips per commitment.
    ahead: Arc<Mutex<Ahead>>,
    /// Counterparty commitment signatures asked for without waiting.
    counterparty_sigs: Arc<Mutex<Vec<(SigKey, SigSlot)>>>,
    /// Whether validations may be queued (shared by the node's signers).
    queue: Arc<ValidationQueue>,
    /// Where this channel's holder-commitment validations stand.
    validations: Arc<Mutex<Validations>>,
}

/// Where a channel's holder-commitment validations stand (see
/// [`super::queued`]).
#[derive(Default)]
struct Validations {
    /// LDK's index of a validation queued and not yet judged.
    queued: Option<u64>,
    /// The latest holder commitment the signer validated (this process).
    validated: Option<HolderCommitmentTransaction>,
    /// The channel's parameters, once LDK handed them over.
    params: Option<ChannelTransactionParameters>,
    /// The feerate and HTLCs of the latest counterparty commitment LDK
    /// asked to sign.
    counterparty_shape: Option<Shape>,
}

/// What a commitment holds, seen from our side: the feerate, our and the
/// peer's balance, the HTLC outputs (hash, amount, expiry) sorted. Equal
/// for our commitment and the peer's when both have the same updates.
type Shape = (u32, u64, u64, Vec<([u8; 32], u64, u32)>);

fn shape(tx: &CommitmentTransaction, ours: bool) -> Shape {
    let mut htlcs: Vec<_> = tx
        .nondust_htlcs()
        .iter()
        .map(|h| (h.payment_hash.0, h.amount_msat, h.cltv_expiry))
        .collect();
    htlcs.sort_unstable();
    let (broadcaster, other) = (
        tx.to_broadcaster_value_sat(),
        tx.to_countersignatory_value_sat(),
    );
    let (us, them) = if ours {
        (broadcaster, other)
    } else {
        (other, broadcaster)
    };
    (tx.negotiated_feerate_per_kw(), us, them, htlcs)
}

/// Keeps what a validation's reply brought ahead of LDK asking: the
/// previous state's secret and our point after next, by LDK index.
fn note_ahead(ahead: &Mutex<Ahead>, idx: u64, reply: &pb::ValidateHolderCommitmentReply) {
    if let Ok(mut ahead) = ahead.lock() {
        // LDK indexes commitments downwards: the previous state is idx + 1.
        ahead.secret = <[u8; 32]>::try_from(reply.previous_secret.as_slice())
            .ok()
            .map(|s| (idx + 1, zeroize::Zeroizing::new(s)));
        ahead.point = PublicKey::from_slice(&reply.upcoming_per_commitment_point)
            .ok()
            .and_then(|p| Some((idx.checked_sub(2)?, p)));
    }
}

/// A counterparty commitment: its number (LDK's index) and txid.
type SigKey = (u64, Txid);

/// Where a counterparty commitment signature stands.
#[derive(Clone)]
enum SigSlot {
    /// Sent to the signer, no answer yet.
    Asked,
    /// The commitment signature and the HTLC signatures.
    Signed(Signature, Vec<Signature>),
    /// Refused by the signer: LDK keeps the update pending (the error was
    /// logged when it came); asking again would be refused again.
    Refused,
}

/// How many counterparty commitments' answers are kept.
const KEPT_SIGS: usize = 4;

/// Answers the signer gave before LDK asked, by LDK commitment index.
#[derive(Default)]
struct Ahead {
    secret: Option<(u64, zeroize::Zeroizing<[u8; 32]>)>,
    point: Option<(u64, PublicKey)>,
}

fn sig(bytes: &[u8]) -> Result<Signature, CallError> {
    Signature::from_compact(bytes).map_err(|_| CallError::bad_reply("a malformed signature"))
}

impl RemoteChannelSigner {
    /// Fetches the channel's public keys. LDK cannot take an error here, so
    /// this waits for the signer as long as it takes, logging as it goes.
    pub fn new(
        conn: Arc<SignerConnection>,
        txs: Arc<dyn TxSource>,
        queue: Arc<ValidationQueue>,
        keys_id: [u8; 32],
    ) -> Self {
        let body = request::Body::GetChannelPublicKeys(pb::GetChannelPublicKeysRequest {
            channel_keys_id: keys_id.to_vec(),
        });
        let pubkeys = loop {
            match expect_reply!(
                conn.call_retrying("channel public keys", body.clone(), VALIDATION_PATIENCE),
                ChannelPublicKeys
            ) {
                Ok(k) => match lnpd_proto::ldk::parse_channel_keys(Some(&k)) {
                    Ok(k) => break k,
                    Err(e) => {
                        tracing::error!("signer sent malformed channel public keys ({e}); retrying")
                    }
                },
                Err(e) => tracing::error!(
                    "cannot get channel public keys from the signer, still trying: {e}"
                ),
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        RemoteChannelSigner {
            conn,
            txs,
            keys_id,
            pubkeys,
            setup_sent: Arc::new(Mutex::new(false)),
            ahead: Arc::new(Mutex::new(Ahead::default())),
            counterparty_sigs: Arc::new(Mutex::new(Vec::new())),
            queue,
            validations: Arc::new(Mutex::new(Validations::default())),
        }
    }

    /// LDK's index of a validation queued or refused, for which the secret
    /// of the state before it and our point after next are "pending".
    fn unjudged(&self) -> Option<u64> {
        self.validations
            .lock()
            .ok()
            .and_then(|v| v.queued)
            .or_else(|| self.queue.refused_number(&self.keys_id))
    }

    /// Queues the validation of `holder_tx` (answered at once, judged with
    /// the signature LDK asks next) when that signature is expected: the
    /// peer's commitment lacks what ours has. `false`: validate now.
    fn queue_validation(
        &self,
        holder_tx: &HolderCommitmentTransaction,
        request: &pb::ValidateHolderCommitmentRequest,
    ) -> bool {
        let Some(journal) = self.queue.journal() else {
            return false;
        };
        if !self.setup_sent.lock().is_ok_and(|s| *s) {
            return false;
        }
        let n = holder_tx.commitment_number();
        let Ok(mut v) = self.validations.lock() else {
            return false;
        };
        let (Some(previous), Some(params)) = (v.validated.clone(), v.params.clone()) else {
            return false;
        };
        let signature_follows = v
            .counterparty_shape
            .as_ref()
            .is_some_and(|s| *s != shape(holder_tx, true));
        if v.queued.is_some()
            || self.queue.refused_number(&self.keys_id).is_some()
            || previous.commitment_number() != n + 1
            || !signature_follows
        {
            return false;
        }
        let record = QueuedValidation {
            number: n,
            request: request.clone(),
            previous: previous.clone(),
            params: params.clone(),
        };
        journal.queued(&self.keys_id, record.encode());
        v.queued = Some(n);
        drop(v);
        let (validations, ahead, queue, journal) = (
            self.validations.clone(),
            self.ahead.clone(),
            self.queue.clone(),
            journal.clone(),
        );
        let (keys_id, holder) = (self.keys_id, holder_tx.clone());
        let body = request::Body::ValidateHolderCommitment(request.clone());
        self.conn.defer_with(body, move |r| {
            let r = expect_reply!(r, ValidateHolderCommitment);
            let Ok(mut v) = validations.lock() else {
                return;
            };
            // The answers first, then "no longer queued": LDK asking in
            // between finds one or the other, never goes to the signer.
            match r {
                Ok(reply) => {
                    note_ahead(&ahead, n, &reply);
                    v.queued = None;
                    v.validated = Some(holder);
                    journal.answered(&keys_id);
                }
                Err(e) => {
                    tracing::error!(
                        "the signer refused holder commitment {n} after LDK moved to it: {e}; \
                         closing the channel with the previous one"
                    );
                    v.queued = None;
                    queue.refused(RefusedValidation {
                        keys_id,
                        number: n,
                        previous,
                        params,
                        reason: e.to_string(),
                    });
                }
            }
        });
        true
    }

    fn id(&self) -> Vec<u8> {
        self.keys_id.to_vec()
    }

    /// Hands the signer the channel's parameters once per process (the
    /// signer records them on first sight and refuses any change).
    fn ensure_setup(&self, params: &ChannelTransactionParameters) -> Result<(), CallError> {
        let mut sent = self
            .setup_sent
            .lock()
            .map_err(|_| CallError::Unavailable("setup lock poisoned".into()))?;
        if *sent {
            return Ok(());
        }
        let Some(req) = convert::setup_request(&self.keys_id, params) else {
            return Err(CallError::Refused(lnpd_proto::SignerError::precondition(
                "channel parameters not yet complete",
            )));
        };
        if let Some(o) = params.funding_outpoint {
            // Follow the funding transaction: its confirmation is proven to
            // the signer, its spends are kept for the signer's proofs.
            self.txs.watch_funding(o.txid, self.keys_id);
        }
        expect_reply!(
            self.conn
                .call(request::Body::SetupChannel(req), PENDING_TIMEOUT),
            SetupChannel
        )?;
        *sent = true;
        if let Ok(mut v) = self.validations.lock() {
            v.params = Some(params.clone());
        }
        Ok(())
    }

    /// Maps an outcome for an operation LDK may retry later.
    fn pending<T>(&self, what: &str, r: Result<T, CallError>) -> Result<T, ()> {
        r.map_err(|e| {
            if e.is_unavailable() {
                tracing::warn!("{what}: signer unavailable, answered pending: {e}");
                self.conn.mark_pending();
            } else {
                tracing::error!("{what}: {e}");
            }
        })
    }

    /// The transactions `tx`'s inputs spend, and their parents (a justice
    /// input may spend the peer's HTLC transaction on the revoked
    /// commitment), as the node kept them: the signer's proof of amounts.
    fn spent_transactions(&self, tx: &Transaction, depth: usize) -> Vec<Vec<u8>> {
        let mut found: Vec<Transaction> = Vec::new();
        let mut wanted: Vec<Txid> = tx.input.iter().map(|i| i.previous_output.txid).collect();
        for _ in 0..depth {
            let mut next = Vec::new();
            for txid in wanted {
                if found.iter().any(|t| t.compute_txid() == txid) {
                    continue;
                }
                if let Some(t) = self.txs.transaction(&txid) {
                    next.extend(t.input.iter().map(|i| i.previous_output.txid));
                    found.push(t);
                }
            }
            wanted = next;
        }
        found.iter().map(bitcoin::consensus::serialize).collect()
    }

    fn blocking<T>(&self, what: &str, r: Result<T, CallError>) -> Result<T, ()> {
        r.map_err(|e| tracing::error!("{what}: {e}"))
    }

    fn signature(
        &self,
        what: &str,
        params: Option<&ChannelTransactionParameters>,
        body: request::Body,
    ) -> Result<Signature, ()> {
        let r = (|| {
            if let Some(p) = params {
                self.ensure_setup(p)?;
            }
            sig(&expect_reply!(self.conn.call(body, PENDING_TIMEOUT), Signature)?.signature)
        })();
        self.pending(what, r)
    }
}

impl ChannelSigner for RemoteChannelSigner {
    fn get_per_commitment_point(&self, idx: u64, _secp: &Secp256k1<All>) -> Result<PublicKey, ()> {
        if let Some((_, point)) = self
            .ahead
            .lock()
            .ok()
            .and_then(|a| a.point.filter(|(i, _)| *i == idx))
        {
            return Ok(point);
        }
        if self
            .unjudged()
            .is_some_and(|n| n.checked_sub(2) == Some(idx))
        {
            // Comes with the queued validation's answer.
            return Err(());
        }
        let body = request::Body::GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest {
            channel_keys_id: self.id(),
            commitment_number: convert::number(idx),
        });
        let r = expect_reply!(
            self.conn
                .call_retrying("per-commitment point", body, VALIDATION_PATIENCE),
            GetPerCommitmentPoint
        )
        .and_then(|r| {
            PublicKey::from_slice(&r.per_commitment_point)
                .map_err(|_| CallError::Unavailable("malformed point".into()))
        });
        self.blocking("per-commitment point", r)
    }

    fn release_commitment_secret(&self, idx: u64) -> Result<[u8; 32], ()> {
        // Kept, not taken: LDK may ask twice for the same revocation (once
        // more when a pending signature lets it build its messages again).
        let early = self.ahead.lock().ok().and_then(|a| match &a.secret {
            Some((i, s)) if *i == idx => Some(**s),
            _ => None,
        });
        if let Some(secret) = early {
            return Ok(secret);
        }
        if self.unjudged().is_some_and(|n| n + 1 == idx) {
            // Released with the queued validation, if the signer accepts it.
            return Err(());
        }
        let body = request::Body::ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: self.id(),
            commitment_number: convert::number(idx),
        });
        let r = expect_reply!(
            self.conn.call(body, PENDING_TIMEOUT),
            ReleaseCommitmentSecret
        )
        .and_then(|r| {
            <[u8; 32]>::try_from(r.secret.as_slice())
                .map_err(|_| CallError::Unavailable("malformed secret".into()))
        });
        self.pending("release commitment secret", r)
    }

    fn validate_holder_commitment(
        &self,
        holder_tx: &HolderCommitmentTransaction,
        outbound_htlc_preimages: Vec<PaymentPreimage>,
    ) -> Result<(), ()> {
        let request = pb::ValidateHolderCommitmentRequest {
            channel_keys_id: self.id(),
            commitment: Some(convert::commitment_data(holder_tx)),
            counterparty_signature: holder_tx.counterparty_sig.serialize_compact().to_vec(),
            htlc_signatures: holder_tx
                .counterparty_htlc_sigs
                .iter()
                .map(|s| s.serialize_compact().to_vec())
                .collect(),
            outbound_htlc_preimages: outbound_htlc_preimages
                .iter()
                .map(|p| p.0.to_vec())
                .collect(),
            release_previous: true,
        };
        if self.queue_validation(holder_tx, &request) {
            return Ok(());
        }
        let body = request::Body::ValidateHolderCommitment(request);
        let r = expect_reply!(
            self.conn
                .call_retrying("validate holder commitment", body, VALIDATION_PATIENCE),
            ValidateHolderCommitment
        );
        if let Ok(reply) = &r {
            note_ahead(&self.ahead, holder_tx.commitment_number(), reply);
            if let Ok(mut v) = self.validations.lock() {
                v.validated = Some(holder_tx.clone());
            }
        }
        self.blocking("validate holder commitment", r.map(|_| ()))
    }

    fn validate_counterparty_revocation(&self, idx: u64, secret: &SecretKey) -> Result<(), ()> {
        let body = request::Body::ValidateCounterpartyRevocation(
            pb::ValidateCounterpartyRevocationRequest {
                channel_keys_id: self.id(),
                commitment_number: convert::number(idx),
                secret: secret.secret_bytes().to_vec(),
            },
        );
        // LDK has checked the secret against the peer's commitment point
        // before asking; the signer gets it with the next request for the
        // channel (one round trip and one durable write instead of two) and
        // checks it again before it signs anything that depends on it.
        self.conn.defer(body);
        Ok(())
    }

    fn pubkeys(&self, _secp: &Secp256k1<All>) -> ChannelPublicKeys {
        self.pubkeys.clone()
    }

    fn new_funding_pubkey(
        &self,
        _splice_parent_funding_txid: Txid,
        _secp: &Secp256k1<All>,
    ) -> PublicKey {
        // Splicing is not offered by lnpd: the funding key never changes.
        self.pubkeys.funding_pubkey
    }

    fn channel_keys_id(&self) -> [u8; 32] {
        self.keys_id
    }
}

impl EcdsaChannelSigner for RemoteChannelSigner {
    fn sign_counterparty_commitment(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        commitment_tx: &CommitmentTransaction,
        inbound_htlc_preimages: Vec<PaymentPreimage>,
        outbound_htlc_preimages: Vec<PaymentPreimage>,
        _secp: &Secp256k1<All>,
    ) -> Result<(Signature, Vec<Signature>), ()> {
        let key: SigKey = (
            commitment_tx.commitment_number(),
            commitment_tx.trust().txid(),
        );
        if let Ok(mut v) = self.validations.lock() {
            v.counterparty_shape = Some(shape(commitment_tx, false));
        }
        let Ok(mut slots) = self.counterparty_sigs.lock() else {
            tracing::error!("sign counterparty commitment: signature cache poisoned");
            return Err(());
        };
        match slots
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s.clone())
        {
            Some(SigSlot::Signed(sig, htlcs)) => return Ok((sig, htlcs)),
            Some(SigSlot::Asked | SigSlot::Refused) => return Err(()),
            None => {}
        }
        if let Err(e) = self.ensure_setup(channel_parameters) {
            return self.pending("sign counterparty commitment", Err(e));
        }
        let body =
            request::Body::SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
                channel_keys_id: self.id(),
                commitment: Some(convert::commitment_data(commitment_tx)),
                inbound_htlc_preimages: inbound_htlc_preimages
                    .iter()
                    .map(|p| p.0.to_vec())
                    .collect(),
                outbound_htlc_preimages: outbound_htlc_preimages
                    .iter()
                    .map(|p| p.0.to_vec())
                    .collect(),
            });
        if slots.len() >= KEPT_SIGS {
            slots.remove(0);
        }
        slots.push((key, SigSlot::Asked));
        drop(slots);
        let (cache, conn) = (self.counterparty_sigs.clone(), self.conn.clone());
        self.conn.submit(body, PENDING_TIMEOUT, move |r| {
            let r = expect_reply!(r, SignCounterpartyCommitment).and_then(|r| {
                let htlcs = r
                    .htlc_signatures
                    .iter()
                    .map(|s| sig(s))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((sig(&r.signature)?, htlcs))
            });
            let Ok(mut slots) = cache.lock() else { return };
            let Some(i) = slots.iter().position(|(k, _)| *k == key) else {
                return;
            };
            match r {
                Ok((sig, htlcs)) => slots[i].1 = SigSlot::Signed(sig, htlcs),
                Err(e) if e.is_unavailable() => {
                    // Asked again once the signer is back.
                    tracing::warn!(
                        "sign counterparty commitment: signer unavailable, left pending: {e}"
                    );
                    slots.remove(i);
                    conn.mark_pending();
                }
                Err(e) if super::connection::is_rollback(&e) => {
                    // The signer's state is older than it should be: asked
                    // again once it is restored (the connection checks).
                    tracing::error!("sign counterparty commitment: {e}");
                    slots.remove(i);
                    conn.mark_rolled_back();
                }
                Err(e) => {
                    tracing::error!("sign counterparty commitment: {e}");
                    slots[i].1 = SigSlot::Refused;
                }
            }
        });
        Err(())
    }

    fn sign_holder_commitment(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        commitment_tx: &HolderCommitmentTransaction,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        if self.queue.refused_number(&self.keys_id) == Some(commitment_tx.commitment_number()) {
            // The signer refused it (LDK moved to it before): the node
            // closes with the previous one instead (`refused_validation`).
            tracing::debug!("not asking the signer for the holder commitment it refused");
            return Err(());
        }
        let body = request::Body::SignHolderCommitment(pb::SignHolderCommitmentRequest {
            channel_keys_id: self.id(),
            commitment_number: convert::number(commitment_tx.commitment_number()),
        });
        self.signature("sign holder commitment", Some(channel_parameters), body)
    }

    fn sign_justice_revoked_output(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        justice_tx: &Transaction,
        input: usize,
        amount: u64,
        per_commitment_key: &SecretKey,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let body = request::Body::SignJusticeRevokedOutput(pb::SignJusticeRevokedOutputRequest {
            channel_keys_id: self.id(),
            tx: Some(convert::unsigned_tx(justice_tx)),
            input_index: input as u32,
            amount_sat: amount,
            commitment_number: 0,
            per_commitment_secret: per_commitment_key.secret_bytes().to_vec(),
            previous_txs: self.spent_transactions(justice_tx, 2),
        });
        self.signature("sign justice (to_local)", Some(channel_parameters), body)
    }

    fn sign_justice_revoked_htlc(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        justice_tx: &Transaction,
        input: usize,
        amount: u64,
        per_commitment_key: &SecretKey,
        htlc: &HTLCOutputInCommitment,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let body = request::Body::SignJusticeRevokedHtlc(pb::SignJusticeRevokedHtlcRequest {
            channel_keys_id: self.id(),
            tx: Some(convert::unsigned_tx(justice_tx)),
            input_index: input as u32,
            amount_sat: amount,
            commitment_number: 0,
            htlc: Some(lnpd_proto::ldk::htlc_to_wire(htlc)),
            per_commitment_secret: per_commitment_key.secret_bytes().to_vec(),
            previous_txs: self.spent_transactions(justice_tx, 2),
        });
        self.signature("sign justice (HTLC)", Some(channel_parameters), body)
    }

    fn sign_holder_htlc_transaction(
        &self,
        htlc_tx: &Transaction,
        input: usize,
        htlc_descriptor: &HTLCDescriptor,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let Some(vout) = htlc_descriptor.htlc.transaction_output_index else {
            return Err(());
        };
        let body = request::Body::SignHolderHtlcTransaction(pb::SignHolderHtlcTransactionRequest {
            channel_keys_id: self.id(),
            commitment_number: convert::number(htlc_descriptor.per_commitment_number),
            htlc_output_index: vout,
            tx: Some(convert::unsigned_tx(htlc_tx)),
            input_index: input as u32,
            preimage: htlc_descriptor
                .preimage
                .map(|p| p.0.to_vec())
                .unwrap_or_default(),
            previous_txs: self.spent_transactions(htlc_tx, 1),
        });
        self.signature("sign holder HTLC transaction", None, body)
    }

    fn sign_counterparty_htlc_transaction(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        htlc_tx: &Transaction,
        input: usize,
        amount: u64,
        per_commitment_point: &PublicKey,
        htlc: &HTLCOutputInCommitment,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let body = request::Body::SignCounterpartyHtlcSweep(pb::SignCounterpartyHtlcSweepRequest {
            channel_keys_id: self.id(),
            tx: Some(convert::unsigned_tx(htlc_tx)),
            input_index: input as u32,
            amount_sat: amount,
            per_commitment_point: per_commitment_point.serialize().to_vec(),
            htlc: Some(lnpd_proto::ldk::htlc_to_wire(htlc)),
            previous_txs: self.spent_transactions(htlc_tx, 1),
        });
        self.signature(
            "sign counterparty HTLC sweep",
            Some(channel_parameters),
            body,
        )
    }

    fn sign_closing_transaction(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        closing_tx: &ClosingTransaction,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let lock_time = closing_tx
            .trust()
            .built_transaction()
            .lock_time
            .to_consensus_u32();
        let body = request::Body::SignClosingTransaction(pb::SignClosingTransactionRequest {
            channel_keys_id: self.id(),
            to_holder_value_sat: closing_tx.to_holder_value_sat(),
            to_counterparty_value_sat: closing_tx.to_counterparty_value_sat(),
            to_holder_script: closing_tx.to_holder_script().to_bytes(),
            to_counterparty_script: closing_tx.to_counterparty_script().to_bytes(),
            lock_time,
        });
        self.signature("sign closing transaction", Some(channel_parameters), body)
    }

    fn sign_holder_keyed_anchor_input(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        anchor_tx: &Transaction,
        input: usize,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let body = request::Body::SignHolderAnchorInput(pb::SignHolderAnchorInputRequest {
            channel_keys_id: self.id(),
            tx: Some(convert::unsigned_tx(anchor_tx)),
            input_index: input as u32,
            previous_txs: self.spent_transactions(anchor_tx, 1),
        });
        self.signature("sign anchor input", Some(channel_parameters), body)
    }

    fn sign_channel_announcement_with_funding_key(
        &self,
        channel_parameters: &ChannelTransactionParameters,
        msg: &UnsignedChannelAnnouncement,
        _secp: &Secp256k1<All>,
    ) -> Result<Signature, ()> {
        let r = (|| {
            self.ensure_setup(channel_parameters)?;
            let body = request::Body::SignChannelAnnouncement(pb::SignChannelAnnouncementRequest {
                channel_keys_id: self.id(),
                unsigned_announcement: msg.encode(),
            });
            sig(&expect_reply!(
                self.conn.call(body, PENDING_TIMEOUT),
                SignChannelAnnouncement
            )?
            .bitcoin_signature)
        })();
        self.pending("sign channel announcement", r)
    }

    fn sign_splice_shared_input(
        &self,
        _channel_parameters: &ChannelTransactionParameters,
        _tx: &Transaction,
        _input_index: usize,
        _secp: &Secp256k1<All>,
    ) -> Signature {
        // lnpd neither offers nor accepts splicing, so LDK never asks. Should it,
        // the answer must not be a usable signature: a fixed value that does
        // not verify makes the splice transaction invalid, losing nothing.
        tracing::error!("splice signature requested; splicing is not supported");
        Signature::from_compact(&[1u8; 64])
            .unwrap_or_else(|_| unreachable!("constant is a valid encoding"))
    }
}
