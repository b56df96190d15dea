//! Our side of a channel: per-commitment points and secrets, validation
//! of the commitment the peer signed for us (`policy::commitment`), the
//! release of the previous secret (`policy::revocation`), and the
//! signature of our latest commitment for a force close.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use lightning::ln::chan_utils::ChannelTransactionParameters;
use lnpd_proto::signer::{self as pb};

use super::shared::{preimage_hashes, sig_reply};
use crate::commitment::{self, parse_signature, Rebuilt};
use crate::error::SignerError;
use crate::policy::commitment::{Proposed, Verdict};
use crate::policy::resources::check_parked_first_commitment;
use crate::policy::revocation::{validate_holder_broadcast, validate_release, Release};
use crate::signer::Signer;
use crate::state::{ChannelRecord, HolderRecord, ParkedValidation};
use crate::store::Store;
use crate::{ChannelKeysId, CommitmentNumber};

impl<S: Store> Signer<S> {
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
        let r = ParkedValidation::from_wire(r)?;
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
    pub(crate) fn park_first_holder_commitment(
        &mut self,
        id: ChannelKeysId,
        record: ChannelRecord,
        r: ParkedValidation,
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
        data.ldk_htlcs()?;
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
    pub(crate) fn check_holder_commitment(
        &self,
        id: &ChannelKeysId,
        record: &ChannelRecord,
        params: &ChannelTransactionParameters,
        r: &ParkedValidation,
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
        let htlcs =
            commitment::htlc_sighashes(&tx, params.as_holder_broadcastable().contest_delay())?;
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
                built: commitment::Built::of(&trusted),
                contest_delay: params.as_holder_broadcastable().contest_delay(),
                shown_hashes: &shown,
                accepted: &accepted,
            },
            &self.facts(),
        )?;

        Ok((candidate, verdict))
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
}
