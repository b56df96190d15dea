//! SignerProvider and ChannelSigner operations: channel set-up, commitment
//! points and secrets, commitment validation and signing, second-stage,
//! justice, closing, announcement and anchor signatures.
//!
//! Each operation: look up the channel, rebuild the transaction, run policy,
//! persist the new state, then sign.

use alloc::format;
use alloc::vec::Vec;

use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, SecretKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{absolute::LockTime, Amount, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use lightning::ln::chan_utils::{
    self, ChannelPublicKeys, ChannelTransactionParameters, CounterpartyCommitmentSecrets,
    HTLCOutputInCommitment, TxCreationKeys,
};
use lightning::ln::msgs::UnsignedChannelAnnouncement;
use lightning::routing::gossip::NodeId;
use lightning::util::ser::{LengthReadable, Readable, Writeable};
use lnpd_proto::signer::{self as pb, CommitmentData, SetupChannelRequest};

use crate::commitment::{
    self, channel_keys_to_wire, is_anchors, p2wsh_sighash, parse_32, parse_htlcs, parse_pubkey,
    parse_signature, Rebuilt, ANCHOR_OUTPUT_VALUE_SAT,
};
use crate::error::SignerError;
use crate::handler::Signer;
use crate::keys::{payment_hash, ChannelSecrets};
use crate::policy::{channel as channel_rules, close as close_rules, RuleId};
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

fn input_index(tx: &Transaction, index: u32) -> Result<usize, SignerError> {
    let i = index as usize;
    if i >= tx.input.len() {
        return Err(SignerError::invalid(format!(
            "input_index {i} out of range ({} inputs)",
            tx.input.len()
        )));
    }
    Ok(i)
}

fn sig_reply(sig: Signature) -> pb::SignatureReply {
    pb::SignatureReply {
        signature: sig.serialize_compact().to_vec(),
    }
}

/// Whether two commitments carry the same data (the point included).
fn same_commitment(a: &CommitmentData, b: &CommitmentData) -> bool {
    a == b
}

impl<S: Store> Signer<S> {
    fn secrets(&self, id: &ChannelKeysId) -> ChannelSecrets {
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

    fn sign(&self, msg: &Message, key: &SecretKey) -> Signature {
        self.secp.sign_ecdsa(msg, key)
    }

    /// A sweep pays only the signer's wallet and unlocks near the chain tip.
    fn check_sweep(&self, tx: &Transaction) -> Result<(), SignerError> {
        crate::policy::expiry::check_sweep_locktime(
            &self.policy,
            tx.lock_time,
            self.chain_height(),
            self.now,
        )?;
        self.check_sweep_outputs(tx, None)
    }

    /// Every output of a transaction we sign alone pays the signer's wallet
    /// (`except`: an output fixed by BOLT 3, such as a second-stage HTLC output).
    fn check_sweep_outputs(
        &self,
        tx: &Transaction,
        except: Option<usize>,
    ) -> Result<(), SignerError> {
        for (i, o) in tx.output.iter().enumerate() {
            if Some(i) == except {
                continue;
            }
            self.policy.check(
                RuleId::SweepDestinationAllowed,
                self.is_allowed_destination(&o.script_pubkey),
                || format!("output {i} of the sweep pays a script outside the signer's wallet"),
            )?;
        }
        Ok(())
    }

    /// The channel's record and recorded set-up; errors if not set up.
    fn set_up_channel(
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
        self.commit_channel(id, ChannelRecord::new(&id.0, true), Some(meta))?;
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
        let mut record = match self.channels.get(&id) {
            Some(rec) => rec.clone(),
            None => ChannelRecord::new(&id.0, false),
        };
        if let Some(existing) = &record.setup {
            if *existing == r {
                return Ok(pb::SetupChannelReply {});
            }
            let rule = if existing.funding_outpoint != r.funding_outpoint {
                RuleId::ChannelKeysIdUnique
            } else {
                RuleId::ChannelParamsImmutable
            };
            return Err(self.policy_refusal(rule, || {
                format!("channel {id} was already set up with other parameters")
            }));
        }
        channel_rules::check_setup(&self.policy, &r, |s| self.is_allowed_destination(s))?;
        let params = commitment::channel_parameters(&r, self.holder_pubkeys(&id))?;
        record.setup = Some(r);
        if let Some(parked) = record.parked_holder_validation.take() {
            let holder = self.check_holder_commitment(&id, &record, &params, &parked)?;
            record.holder = Some(holder);
            tracing::info!(channel = %id, "validated the parked first holder commitment");
        }
        self.commit_channel(id, record, None)?;
        tracing::info!(channel = %id, "channel set up");
        Ok(pb::SetupChannelReply {})
    }

    /// A refusal that no warn mode can turn into a signature (used where
    /// going on would corrupt the channel state).
    fn policy_refusal(
        &self,
        rule: RuleId,
        why: impl FnOnce() -> alloc::string::String,
    ) -> SignerError {
        SignerError::policy(rule, why())
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
        let already = record.holder_revoked_through.is_some_and(|t| t >= n.0);
        if !already {
            self.policy
                .check(RuleId::RevokeNotClosed, !record.closing_signed, || {
                    format!("channel {id}: a closing transaction was signed; no more revocations")
                })?;
            let next_validated = record.holder_number().is_some_and(|h| h > n.0);
            self.policy.check(RuleId::RevokeNextValidated, next_validated, || {
                format!(
                    "channel {id}: secret of holder commitment {n} asked before commitment #{} was validated (latest validated: {})",
                    n.0 + 1,
                    record.holder_number().map_or("none".into(), |h| format!("#{h}"))
                )
            })?;
            self.policy.check(
                RuleId::CommitmentHolderNotRevoked,
                // Releasing n reveals every older secret too.
                record.holder_signed_number.is_none_or(|signed| n.0 < signed),
                || format!("channel {id}: holder commitment #{} was signed for broadcast; secret {n} would revoke it", record.holder_signed_number.unwrap_or_default()),
            )?;
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
            // Inbound channel: LDK validates the first holder commitment before
            // it hands over the channel parameters. Keep it; it is checked at
            // set-up, before anything else is signed for the channel.
            if data.commitment_number != 0 {
                return Err(SignerError::precondition(format!(
                    "channel {id} is not set up; only its first commitment can be validated early"
                )));
            }
            parse_htlcs(data)?;
            parse_signature("counterparty_signature", &r.counterparty_signature)?;
            let mut updated = record;
            updated.parked_holder_validation = Some(r);
            self.commit_channel(id, updated, None)?;
            tracing::info!(channel = %id, "first holder commitment parked until set-up");
            return Ok(pb::ValidateHolderCommitmentReply {
                parked: true,
                ..Default::default()
            });
        }
        let (_, _, params) = self.set_up_channel(&id)?;
        let holder = self.check_holder_commitment(&id, &record, &params, &r)?;
        let n = CommitmentNumber::new(data.commitment_number)?;
        let previous = record.holder.as_ref().and_then(|h| h.commitment.as_ref());
        if let (Some(previous), Some(setup)) = (previous, record.setup.as_ref()) {
            if previous.commitment_number < n.0 {
                crate::policy::balance::check_update(
                    &self.policy,
                    setup,
                    true,
                    previous,
                    data,
                    &preimages(&r.outbound_htlc_preimages)?,
                )?;
            }
        }
        let mut updated = record.clone();
        updated.holder = Some(holder);
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
        if updated != record {
            self.commit_channel(id, updated, None)?;
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

    /// Rebuilds and checks a holder commitment the peer countersigned.
    fn check_holder_commitment(
        &self,
        id: &ChannelKeysId,
        record: &ChannelRecord,
        params: &ChannelTransactionParameters,
        r: &pb::ValidateHolderCommitmentRequest,
    ) -> Result<HolderRecord, SignerError> {
        let setup = record
            .setup
            .as_ref()
            .ok_or_else(|| SignerError::internal("no setup"))?;
        let mut data = r
            .commitment
            .clone()
            .ok_or_else(|| SignerError::invalid("missing commitment"))?;
        let n = CommitmentNumber::new(data.commitment_number)?;
        self.policy
            .check(RuleId::CloseThenFrozen, !record.closing_signed, || {
                format!("channel {id}: a closing transaction was signed; no new commitment")
            })?;
        // Our own point for this number; a different one in the request is refused.
        let point = self.our_point(id, n);
        if !data.per_commitment_point.is_empty() && data.per_commitment_point != point.serialize() {
            return Err(self.policy_refusal(RuleId::CommitmentKeys, || {
                format!("channel {id}: per-commitment point of holder commitment {n} is not ours")
            }));
        }
        data.per_commitment_point = point.serialize().to_vec();

        let candidate = HolderRecord {
            commitment: Some(data.clone()),
            counterparty_signature: r.counterparty_signature.clone(),
            htlc_signatures: r.htlc_signatures.clone(),
        };
        match record.holder_number() {
            None => self
                .policy
                .check(RuleId::CommitmentNumberSequence, n.0 == 0, || {
                    format!("channel {id}: first holder commitment must be #0, got {n}")
                })?,
            Some(h) if h == n.0 => {
                // A retry of the latest one is fine if it is the same commitment.
                if record.holder.as_ref() == Some(&candidate) {
                    return Ok(candidate);
                }
                return Err(self.policy_refusal(RuleId::CommitmentNumberSequence, || {
                    format!("channel {id}: holder commitment {n} was already validated with other content")
                }));
            }
            Some(h) => {
                if record.holder_revoked_through.is_some_and(|t| t >= n.0) {
                    return Err(self.policy_refusal(RuleId::CommitmentHolderNotRevoked, || {
                        format!("channel {id}: holder commitment {n} is already revoked")
                    }));
                }
                self.policy
                    .check(RuleId::CommitmentNumberSequence, n.0 == h + 1, || {
                        format!("channel {id}: holder commitment {n} does not follow #{h}")
                    })?
            }
        }
        if n.0 == 0 {
            channel_rules::check_first_commitment(&self.policy, setup, true, &data)?;
        }

        let Rebuilt { tx, .. } =
            commitment::rebuild(params, setup, true, &data, &self.policy, &self.secp)?;
        let trusted = tx.trust();
        crate::policy::commitment_tx::check_given(
            &self.policy,
            &trusted,
            &data.transaction,
            setup.holder_dust_limit_sat,
            params.as_holder_broadcastable().contest_delay(),
        )?;
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
        Ok(candidate)
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
        let mut secrets = self.counterparty_secrets(record)?;
        let expected = revoked_count(&secrets);
        if n.0 > expected {
            return Err(self.policy_refusal(RuleId::RevokeSecretValid, || {
                format!("channel {id}: counterparty commitment {n} revoked before #{expected}; revocations come in order")
            }));
        }
        if let Some(known) = known_secret(&secrets, n) {
            if known == secret.secret_bytes() {
                return Ok(pb::ValidateCounterpartyRevocationReply {});
            }
            return Err(self.policy_refusal(RuleId::RevokeSecretValid, || {
                format!("channel {id}: a different secret for counterparty commitment {n} is already known")
            }));
        }
        let recorded_point = [&record.counterparty_previous, &record.counterparty]
            .into_iter()
            .flatten()
            .find(|c| c.commitment_number == n.0)
            .map(|c| c.per_commitment_point.clone());
        let Some(recorded_point) = recorded_point else {
            return Err(SignerError::precondition(format!(
                "channel {id}: counterparty commitment {n} is not one the signer signed and awaits revocation for"
            )));
        };
        let point = PublicKey::from_secret_key(&self.secp, &secret);
        self.policy.check(
            RuleId::RevokeSecretValid,
            point.serialize()[..] == recorded_point[..],
            || {
                format!(
                    "channel {id}: secret does not match the point of counterparty commitment {n}"
                )
            },
        )?;
        if secrets
            .provide_secret(n.to_ldk(), secret.secret_bytes())
            .is_err()
        {
            return Err(self.policy_refusal(RuleId::RevokeSecretValid, || {
                format!("channel {id}: secret for {n} is inconsistent with the earlier secrets (BOLT 3 compact storage)")
            }));
        }
        let mut updated = record.clone();
        updated.counterparty_secrets = secrets.encode();
        if updated
            .counterparty_previous
            .as_ref()
            .is_some_and(|c| c.commitment_number == n.0)
        {
            updated.counterparty_previous = None;
        }
        self.commit_channel(id, updated, None)?;
        Ok(pb::ValidateCounterpartyRevocationReply {})
    }

    fn counterparty_secrets(
        &self,
        record: &ChannelRecord,
    ) -> Result<CounterpartyCommitmentSecrets, SignerError> {
        if record.counterparty_secrets.is_empty() {
            return Ok(CounterpartyCommitmentSecrets::new());
        }
        let mut cursor = &record.counterparty_secrets[..];
        CounterpartyCommitmentSecrets::read(&mut cursor)
            .map_err(|_| SignerError::internal("corrupt counterparty secrets in store"))
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
        let n = CommitmentNumber::new(data.commitment_number)?;
        self.policy
            .check(RuleId::CloseThenFrozen, !record.closing_signed, || {
                format!("channel {id}: a closing transaction was signed; no new commitment")
            })?;
        let is_new = match record.counterparty.as_ref() {
            None => {
                self.policy
                    .check(RuleId::CommitmentNumberSequence, n.0 == 0, || {
                        format!("channel {id}: first counterparty commitment must be #0, got {n}")
                    })?;
                true
            }
            Some(last) if last.commitment_number == n.0 => {
                if !same_commitment(last, data) {
                    return Err(self.policy_refusal(RuleId::CommitmentNumberSequence, || {
                        format!("channel {id}: counterparty commitment {n} was already signed with other content")
                    }));
                }
                false
            }
            Some(last) => {
                self.policy.check(
                    RuleId::CommitmentNumberSequence,
                    n.0 == last.commitment_number + 1,
                    || {
                        format!(
                            "channel {id}: counterparty commitment {n} does not follow #{}",
                            last.commitment_number
                        )
                    },
                )?;
                true
            }
        };
        if n.0 >= 2 {
            let secrets = self.counterparty_secrets(record)?;
            let revoked = known_secret(&secrets, CommitmentNumber(n.0 - 2)).is_some();
            self.policy
                .check(RuleId::CommitmentPreviousRevoked, revoked, || {
                    format!(
                        "channel {id}: the peer has not revoked commitment #{} before we sign {n}",
                        n.0 - 2
                    )
                })?;
        }
        if n.0 == 0 {
            channel_rules::check_first_commitment(&self.policy, setup, false, data)?;
        }
        let Rebuilt { tx, .. } =
            commitment::rebuild(&params, setup, false, data, &self.policy, &self.secp)?;
        crate::policy::commitment_tx::check_given(
            &self.policy,
            &tx.trust(),
            &data.transaction,
            setup.counterparty_dust_limit_sat,
            params.as_counterparty_broadcastable().contest_delay(),
        )?;
        if is_new {
            crate::policy::expiry::check_htlc_expiries(
                &self.policy,
                record.counterparty.as_ref(),
                data,
                self.chain_height(),
            )?;
        }
        let mut own_payments = Vec::new();
        if let (true, Some(previous)) = (is_new, record.counterparty.as_ref()) {
            crate::policy::balance::check_update(
                &self.policy,
                setup,
                false,
                previous,
                data,
                &preimages(&r.outbound_htlc_preimages)?,
            )?;
            own_payments = crate::policy::payments::check_new_htlcs(
                &self.policy,
                previous,
                data,
                |hash| self.incoming_htlc_msat(&id, hash),
                |hash| self.shown_invoice(hash),
                self.recent_payments_sat(),
                self.now,
            )?
            .own;
        }
        let secrets = self.secrets(&id);
        let sighash =
            commitment::funding_sighash(&tx.trust().built_transaction().transaction, &params)?;
        let signature = self.sign(&sighash, &secrets.funding_key);
        let point = parse_pubkey("per_commitment_point", &data.per_commitment_point)?;
        let htlc_key = chan_utils::derive_private_key(&self.secp, &point, &secrets.htlc_base_key);
        let htlc_signatures = commitment::htlc_sighashes(
            &tx,
            params.as_counterparty_broadcastable().contest_delay(),
            is_anchors(setup),
        )?
        .iter()
        .map(|(_, msg)| self.sign(msg, &htlc_key).serialize_compact().to_vec())
        .collect();

        if is_new {
            let mut updated = record.clone();
            updated.counterparty_previous = updated.counterparty.take();
            updated.counterparty = Some(data.clone());
            let meta = self.record_payments(&own_payments);
            self.commit_channel(id, updated, meta)?;
        }
        Ok(pb::SignCounterpartyCommitmentReply {
            signature: signature.serialize_compact().to_vec(),
            htlc_signatures,
        })
    }

    /// The latest validated holder commitment, checked to be unrevoked, rebuilt.
    fn latest_holder(
        &self,
        id: &ChannelKeysId,
        number: u64,
    ) -> Result<(Rebuilt, ChannelTransactionParameters), SignerError> {
        let (record, setup, params) = self.set_up_channel(id)?;
        let n = CommitmentNumber::new(number)?;
        let holder = record
            .holder
            .as_ref()
            .and_then(|h| h.commitment.as_ref())
            .ok_or_else(|| {
                SignerError::precondition(format!("channel {id}: no validated holder commitment"))
            })?;
        self.policy.check(
            RuleId::CommitmentHolderNotRevoked,
            record.holder_revoked_through.is_none_or(|t| t < n.0),
            || format!("channel {id}: holder commitment {n} is revoked"),
        )?;
        if holder.commitment_number != n.0 {
            return Err(SignerError::precondition(format!(
                "channel {id}: holder commitment {n} is not the latest validated (#{})",
                holder.commitment_number
            )));
        }
        let rebuilt = commitment::rebuild(&params, setup, true, holder, &self.policy, &self.secp)?;
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

    pub(crate) fn sign_holder_htlc_transaction(
        &self,
        r: &pb::SignHolderHtlcTransactionRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (rebuilt, _params) = self.latest_holder(&id, r.commitment_number)?;
        let setup = self.set_up_channel(&id)?.1;
        let anchors = is_anchors(setup);
        let trusted = rebuilt.tx.trust();
        let htlc = rebuilt
            .tx
            .nondust_htlcs()
            .iter()
            .find(|h| h.transaction_output_index == Some(r.htlc_output_index))
            .ok_or_else(|| {
                SignerError::invalid(format!(
                    "no HTLC at output {} of holder commitment",
                    r.htlc_output_index
                ))
            })?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let expected = chan_utils::build_htlc_transaction(
            &trusted.txid(),
            rebuilt.tx.negotiated_feerate_per_kw(),
            self.set_up_channel(&id)?
                .2
                .as_holder_broadcastable()
                .contest_delay(),
            htlc,
            trusted.channel_type_features(),
            &trusted.keys().broadcaster_delayed_payment_key,
            &trusted.keys().revocation_key,
        );
        let input_ok = tx.input[i].previous_output == expected.input[0].previous_output
            && tx.input[i].sequence == expected.input[0].sequence;
        self.policy.check(RuleId::HtlcFormat, input_ok, || {
            "HTLC transaction input does not spend that HTLC output with the BOLT 3 sequence".into()
        })?;
        // Peer signed SINGLE|ANYONECANPAY with anchors: our output must sit
        // at our input's index, and other inputs may bump the fee.
        let (ours, wanted) = match (anchors, expected.output.first()) {
            (true, Some(w)) => (tx.output.get(i), w),
            (false, Some(w)) if tx.output.len() == 1 => (tx.output.first(), w),
            _ => (None, &expected.output[0]),
        };
        let format_ok = (!htlc.offered || tx.lock_time == expected.lock_time)
            && (anchors
                || (tx.version == expected.version
                    && tx.lock_time == expected.lock_time
                    && tx.input.len() == 1))
            && ours.is_some();
        self.policy.check(RuleId::HtlcFormat, format_ok, || {
            "HTLC transaction version, locktime or shape differ from BOLT 3's".into()
        })?;
        let ours = ours.ok_or_else(|| SignerError::internal("checked above"))?;
        self.policy.check(RuleId::HtlcKeys, ours.script_pubkey == wanted.script_pubkey, || {
            "HTLC transaction output is not the revocable output of the channel's keys and delay".into()
        })?;
        self.policy.check(RuleId::HtlcFeeRange, ours.value == wanted.value, || {
            format!(
                "HTLC transaction output of {} sat, BOLT 3's fee at the commitment's feerate leaves {} sat",
                ours.value.to_sat(),
                wanted.value.to_sat()
            )
        })?;
        if anchors {
            // Fee-bumping inputs may bring change: it must come back to us.
            self.check_sweep_outputs(&tx, Some(i))?;
        }
        if !htlc.offered {
            let preimage = parse_32("preimage", &r.preimage)?;
            if payment_hash(&preimage) != htlc.payment_hash {
                return Err(SignerError::invalid(
                    "preimage does not match the HTLC's payment hash",
                ));
            }
        }
        self.sign_htlc_spend(&id, &tx, i, htlc, &trusted)
    }

    pub(crate) fn sign_counterparty_htlc_sweep(
        &self,
        r: &pb::SignCounterpartyHtlcSweepRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        let point = parse_pubkey("per_commitment_point", &r.per_commitment_point)?;
        let data = [&record.counterparty, &record.counterparty_previous]
            .into_iter()
            .flatten()
            .find(|c| c.per_commitment_point[..] == point.serialize()[..])
            .ok_or_else(|| {
                SignerError::precondition(format!(
                    "channel {id}: no signed counterparty commitment with that point"
                ))
            })?;
        let wanted = parse_htlcs(&CommitmentData {
            htlcs: r.htlc.iter().cloned().collect(),
            ..Default::default()
        })?;
        let wanted = wanted
            .first()
            .ok_or_else(|| SignerError::invalid("missing htlc"))?;
        let rebuilt = commitment::rebuild(&params, setup, false, data, &self.policy, &self.secp)?;
        let trusted = rebuilt.tx.trust();
        let htlc = find_htlc(rebuilt.tx.nondust_htlcs(), wanted).ok_or_else(|| {
            SignerError::invalid("that HTLC is not in the counterparty commitment")
        })?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let outpoint = bitcoin::OutPoint {
            txid: trusted.txid(),
            vout: htlc.transaction_output_index.unwrap_or(u32::MAX),
        };
        self.policy.check(
            RuleId::HtlcFormat,
            tx.input[i].previous_output == outpoint,
            || "sweep input does not spend that HTLC output".into(),
        )?;
        self.check_sweep(&tx)?;
        self.sign_htlc_spend(&id, &tx, i, htlc, &trusted)
    }

    /// Signs input `i` of `tx`, spending `htlc` of the commitment `trusted`
    /// with our HTLC key for that commitment's point (SIGHASH_ALL).
    fn sign_htlc_spend(
        &self,
        id: &ChannelKeysId,
        tx: &Transaction,
        i: usize,
        htlc: &HTLCOutputInCommitment,
        trusted: &lightning::ln::chan_utils::TrustedCommitmentTransaction<'_>,
    ) -> Result<pb::SignatureReply, SignerError> {
        let keys = trusted.keys();
        let script = chan_utils::get_htlc_redeemscript(htlc, trusted.channel_type_features(), keys);
        let msg = p2wsh_sighash(
            tx,
            i,
            &script,
            htlc.amount_msat / 1000,
            EcdsaSighashType::All,
        )?;
        let key = chan_utils::derive_private_key(
            &self.secp,
            &keys.per_commitment_point,
            &self.secrets(id).htlc_base_key,
        );
        Ok(sig_reply(self.sign(&msg, &key)))
    }

    /// Keys of a revoked counterparty commitment and our revocation secret for it.
    /// The state is named by `number`, or by the secret the peer revealed
    /// (`secret`, when not empty): with every output paying our wallet, a
    /// justice spend signed with any secret can only bring funds home.
    fn revoked_keys(
        &self,
        id: &ChannelKeysId,
        number: u64,
        secret: &[u8],
    ) -> Result<(TxCreationKeys, SecretKey, ChannelTransactionParameters), SignerError> {
        let (record, _setup, params) = self.set_up_channel(id)?;
        let secret = if secret.is_empty() {
            let n = CommitmentNumber::new(number)?;
            known_secret(&self.counterparty_secrets(record)?, n).ok_or_else(|| {
                SignerError::precondition(format!(
                    "channel {id}: counterparty commitment {n} is not revoked"
                ))
            })?
        } else {
            parse_32("per_commitment_secret", secret)?
        };
        let per_commitment_key = SecretKey::from_slice(&secret)
            .map_err(|_| SignerError::invalid("per-commitment secret is not a valid key"))?;
        let point = PublicKey::from_secret_key(&self.secp, &per_commitment_key);
        let cp = params
            .counterparty_pubkeys()
            .ok_or_else(|| SignerError::internal("no counterparty keys"))?;
        let keys = TxCreationKeys::from_channel_static_keys(
            &point,
            cp,
            &params.holder_pubkeys,
            &self.secp,
        );
        let revocation_key = chan_utils::derive_private_revocation_key(
            &self.secp,
            &per_commitment_key,
            &self.secrets(id).revocation_base_key,
        );
        Ok((keys, revocation_key, params))
    }

    pub(crate) fn sign_justice_revoked_output(
        &self,
        r: &pb::SignJusticeRevokedOutputRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (keys, revocation_key, params) =
            self.revoked_keys(&id, r.commitment_number, &r.per_commitment_secret)?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        self.check_sweep(&tx)?;
        let script = chan_utils::get_revokeable_redeemscript(
            &keys.revocation_key,
            params.holder_selected_contest_delay,
            &keys.broadcaster_delayed_payment_key,
        );
        let msg = p2wsh_sighash(&tx, i, &script, r.amount_sat, EcdsaSighashType::All)?;
        Ok(sig_reply(self.sign(&msg, &revocation_key)))
    }

    pub(crate) fn sign_justice_revoked_htlc(
        &self,
        r: &pb::SignJusticeRevokedHtlcRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (keys, revocation_key, params) =
            self.revoked_keys(&id, r.commitment_number, &r.per_commitment_secret)?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let htlcs = parse_htlcs(&CommitmentData {
            htlcs: r.htlc.iter().cloned().collect(),
            ..Default::default()
        })?;
        let htlc = htlcs
            .first()
            .ok_or_else(|| SignerError::invalid("missing htlc"))?;
        self.check_sweep(&tx)?;
        let script = chan_utils::get_htlc_redeemscript(htlc, &params.channel_type_features, &keys);
        let msg = p2wsh_sighash(&tx, i, &script, r.amount_sat, EcdsaSighashType::All)?;
        Ok(sig_reply(self.sign(&msg, &revocation_key)))
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
        close_rules::check_close(
            tx.weight().to_wu(),
            &self.policy,
            &id,
            record,
            setup,
            r,
            |s| self.is_allowed_destination(s),
        )?;
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
        let node = NodeId::from_pubkey(&self.node_id());
        let funding = NodeId::from_pubkey(&params.holder_pubkeys.funding_pubkey);
        let ours = (msg.node_id_1 == node && msg.bitcoin_key_1 == funding)
            || (msg.node_id_2 == node && msg.bitcoin_key_2 == funding);
        if !ours || !cursor.is_empty() {
            return Err(SignerError::invalid(
                "channel_announcement does not pair this node with this channel's funding key",
            ));
        }
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

    pub(crate) fn sign_holder_anchor_input(
        &self,
        r: &pb::SignHolderAnchorInputRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        if !is_anchors(setup) {
            return Err(SignerError::invalid("channel has no anchors"));
        }
        let number = record
            .holder_number()
            .ok_or_else(|| SignerError::precondition("no validated holder commitment"))?;
        let (rebuilt, _) = self.latest_holder(&id, number)?;
        let script =
            chan_utils::get_keyed_anchor_redeemscript(&params.holder_pubkeys.funding_pubkey);
        let spk = script.to_p2wsh();
        let built = &rebuilt.tx.trust().built_transaction().transaction;
        let vout = built
            .output
            .iter()
            .position(|o| o.script_pubkey == spk)
            .ok_or_else(|| {
                SignerError::precondition("latest holder commitment has no anchor of ours")
            })?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let outpoint = bitcoin::OutPoint {
            txid: built.compute_txid(),
            vout: vout as u32,
        };
        self.policy.check(
            RuleId::CommitmentAnchors,
            tx.input[i].previous_output == outpoint,
            || "anchor input does not spend our anchor of the latest holder commitment".into(),
        )?;
        self.check_sweep(&tx)?;
        let msg = p2wsh_sighash(
            &tx,
            i,
            &script,
            ANCHOR_OUTPUT_VALUE_SAT,
            EcdsaSighashType::All,
        )?;
        Ok(sig_reply(self.sign(&msg, &self.secrets(&id).funding_key)))
    }
}

/// The peer's secret for its commitment `n`, if it revealed it. Never asks
/// LDK's compact storage for an index it cannot hold (that asserts).
fn known_secret(secrets: &CounterpartyCommitmentSecrets, n: CommitmentNumber) -> Option<[u8; 32]> {
    let idx = n.to_ldk();
    if idx < secrets.get_min_seen_secret() {
        return None;
    }
    secrets.get_secret(idx)
}

/// How many of its commitments the peer has revoked (they are revoked in order).
fn revoked_count(secrets: &CounterpartyCommitmentSecrets) -> u64 {
    let min = secrets.get_min_seen_secret();
    if min >= 1 << 48 {
        0
    } else {
        crate::types::INITIAL_COMMITMENT_NUMBER - min + 1
    }
}

fn find_htlc<'a>(
    htlcs: &'a [HTLCOutputInCommitment],
    wanted: &HTLCOutputInCommitment,
) -> Option<&'a HTLCOutputInCommitment> {
    htlcs.iter().find(|h| {
        h.offered == wanted.offered
            && h.amount_msat == wanted.amount_msat
            && h.cltv_expiry == wanted.cltv_expiry
            && h.payment_hash == wanted.payment_hash
    })
}

impl<S: Store> Signer<S> {
    /// The largest HTLC with `hash` a peer of another channel than `except`
    /// offers us, in the latest commitment we signed for that peer (msat).
    fn incoming_htlc_msat(&self, except: &ChannelKeysId, hash: &[u8]) -> Option<u64> {
        self.channels
            .iter()
            .filter(|(id, _)| *id != except)
            .filter_map(|(_, r)| r.counterparty.as_ref())
            .flat_map(crate::policy::payments::offered_to_us)
            .filter(|h| h.payment_hash == hash)
            .map(|h| h.amount_msat)
            .max()
    }

    /// What we paid within the velocity window (sat).
    pub(crate) fn recent_payments_sat(&self) -> u64 {
        let window = self.policy.velocity_window_secs;
        self.meta
            .recent_payments
            .iter()
            .filter(|p| p.at.saturating_add(window) > self.now)
            .map(|p| p.sat)
            .sum()
    }

    /// The meta record with `own` payments added (and old ones dropped),
    /// when the velocity control needs them kept.
    fn record_payments(&self, own: &[u64]) -> Option<crate::state::MetaRecord> {
        if own.is_empty() || self.policy.velocity_limit_sat.is_none() {
            return None;
        }
        let mut meta = self.meta.clone();
        let window = self.policy.velocity_window_secs;
        meta.recent_payments
            .retain(|p| p.at.saturating_add(window) > self.now);
        meta.recent_payments
            .extend(own.iter().map(|sat| crate::state::RecentPayment {
                at: self.now,
                sat: *sat,
            }));
        Some(meta)
    }
}

/// Payment preimages from a request, each 32 bytes.
fn preimages(raw: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, SignerError> {
    raw.iter()
        .map(|p| {
            <[u8; 32]>::try_from(p.as_slice())
                .map_err(|_| SignerError::invalid("a preimage is not 32 bytes"))
        })
        .collect()
}
