//! The peer's side of a channel: its revocations, checked and kept
//! (`policy::revocation`), and our signatures on its commitments
//! (`policy::commitment`).

use alloc::vec::Vec;

use bitcoin::secp256k1::{PublicKey, SecretKey};
use lnpd_proto::signer::{self as pb};

use super::shared::preimage_hashes;
use crate::commitment::{self, parse_32};
use crate::error::SignerError;
use crate::policy::commitment::{Proposed, Verdict};
use crate::policy::revocation::{validate_counterparty_revocation, Revocation};
use crate::revocation::counterparty_secrets;
use crate::signer::Signer;
use crate::state::CommitmentRecord;
use crate::store::Store;
use crate::{ChannelKeysId, CommitmentNumber};

impl<S: Store> Signer<S> {
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
        let data = &CommitmentRecord::from_wire(
            r.commitment
                .as_ref()
                .ok_or_else(|| SignerError::invalid("missing commitment"))?,
        )?;
        let secrets = self.secrets(&id);
        let built = crate::counterparty_commitment::build(
            &params,
            setup,
            data,
            &secrets.revocation_base_key,
            &self.secp,
        )?;
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
                built: built.built(),
                contest_delay: params.as_counterparty_broadcastable().contest_delay(),
                shown_hashes: &shown,
                accepted: &accepted,
            },
            &self.facts(),
        )?;
        let sighash = commitment::funding_sighash(&built.transaction, &params)?;
        let signature = self.sign(&sighash, &secrets.funding_key);
        let sighashes = built.htlc_sighashes()?;
        let mut htlc_signatures = Vec::with_capacity(sighashes.len());
        if !sighashes.is_empty() {
            // Our HTLC key of this commitment, from the base point the
            // channel's parameters already carry.
            let htlc_key = crate::keys::derive_private_key(
                &built.per_commitment_point,
                &secrets.htlc_base_key,
                &params.holder_pubkeys.htlc_basepoint.to_public_key(),
            )?;
            for (_, msg) in &sighashes {
                htlc_signatures.push(self.sign(msg, &htlc_key).serialize_compact().to_vec());
            }
        }
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
}
