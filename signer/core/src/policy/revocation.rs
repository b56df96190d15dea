//! Validators of revocations, both ways, and of a holder commitment signed
//! for broadcast (`revoke-next-validated`, `revoke-not-closed`,
//! `revoke-secret-valid`, `commitment-holder-not-revoked`).

use alloc::format;
use alloc::vec::Vec;

use bitcoin::secp256k1::PublicKey;
use lightning::ln::chan_utils::CounterpartyCommitmentSecrets;
use lightning::util::ser::Writeable;

use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};
use crate::revocation::{known_secret, revoked_count};
use crate::state::ChannelRecord;
use crate::{ChannelKeysId, CommitmentNumber};

/// What releasing our secret of holder commitment `n` takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// Released before: the same secret again, nothing to record.
    Again,
    /// A new revocation, to record before the secret leaves.
    New,
}

/// The validator of `ReleaseCommitmentSecret`: the secret of state `n`
/// leaves only once state `n + 1` was countersigned and validated, never
/// after a mutual close, and never for a state signed for broadcast (nor
/// any later one: releasing `n` reveals every older secret too).
pub fn validate_release(
    policy: &PolicyConfig,
    id: &ChannelKeysId,
    record: &ChannelRecord,
    n: CommitmentNumber,
) -> Result<Release, SignerError> {
    if record.holder_revoked_through.is_some_and(|t| t >= n.0) {
        return Ok(Release::Again);
    }
    policy.check(RuleId::RevokeNotClosed, !record.closing_signed, || {
        format!("channel {id}: a closing transaction was signed; no more revocations")
    })?;
    // Asked for a state the record has not reached: LDK asks only after
    // it validated the next one, so the record is older than that.
    policy.check(
        RuleId::StateRollbackDetected,
        record.holder_number().is_none_or(|h| n.0 <= h),
        || {
            format!(
                "channel {id}: secret of holder commitment {n} asked, but the signer's record is at {}: \
                 the signer's state is older than what it validated",
                record.holder_number().map_or("no commitment".into(), |h| format!("#{h}"))
            )
        },
    )?;
    let next_validated = record.holder_number().is_some_and(|h| h > n.0);
    policy.check(RuleId::RevokeNextValidated, next_validated, || {
        format!(
            "channel {id}: secret of holder commitment {n} asked before commitment #{} was validated (latest validated: {})",
            n.0 + 1,
            record.holder_number().map_or("none".into(), |h| format!("#{h}"))
        )
    })?;
    policy.check(
        RuleId::CommitmentHolderNotRevoked,
        record.holder_signed_number.is_none_or(|signed| n.0 < signed),
        || {
            format!(
                "channel {id}: holder commitment #{} was signed for broadcast; secret {n} would revoke it",
                record.holder_signed_number.unwrap_or_default()
            )
        },
    )?;
    Ok(Release::New)
}

/// The validator of signing our holder commitment `n` for broadcast: the
/// latest validated one, not revoked.
pub fn validate_holder_broadcast(
    policy: &PolicyConfig,
    id: &ChannelKeysId,
    record: &ChannelRecord,
    n: CommitmentNumber,
) -> Result<(), SignerError> {
    policy.check(
        RuleId::CommitmentHolderNotRevoked,
        record.holder_revoked_through.is_none_or(|t| t < n.0),
        || format!("channel {id}: holder commitment {n} is revoked"),
    )?;
    policy.check(
        RuleId::StateRollbackDetected,
        record.holder_number().is_none_or(|h| n.0 <= h),
        || {
            format!(
                "channel {id}: holder commitment {n} asked for broadcast, but the signer's record is at {}: \
                 the signer's state is older than what it validated",
                record.holder_number().map_or("no commitment".into(), |h| format!("#{h}"))
            )
        },
    )?;
    match record.holder_number() {
        Some(h) if h == n.0 => Ok(()),
        Some(h) => Err(SignerError::precondition(format!(
            "channel {id}: holder commitment {n} is not the latest validated (#{h})"
        ))),
        None => Err(SignerError::precondition(format!(
            "channel {id}: no validated holder commitment"
        ))),
    }
}

/// What the peer's revocation of its commitment `n` does.
#[derive(Debug)]
pub enum Revocation {
    /// Known already (the same secret): nothing to record.
    Known,
    /// New: the peer's secrets with it, encoded for the record.
    New(Vec<u8>),
}

/// The validator of `ValidateCounterpartyRevocation`: revocations come in
/// order, a secret once known never changes, the secret matches the point
/// of the commitment we signed with that number, and it is consistent with
/// the earlier secrets (BOLT 3 compact storage). `point` is the public key
/// of the secret given.
pub fn validate_counterparty_revocation(
    id: &ChannelKeysId,
    record: &ChannelRecord,
    secrets: &CounterpartyCommitmentSecrets,
    n: CommitmentNumber,
    secret: [u8; 32],
    point: &PublicKey,
    policy: &PolicyConfig,
) -> Result<Revocation, SignerError> {
    let expected = revoked_count(secrets);
    if n.0 > expected {
        return Err(SignerError::policy(
            RuleId::RevokeSecretValid,
            format!("channel {id}: counterparty commitment {n} revoked before #{expected}; revocations come in order"),
        ));
    }
    if let Some(known) = known_secret(secrets, n) {
        if known == secret {
            return Ok(Revocation::Known);
        }
        return Err(SignerError::policy(
            RuleId::RevokeSecretValid,
            format!(
                "channel {id}: a different secret for counterparty commitment {n} is already known"
            ),
        ));
    }
    let recorded_point = [&record.counterparty_previous, &record.counterparty]
        .into_iter()
        .flatten()
        .find(|c| c.commitment_number == n.0)
        .map(|c| c.per_commitment_point.clone())
        .ok_or_else(|| {
            SignerError::precondition(format!(
                "channel {id}: counterparty commitment {n} is not one the signer signed and awaits revocation for"
            ))
        })?;
    policy.check(
        RuleId::RevokeSecretValid,
        point.serialize()[..] == recorded_point[..],
        || format!("channel {id}: secret does not match the point of counterparty commitment {n}"),
    )?;
    let mut updated = secrets.clone();
    if updated.provide_secret(n.to_ldk(), secret).is_err() {
        return Err(SignerError::policy(
            RuleId::RevokeSecretValid,
            format!("channel {id}: secret for {n} is inconsistent with the earlier secrets (BOLT 3 compact storage)"),
        ));
    }
    Ok(Revocation::New(updated.encode()))
}
