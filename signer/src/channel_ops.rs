//! SignerProvider and ChannelSigner operations on a channel's state:
//! keys ids, set-up, commitment points and secrets, commitment validation
//! and signing, force-close and mutual-close signatures, announcements.
//! (Transactions that spend a channel's outputs: `sweep_ops`.)
//!
//! Each operation: look up the channel, rebuild the transaction, run the
//! operation's validator (`policy::*`) over the signer's own facts, persist
//! the new state, then sign.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{absolute::LockTime, Amount, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use lightning::ln::chan_utils::{self, ChannelPublicKeys, ChannelTransactionParameters};
use lightning::ln::msgs::UnsignedChannelAnnouncement;
use lightning::routing::gossip::NodeId;
use lightning::util::ser::LengthReadable;
use lnpd_proto::signer::{self as pb, SetupChannelRequest};

use crate::commitment::{
    self, channel_keys_to_wire, is_anchors, parse_32, parse_htlcs, parse_signature, Rebuilt,
};
use crate::error::SignerError;
use crate::handler::Signer;
use crate::keys::ChannelSecrets;
use crate::policy::channel::SetupVerdict;
use crate::policy::commitment::{Proposed, Verdict};
use crate::policy::resources::{check_parked_first_commitment, pending_to_forget};
use crate::policy::revocation::{
    validate_counterparty_revocation, validate_holder_broadcast, validate_release, Release,
    Revocation,
};
use crate::policy::{channel as channel_rules, close as close_rules, RuleId};
use crate::revocation::counterparty_secrets;
use crate::state::{ChannelRecord, HolderRecord};
use crate::store::Store;
use crate::types::{ChannelKeysId, CommitmentNumber};

/// Most inputs or outputs accepted in a transaction to sign.
pub(crate) const MAX_TX_IO: usize = 1000;

/// Turns the node's transaction fields into a transaction (no witnesses).
pub(crate) fn to_transaction(tx: Option<&pb::UnsignedTx>) -> Result<Transaction, SignerError> {
    let tx = tx.ok_or_else(|| SignerError::invalid("missing transaction"))?;
    if tx.inputs.is_empty() || tx.inputs.len() > MAX_TX_IO || tx.outputs.len() > MAX_TX_IO {
        return Err(SignerError::invalid(
            "transaction needs 1 to 1000 inputs and at most 1000 outputs",
        ));
    }
    let input = tx
        .inputs
        .iter()
        .map(|i| {
            Ok(TxIn {
                previous_output: commitment::parse_outpoint(i.previous_output.as_ref())?,
                script_sig: ScriptBuf::new(),
                sequence: Sequence(i.sequence),
                witness: Witness::new(),
            })
        })
        .collect::<Result<Vec<_>, SignerError>>()?;
    let output = tx
        .outputs
        .iter()
        .map(|o| {
            if o.value_sat > 21_000_000 * 100_000_000 {
                return Err(SignerError::invalid("output value above 21 million BTC"));
            }
            if o.script_pubkey.len() > 10_000 {
                return Err(SignerError::invalid("output script too long"));
            }
            Ok(TxOut {
                value: Amount::from_sat(o.value_sat),
                script_pubkey: ScriptBuf::from_bytes(o.script_pubkey.clone()),
            })
        })
        .collect::<Result<Vec<_>, SignerError>>()?;
    Ok(Transaction {
        version: Version(tx.version),
        lock_time: LockTime::from_consensus(tx.lock_time),
        input,
        output,
    })
}

pub(crate) fn input_index(tx: &Transaction, index: u32) -> Result<usize, SignerError> {
    let i = index as usize;
    if i >= tx.input.len() {
        return Err(SignerError::invalid(format!(
            "input_index {i} out of range ({} inputs)",
            tx.input.len()
        )));
    }
    Ok(i)
}

pub(crate) fn sig_reply(sig: Signature) -> pb::SignatureReply {
    pb::SignatureReply {
        signature: sig.serialize_compact().to_vec(),
    }
}

/// Payment hashes of preimages from a request, each 32 bytes.
fn preimage_hashes(raw: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, SignerError> {
    raw.iter()
        .map(|p| {
            <[u8; 32]>::try_from(p.as_slice())
                .map(|p| crate::keys::payment_hash(&p).0)
                .map_err(|_| SignerError::invalid("a preimage is not 32 bytes"))
        })
        .collect()
}

impl<S: Store> Signer<S> {
    pub(crate) fn secrets(&self, id: &ChannelKeysId) -> ChannelSecrets {
        self.keys.channel_secrets(id)
    }

    pub(crate) fn holder_pubkeys(&self, id: &ChannelKeysId) -> ChannelPublicKeys {
        if let Some(k) = self.pubkeys.borrow().get(id) {
            return k.clone();
        }
        let k = self.secrets(id).pubkeys(&self.secp);
        self.pubkeys.borrow_mut().insert(*id, k.clone());
        k
    }

    /// Our per-commitment point `n` of channel `id`, from the cache when
    /// recently derived.
    pub(crate) fn our_point(&self, id: &ChannelKeysId, n: CommitmentNumber) -> PublicKey {
        if let Some(p) = self
            .points
            .borrow()
            .get(id)
            .and_then(|v| v.iter().find(|(i, _)| *i == n.0))
        {
            return p.1;
        }
        let point = self.secrets(id).per_commitment_point(&self.secp, n);
        let mut points = self.points.borrow_mut();
        let kept = points.entry(*id).or_default();
        if kept.len() >= 4 {
            kept.remove(0);
        }
        kept.push((n.0, point));
        point
    }

    /// Signs as BOLT 3's test vectors do (RFC 6979): commitment and HTLC
    /// signatures the peer receives.
    pub(crate) fn sign(&self, msg: &Message, key: &SecretKey) -> Signature {
        self.secp.sign_ecdsa(msg, key)
    }

    /// Signs with a low R (grinding the nonce, as LDK does with
    /// `grind_signatures`) for inputs of transactions we broadcast and pay
    /// fees for: at most 71 bytes, never above the witness weights LDK
    /// estimates when it sets their fee (in debug builds it asserts so).
    pub(crate) fn sign_low_r(&self, msg: &Message, key: &SecretKey) -> Signature {
        self.secp.sign_ecdsa_low_r(msg, key)
    }

    /// The channel's record and recorded set-up; errors if not set up.
    pub(crate) fn set_up_channel(
        &self,
        id: &ChannelKeysId,
    ) -> Result<
        (
            &ChannelRecord,
            &SetupChannelRequest,
            ChannelTransactionParameters,
        ),
        SignerError,
    > {
        let record = self.channel(id)?;
        let setup = record.setup.as_ref().ok_or_else(|| {
            SignerError::precondition(format!("channel {id} has not been set up"))
        })?;
        let cached = self
            .params
            .borrow()
            .get(id)
            .filter(|(s, _)| s == setup)
            .map(|(_, p)| p.clone());
        let params = match cached {
            Some(p) => p,
            None => {
                let p = commitment::channel_parameters(setup, self.holder_pubkeys(id))?;
                self.params
                    .borrow_mut()
                    .insert(*id, (setup.clone(), p.clone()));
                p
            }
        };
        Ok((record, setup, params))
    }

    /// The funding output script of a set-up channel.
    pub(crate) fn funding_script_of(
        &self,
        id: &ChannelKeysId,
        setup: &SetupChannelRequest,
    ) -> Option<ScriptBuf> {
        let cp = commitment::parse_channel_keys(setup.counterparty_keys.as_ref()).ok()?;
        let ours = self.holder_pubkeys(id);
        Some(
            chan_utils::make_funding_redeemscript(&ours.funding_pubkey, &cp.funding_pubkey)
                .to_p2wsh(),
        )
    }

    pub(crate) fn new_channel_keys_id(
        &mut self,
        _r: &pb::NewChannelKeysIdRequest,
    ) -> Result<pb::NewChannelKeysIdReply, SignerError> {
        let mut meta = self.meta.clone();
        meta.keys_ids_issued += 1;
        // Random bytes plus a persisted counter: unique even after a restore
        // from the mnemonic onto a fresh state.
        let mut pre = self.entropy.random_bytes().to_vec();
        pre.extend_from_slice(&meta.keys_ids_issued.to_be_bytes());
        let id = ChannelKeysId(sha256::Hash::hash(&pre).to_byte_array());
        if self.channels.contains_key(&id) {
            return Err(SignerError::internal("channel keys id collision; retry"));
        }
        // Keys ids issued but never set up are capped: the oldest go (a
        // channel negotiation takes seconds; a node asking for ids without
        // end must not grow the state without end).
        let pending: Vec<(u64, ChannelKeysId)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.setup.is_none())
            .map(|(id, c)| (c.issued_seq, *id))
            .collect();
        let evicted = pending_to_forget(pending, &self.policy);
        let mut record = ChannelRecord::new(&id.0, true);
        record.issued_seq = meta.keys_ids_issued;
        record.ledger_ready = true;
        for e in &evicted {
            tracing::warn!(
                channel = %e,
                rule = RuleId::ResourceLimit.as_str(),
                "forgot a channel keys id issued but never set up ({} pending at most)",
                self.policy.max_pending_channels
            );
        }
        self.commit_records(alloc::vec![(id, record)], evicted, Some(meta))?;
        tracing::info!(channel = %id, "issued channel keys id");
        Ok(pb::NewChannelKeysIdReply {
            channel_keys_id: id.0.to_vec(),
        })
    }

    pub(crate) fn get_channel_public_keys(
        &self,
        r: &pb::GetChannelPublicKeysRequest,
    ) -> Result<pb::ChannelPublicKeys, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        Ok(channel_keys_to_wire(&self.holder_pubkeys(&id)))
    }

    pub(crate) fn setup_channel(
        &mut self,
        r: SetupChannelRequest,
    ) -> Result<pb::SetupChannelReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let verdict =
            channel_rules::validate_setup(&id, self.channels.get(&id), &r, &self.facts())?;
        if verdict == SetupVerdict::Again {
            return Ok(pb::SetupChannelReply {});
        }
        let mut record = self.channel(&id)?.clone();
        let params = commitment::channel_parameters(&r, self.holder_pubkeys(&id))?;
        record.setup = Some(r);
        let mut others = BTreeMap::new();
        let mut meta = None;
        if let Some(parked) = record.parked_holder_validation.take() {
            let (holder, changes) = self.check_holder_commitment(&id, &record, &params, &parked)?;
            record.holder = Some(holder);
            if let Verdict::New(changes) = changes {
                (others, meta) = changes.apply(&mut record, true);
            }
            tracing::info!(channel = %id, "validated the parked first holder commitment");
        }
        record.ledger_ready = true;
        let script = record
            .setup
            .as_ref()
            .and_then(|s| self.funding_script_of(&id, s));
        let mut writes: Vec<(ChannelKeysId, ChannelRecord)> = others.into_iter().collect();
        writes.push((id, record));
        self.commit_records(writes, Vec::new(), meta)?;
        if let Some(s) = script {
            self.funding_scripts.insert(s, id);
        }
        tracing::info!(channel = %id, "channel set up");
        Ok(pb::SetupChannelReply {})
    }

    pub(crate) fn get_per_commitment_point(
        &self,
        r: &pb::GetPerCommitmentPointRequest,
    ) -> Result<pb::GetPerCommitmentPointReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let n = CommitmentNumber::new(r.commitment_number)?;
        let point = self.our_point(&id, n);
        Ok(pb::GetPerCommitmentPointReply {
            per_commitment_point: point.serialize().to_vec(),
        })
    }

    pub(crate) fn release_commitment_secret(
        &mut self,
        r: &pb::ReleaseCommitmentSecretRequest,
    ) -> Result<pb::ReleaseCommitmentSecretReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let n = CommitmentNumber::new(r.commitment_number)?;
        let record = self.channel(&id)?;
        if validate_release(&self.policy, &id, record, n)? == Release::New {
            let mut updated = record.clone();
            updated.holder_revoked_through = Some(n.0);
            self.commit_channel(id, updated, None)?;
        }
        let secret = self.secrets(&id).commitment_secret(n);
        Ok(pb::ReleaseCommitmentSecretReply {
            secret: secret.to_vec(),
        })
    }

    pub(crate) fn validate_holder_commitment(
        &mut self,
        r: pb::ValidateHolderCommitmentRequest,
    ) -> Result<pb::ValidateHolderCommitmentReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let record = self.channel(&id)?.clone();
        let data = r
            .commitment
            .as_ref()
            .ok_or_else(|| SignerError::invalid("missing commitment"))?;
        if record.setup.is_none() {
            return self.park_first_holder_commitment(id, record, r);
        }
        let (_, _, params) = self.set_up_channel(&id)?;
        let (holder, verdict) = self.check_holder_commitment(&id, &record, &params, &r)?;
        let n = CommitmentNumber::new(data.commitment_number)?;
        let mut updated = record.clone();
        updated.holder = Some(holder);
        let (others, meta) = match verdict {
            Verdict::New(changes) => changes.apply(&mut updated, true),
            Verdict::Retry => (BTreeMap::new(), None),
        };
        // The previous state is revoked in the same durable write, but only
        // when every revocation rule holds outright; otherwise the node asks
        // with ReleaseCommitmentSecret and hears the refusal and its rule.
        let previous = n.0.checked_sub(1).map(CommitmentNumber).filter(|p| {
            r.release_previous
                && !updated.closing_signed
                && updated
                    .holder_signed_number
                    .is_none_or(|signed| p.0 < signed)
        });
        if let Some(p) = previous {
            if updated.holder_revoked_through.is_none_or(|t| t < p.0) {
                updated.holder_revoked_through = Some(p.0);
            }
        }
        if updated != record || !others.is_empty() || meta.is_some() {
            let mut writes: Vec<_> = others.into_iter().collect();
            writes.push((id, updated));
            self.commit_records(writes, Vec::new(), meta)?;
        }
        let secrets = self.secrets(&id);
        Ok(pb::ValidateHolderCommitmentReply {
            parked: false,
            previous_secret: previous
                .map(|p| secrets.commitment_secret(p).to_vec())
                .unwrap_or_default(),
            upcoming_per_commitment_point: self
                .our_point(&id, CommitmentNumber(n.0 + 2))
                .serialize()
                .to_vec(),
        })
    }

    /// Inbound channel: LDK validates the first holder commitment before it
    /// hands over the channel parameters. It is kept (small: no HTLCs) and
    /// checked at set-up, before anything else is signed for the channel.
    fn park_first_holder_commitment(
        &mut self,
        id: ChannelKeysId,
        record: ChannelRecord,
        r: pb::ValidateHolderCommitmentRequest,
    ) -> Result<pb::ValidateHolderCommitmentReply, SignerError> {
        let data = r
            .commitment
            .as_ref()
            .ok_or_else(|| SignerError::invalid("missing commitment"))?;
        if data.commitment_number != 0 {
            return Err(SignerError::precondition(format!(
                "channel {id} is not set up; only its first commitment can be validated early"
            )));
        }
        check_parked_first_commitment(&id, &r)?;
        if record.parked_holder_validation.as_ref() == Some(&r) {
            return Ok(pb::ValidateHolderCommitmentReply {
                parked: true,
                ..Default::default()
            });
        }
        parse_htlcs(data)?;
        parse_signature("counterparty_signature", &r.counterparty_signature)?;
        let mut updated = record;
        updated.parked_holder_validation = Some(r);
        self.commit_channel(id, updated, None)?;
        tracing::info!(channel = %id, "first holder commitment parked until set-up");
        Ok(pb::ValidateHolderCommitmentReply {
            parked: true,
            ..Default::default()
        })
    }

    /// Rebuilds and checks a holder commitment the peer countersigned;
    /// returns the record of it and what accepting it changes.
    fn check_holder_commitment(
        &self,
        id: &ChannelKeysId,
        record: &ChannelRecord,
        params: &ChannelTransactionParameters,
        r: &pb::ValidateHolderCommitmentRequest,
    ) -> Result<(HolderRecord, Verdict), SignerError> {
        let setup = record
            .setup
            .as_ref()
            .ok_or_else(|| SignerError::internal("no setup"))?;
        let mut data = r
            .commitment
            .clone()
            .ok_or_else(|| SignerError::invalid("missing commitment"))?;
        let n = CommitmentNumber::new(data.commitment_number)?;
        // Our own point for this number; a different one in the request is refused.
        let point = self.our_point(id, n);
        crate::policy::commitment::check_holder_point(id, n.0, &data.per_commitment_point, &point)?;
        data.per_commitment_point = point.serialize().to_vec();
        let candidate = HolderRecord {
            commitment: Some(data.clone()),
            counterparty_signature: r.counterparty_signature.clone(),
            htlc_signatures: r.htlc_signatures.clone(),
        };
        if record.holder_number() == Some(n.0) {
            // A retry of the latest is answered again if it is the same.
            if record.holder.as_ref() == Some(&candidate) {
                return Ok((candidate, Verdict::Retry));
            }
        }
        let Rebuilt { tx, .. } = commitment::rebuild(params, setup, true, &data, &self.secp)?;
        let trusted = tx.trust();
        // The peer's signatures first: a commitment it did not sign is
        // not a commitment at all.
        let built = trusted.built_transaction();
        let cp_sig = parse_signature("counterparty_signature", &r.counterparty_signature)?;
        let cp_funding = params
            .counterparty_pubkeys()
            .ok_or_else(|| SignerError::internal("no counterparty keys"))?
            .funding_pubkey;
        let sighash = commitment::funding_sighash(&built.transaction, params)?;
        self.secp.verify_ecdsa(&sighash, &cp_sig, &cp_funding).map_err(|_| {
            SignerError::invalid(format!(
                "channel {id}: the counterparty's signature does not match holder commitment {n} as rebuilt by the signer"
            ))
        })?;
        let htlcs = commitment::htlc_sighashes(
            &tx,
            params.as_holder_broadcastable().contest_delay(),
            is_anchors(setup),
        )?;
        if htlcs.len() != r.htlc_signatures.len() {
            return Err(SignerError::invalid(format!(
                "channel {id}: {} HTLC signatures for {} HTLC outputs",
                r.htlc_signatures.len(),
                htlcs.len()
            )));
        }
        let cp_htlc_key = trusted.keys().countersignatory_htlc_key.to_public_key();
        for (i, ((_, msg), sig)) in htlcs.iter().zip(&r.htlc_signatures).enumerate() {
            let sig = parse_signature("htlc_signature", sig)?;
            self.secp
                .verify_ecdsa(msg, &sig, &cp_htlc_key)
                .map_err(|_| {
                    SignerError::invalid(format!(
                        "channel {id}: HTLC signature {i} of commitment {n} is invalid"
                    ))
                })?;
        }
        let mut accepted = record.clone();
        accepted.holder = Some(candidate.clone());
        let shown = preimage_hashes(&r.outbound_htlc_preimages)?;
        let verdict = crate::policy::commitment::validate(
            &Proposed {
                id,
                record,
                setup,
                holder: true,
                data: &data,
                built: &trusted,
                contest_delay: params.as_holder_broadcastable().contest_delay(),
                shown_hashes: &shown,
                accepted: &accepted,
            },
            &self.facts(),
        )?;

        Ok((candidate, verdict))
    }

    pub(crate) fn validate_counterparty_revocation(
        &mut self,
        r: &pb::ValidateCounterpartyRevocationRequest,
    ) -> Result<pb::ValidateCounterpartyRevocationReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let n = CommitmentNumber::new(r.commitment_number)?;
        let secret = SecretKey::from_slice(&parse_32("secret", &r.secret)?)
            .map_err(|_| SignerError::invalid("secret is not a valid secret key"))?;
        let record = self.channel(&id)?;
        let secrets = counterparty_secrets(record)?;
        let point = PublicKey::from_secret_key(&self.secp, &secret);
        let encoded = match validate_counterparty_revocation(
            &id,
            record,
            &secrets,
            n,
            secret.secret_bytes(),
            &point,
            &self.policy,
        )? {
            Revocation::Known => return Ok(pb::ValidateCounterpartyRevocationReply {}),
            Revocation::New(encoded) => encoded,
        };
        let mut updated = record.clone();
        updated.counterparty_secrets = encoded;
        if updated
            .counterparty_previous
            .as_ref()
            .is_some_and(|c| c.commitment_number == n.0)
        {
            updated.counterparty_previous = None;
        }
        // HTLCs only the revoked commitment carried leave the ledger.
        let outcome = crate::policy::ledger::apply(
            &crate::policy::ledger::Update {
                id: &id,
                record,
                after: crate::policy::facts::Live::of(&updated),
                shown_hashes: &[],
            },
            &self.facts(),
        )?;
        updated.outgoing = outcome.outgoing;
        updated.covering = outcome.covering;
        let mut writes: Vec<_> = outcome.others.into_iter().collect();
        writes.push((id, updated));
        self.commit_records(writes, Vec::new(), outcome.meta)?;
        Ok(pb::ValidateCounterpartyRevocationReply {})
    }

    pub(crate) fn sign_counterparty_commitment(
        &mut self,
        r: &pb::SignCounterpartyCommitmentRequest,
    ) -> Result<pb::SignCounterpartyCommitmentReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        let data = r
            .commitment
            .as_ref()
            .ok_or_else(|| SignerError::invalid("missing commitment"))?;
        let Rebuilt { tx, .. } = commitment::rebuild(&params, setup, false, data, &self.secp)?;
        let trusted = tx.trust();
        let mut accepted = record.clone();
        if accepted
            .counterparty
            .as_ref()
            .is_none_or(|c| c.commitment_number != data.commitment_number)
        {
            accepted.counterparty_previous = accepted.counterparty.take();
        }
        accepted.counterparty = Some(data.clone());
        let shown = preimage_hashes(&r.outbound_htlc_preimages)?;
        let verdict = crate::policy::commitment::validate(
            &Proposed {
                id: &id,
                record,
                setup,
                holder: false,
                data,
                built: &trusted,
                contest_delay: params.as_counterparty_broadcastable().contest_delay(),
                shown_hashes: &shown,
                accepted: &accepted,
            },
            &self.facts(),
        )?;
        let secrets = self.secrets(&id);
        let sighash =
            commitment::funding_sighash(&trusted.built_transaction().transaction, &params)?;
        let signature = self.sign(&sighash, &secrets.funding_key);
        let point = commitment::parse_pubkey("per_commitment_point", &data.per_commitment_point)?;
        let htlc_key = chan_utils::derive_private_key(&self.secp, &point, &secrets.htlc_base_key);
        let htlc_signatures = commitment::htlc_sighashes(
            &tx,
            params.as_counterparty_broadcastable().contest_delay(),
            is_anchors(setup),
        )?
        .iter()
        .map(|(_, msg)| self.sign(msg, &htlc_key).serialize_compact().to_vec())
        .collect();
        if let Verdict::New(changes) = verdict {
            let (others, meta) = changes.apply(&mut accepted, false);
            let mut writes: Vec<_> = others.into_iter().collect();
            writes.push((id, accepted));
            self.commit_records(writes, Vec::new(), meta)?;
        }
        Ok(pb::SignCounterpartyCommitmentReply {
            signature: signature.serialize_compact().to_vec(),
            htlc_signatures,
        })
    }

    /// The latest validated holder commitment, checked to be unrevoked, rebuilt.
    pub(crate) fn latest_holder(
        &self,
        id: &ChannelKeysId,
        number: u64,
    ) -> Result<(Rebuilt, ChannelTransactionParameters), SignerError> {
        let (record, setup, params) = self.set_up_channel(id)?;
        let n = CommitmentNumber::new(number)?;
        validate_holder_broadcast(&self.policy, id, record, n)?;
        let holder = record
            .holder
            .as_ref()
            .and_then(|h| h.commitment.as_ref())
            .ok_or_else(|| {
                SignerError::precondition(format!("channel {id}: no validated holder commitment"))
            })?;
        let rebuilt = commitment::rebuild(&params, setup, true, holder, &self.secp)?;
        Ok((rebuilt, params))
    }

    pub(crate) fn sign_holder_commitment(
        &mut self,
        r: &pb::SignHolderCommitmentRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (rebuilt, params) = self.latest_holder(&id, r.commitment_number)?;
        let sighash = commitment::funding_sighash(
            &rebuilt.tx.trust().built_transaction().transaction,
            &params,
        )?;
        let record = self.channel(&id)?;
        // Remember the lowest number ever signed for broadcast.
        let lowest = record
            .holder_signed_number
            .map_or(r.commitment_number, |s| s.min(r.commitment_number));
        if record.holder_signed_number != Some(lowest) {
            let mut updated = record.clone();
            updated.holder_signed_number = Some(lowest);
            self.commit_channel(id, updated, None)?;
        }
        tracing::warn!(channel = %id, number = r.commitment_number, "signed holder commitment for broadcast (force close)");
        Ok(sig_reply(
            self.sign(&sighash, &self.secrets(&id).funding_key),
        ))
    }

    pub(crate) fn sign_closing_transaction(
        &mut self,
        r: &pb::SignClosingTransactionRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        let funding = commitment::parse_outpoint(setup.funding_outpoint.as_ref())?;
        let mut tx = chan_utils::build_closing_transaction(
            Amount::from_sat(r.to_holder_value_sat),
            Amount::from_sat(r.to_counterparty_value_sat),
            ScriptBuf::from_bytes(r.to_holder_script.clone()),
            ScriptBuf::from_bytes(r.to_counterparty_script.clone()),
            funding,
        );
        tx.lock_time = LockTime::from_consensus(r.lock_time);
        close_rules::validate_close(tx.weight().to_wu(), &self.facts(), &id, record, setup, r)?;
        let sighash = commitment::funding_sighash(&tx, &params)?;
        if !record.closing_signed {
            let mut updated = record.clone();
            updated.closing_signed = true;
            self.commit_channel(id, updated, None)?;
        }
        Ok(sig_reply(
            self.sign(&sighash, &self.secrets(&id).funding_key),
        ))
    }

    pub(crate) fn sign_channel_announcement(
        &self,
        r: &pb::SignChannelAnnouncementRequest,
    ) -> Result<pb::SignChannelAnnouncementReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (_, _, params) = self.set_up_channel(&id)?;
        if r.unsigned_announcement.len() > 65_535 {
            return Err(SignerError::invalid("channel_announcement too long"));
        }
        let mut cursor = &r.unsigned_announcement[..];
        let msg = UnsignedChannelAnnouncement::read_from_fixed_length_buffer(&mut cursor)
            .map_err(|_| SignerError::invalid("malformed channel_announcement"))?;
        if !cursor.is_empty() {
            return Err(SignerError::invalid(
                "trailing bytes after channel_announcement",
            ));
        }
        let node = NodeId::from_pubkey(&self.node_id());
        let funding = NodeId::from_pubkey(&params.holder_pubkeys.funding_pubkey);
        crate::policy::node::check_announcement_keys(&self.policy, &msg, &node, &[funding])?;
        let digest =
            Message::from_digest(sha256d::Hash::hash(&r.unsigned_announcement).to_byte_array());
        Ok(pb::SignChannelAnnouncementReply {
            node_signature: self
                .sign(&digest, self.keys.node_secret())
                .serialize_compact()
                .to_vec(),
            bitcoin_signature: self
                .sign(&digest, &self.secrets(&id).funding_key)
                .serialize_compact()
                .to_vec(),
        })
    }
}
