//! The validator of commitment transactions: the counterparty's, which we
//! sign (the peer may broadcast it), and ours, which we validate (the
//! peer's signature makes it broadcastable by us). One function,
//! [`validate`], checks every rule that applies, in the order
//! `docs/policy.md` lists them:
//!
//! 1. `close-then-frozen`: nothing new after a mutual close was signed;
//! 2. `commitment-number-sequence` (a retry of the latest is answered
//!    again; a number that goes back), `state-rollback-detected` (a number
//!    ahead of the record: the record is older than what was signed),
//!    `commitment-previous-revoked` (theirs),
//!    `commitment-holder-not-revoked` (ours);
//! 3. `commitment-first-no-htlcs` for #0;
//! 4. the shape: `commitment-htlc-count-max`, `commitment-htlc-inflight-max`,
//!    `commitment-fee-range` (the declared feerate, and the actual fee the
//!    outputs leave), `commitment-dust-trimmed`;
//! 5. the node's transaction against the signer's build
//!    (`commitment-input-funding`, `-format`, `-keys`, `-to-self-delay`,
//!    `-anchors`, `-outputs-recognized`, `commitment-dust-trimmed`);
//! 6. the ledger: every HTLC we offer that is new to the channel's live
//!    commitments goes through the payment controls and the expiry window;
//! 7. the balance against the side's previous commitment
//!    (`commitment-balance-conserved`, `commitment-settled-preimage`,
//!    `routing-incoming-claimed`).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use crate::commitment::Built;
use crate::state::{CommitmentRecord, SetupRecord};

use crate::commitment::{commitment_fee_sat, htlc_tx_fee_sat, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::facts::{Facts, Live};
use crate::policy::ledger::{self, Key};
use crate::policy::{balance, channel, commitment_tx, PolicyConfig, RuleId};
use crate::revocation::{counterparty_secrets, known_secret};
use crate::state::{ChannelRecord, MetaRecord};
use crate::{ChannelKeysId, CommitmentNumber};

/// A commitment to judge.
pub struct Proposed<'a> {
    /// The channel.
    pub id: &'a ChannelKeysId,
    /// Its record before this request.
    pub record: &'a ChannelRecord,
    /// Its recorded set-up.
    pub setup: &'a SetupRecord,
    /// Ours (validated) or the counterparty's (signed).
    pub holder: bool,
    /// The commitment, as the node described it (for ours, with our own
    /// per-commitment point in place).
    pub data: &'a CommitmentRecord,
    /// The transaction the signer built from it.
    pub built: Built<'a>,
    /// The to_self_delay of the broadcaster's to_local output.
    pub contest_delay: u16,
    /// Payment hashes whose preimages the node showed with the request.
    pub shown_hashes: &'a [[u8; 32]],
    /// The record as it is once the commitment is accepted (the commitment
    /// in its place), for the ledger's view of the live commitments.
    pub accepted: &'a ChannelRecord,
}

/// What accepting a commitment changes.
#[derive(Debug)]
pub enum Verdict {
    /// The latest commitment of that side again, unchanged: nothing new.
    Retry,
    /// A new commitment: the channel's ledger and balance budget, and the
    /// other records the ledger changed.
    New(Box<Changes>),
}

/// Record changes of a new commitment.
#[derive(Debug, Default)]
pub struct Changes {
    /// The ledger's outcome (this channel's entries, other channels, meta).
    pub ledger: ledger::Outcome,
    /// The side's trimmed-value budget used after the update.
    pub trimmed_loss_sat: u64,
}

impl Changes {
    /// Applies the changes to the accepted record of the channel; returns
    /// the other channels' records and the meta record to write with it.
    pub fn apply(
        self: Box<Self>,
        record: &mut ChannelRecord,
        holder: bool,
    ) -> (BTreeMap<ChannelKeysId, ChannelRecord>, Option<MetaRecord>) {
        let Changes {
            ledger,
            trimmed_loss_sat,
        } = *self;
        record.outgoing = ledger.outgoing;
        record.covering = ledger.covering;
        record.ledger_ready = true;
        if holder {
            record.trimmed_loss_holder_sat = trimmed_loss_sat;
        } else {
            record.trimmed_loss_counterparty_sat = trimmed_loss_sat;
        }
        (ledger.others, ledger.meta)
    }
}

/// Checks every rule that applies to a commitment before it is signed
/// (theirs) or accepted (ours).
pub fn validate(p: &Proposed, facts: &Facts) -> Result<Verdict, SignerError> {
    let policy = facts.policy;
    let (id, record, data) = (p.id, p.record, p.data);
    let n = CommitmentNumber::new(data.commitment_number)?;
    policy.check(RuleId::CloseThenFrozen, !record.closing_signed, || {
        format!("channel {id}: a closing transaction was signed; no new commitment")
    })?;

    let previous = if p.holder {
        record.holder.as_ref().and_then(|h| h.commitment.as_ref())
    } else {
        record.counterparty.as_ref()
    };
    let whose = if p.holder { "holder" } else { "counterparty" };
    let ahead = |last: &str| {
        format!(
            "channel {id}: {whose} commitment {n} is ahead of the signer's record ({last}): \
             the signer's state is older than what it signed"
        )
    };
    match previous {
        None => policy.check(RuleId::StateRollbackDetected, n.0 == 0, || {
            ahead("no commitment yet")
        })?,
        Some(last) if last.commitment_number == n.0 => {
            if same_commitment(last, data) {
                return Ok(Verdict::Retry);
            }
            return Err(SignerError::policy(
                RuleId::CommitmentNumberSequence,
                format!(
                    "channel {id}: {whose} commitment {n} was already accepted with other content"
                ),
            ));
        }
        Some(last) => {
            if p.holder && record.holder_revoked_through.is_some_and(|t| t >= n.0) {
                return Err(SignerError::policy(
                    RuleId::CommitmentHolderNotRevoked,
                    format!("channel {id}: holder commitment {n} is already revoked"),
                ));
            }
            policy.check(
                RuleId::CommitmentNumberSequence,
                n.0 > last.commitment_number,
                || {
                    format!(
                        "channel {id}: {whose} commitment {n} goes back from #{}",
                        last.commitment_number
                    )
                },
            )?;
            policy.check(
                RuleId::StateRollbackDetected,
                n.0 <= last.commitment_number + 1,
                || ahead(&format!("latest #{}", last.commitment_number)),
            )?
        }
    }
    if !p.holder && n.0 >= 2 {
        let secrets = counterparty_secrets(record)?;
        let revoked = known_secret(&secrets, CommitmentNumber(n.0 - 2)).is_some();
        policy.check(RuleId::CommitmentPreviousRevoked, revoked, || {
            format!(
                "channel {id}: the peer has not revoked commitment #{} before we sign {n}",
                n.0 - 2
            )
        })?;
    }
    if n.0 == 0 {
        channel::check_first_commitment(policy, p.setup, record, p.holder, data)?;
    }
    check_shape(policy, p.setup, p.holder, data, p.built)?;
    let dust_limit = if p.holder {
        p.setup.holder_dust_limit_sat
    } else {
        p.setup.counterparty_dust_limit_sat
    };
    commitment_tx::check_given(
        policy,
        p.built,
        &data.transaction,
        dust_limit,
        p.contest_delay,
    )?;

    let ledger = ledger::apply(
        &ledger::Update {
            id,
            record,
            after: Live::of(p.accepted),
            shown_hashes: p.shown_hashes,
        },
        facts,
    )?;
    let used_before = if p.holder {
        record.trimmed_loss_holder_sat
    } else {
        record.trimmed_loss_counterparty_sat
    };
    let trimmed_loss_sat = match previous {
        Some(prev) if prev.commitment_number < n.0 => {
            // Paid: preimages shown now, or before for HTLCs still listed.
            let mut paid: Vec<[u8; 32]> = p.shown_hashes.to_vec();
            paid.extend(
                record
                    .outgoing
                    .iter()
                    .filter(|e| e.settled)
                    .filter_map(|e| <[u8; 32]>::try_from(e.payment_hash.as_slice()).ok()),
            );
            let owed: Vec<Key> = record
                .covering
                .iter()
                // Covering a forward not failed yet (in flight, or paid out):
                // the incoming HTLC may leave only paid to us.
                .filter(|c| c.claimable || c.covered_msat > 0)
                .map(|c| (c.payment_hash.as_slice(), c.amount_msat, c.cltv_expiry))
                .collect();
            balance::check_update(
                policy,
                &balance::SideUpdate {
                    setup: p.setup,
                    holder: p.holder,
                    previous: prev,
                    next: data,
                    paid: &paid,
                    owed: &owed,
                    trimmed_loss_sat: used_before,
                },
            )?
        }
        _ => used_before,
    };
    Ok(Verdict::New(Box::new(Changes {
        ledger,
        trimmed_loss_sat,
    })))
}

/// Whether two commitments carry the same data (the point included).
fn same_commitment(a: &CommitmentRecord, b: &CommitmentRecord) -> bool {
    a == b
}

/// `commitment-keys`: a holder commitment's per-commitment point, if the
/// node gives one, is the signer's own for that number (`ours`).
pub fn check_holder_point(
    id: &ChannelKeysId,
    n: u64,
    given: &[u8],
    ours: &bitcoin::secp256k1::PublicKey,
) -> Result<(), SignerError> {
    if given.is_empty() || given == ours.serialize() {
        return Ok(());
    }
    Err(SignerError::policy(
        RuleId::CommitmentKeys,
        format!("channel {id}: per-commitment point of holder commitment {n} is not ours"),
    ))
}

/// The commitment's shape within the operator's limits: HTLC count and
/// value, feerate (declared, and actual: what the outputs leave to miners),
/// and BOLT 3 trimming.
pub fn check_shape(
    policy: &PolicyConfig,
    setup: &SetupRecord,
    holder: bool,
    data: &CommitmentRecord,
    built: Built<'_>,
) -> Result<(), SignerError> {
    let htlcs = data.ldk_htlcs()?;
    let anchors = setup.is_anchors();
    let dust_limit = if holder {
        setup.holder_dust_limit_sat
    } else {
        setup.counterparty_dust_limit_sat
    };
    policy.check(
        RuleId::CommitmentHtlcCountMax,
        htlcs.len() <= policy.max_htlcs,
        || format!("{} HTLCs, limit {}", htlcs.len(), policy.max_htlcs),
    )?;
    let inflight_sat = htlcs
        .iter()
        .map(|h| h.amount_msat / 1000)
        .fold(0u64, u64::saturating_add);
    policy.check(
        RuleId::CommitmentHtlcInflightMax,
        inflight_sat <= policy.max_htlc_inflight_sat,
        || {
            format!(
                "{inflight_sat} sat in HTLCs, limit {} sat",
                policy.max_htlc_inflight_sat
            )
        },
    )?;
    let feerate_ok =
        (policy.min_feerate_per_kw..=policy.max_feerate_per_kw).contains(&data.feerate_per_kw);
    policy.check(RuleId::CommitmentFeeRange, feerate_ok, || {
        format!(
            "feerate {} sat/kw outside [{}, {}]",
            data.feerate_per_kw, policy.min_feerate_per_kw, policy.max_feerate_per_kw
        )
    })?;
    // Every HTLC present must be above the broadcaster's dust limit plus its
    // second-stage fee (BOLT 3 trimming); below that it must have been
    // trimmed.
    for (i, h) in htlcs.iter().enumerate() {
        let amount_sat = h.amount_msat / 1000;
        let second_stage = htlc_tx_fee_sat(data.feerate_per_kw, h.offered, anchors);
        let floor = dust_limit.saturating_add(second_stage);
        policy.check(
            RuleId::CommitmentDustTrimmed,
            amount_sat >= floor && amount_sat > second_stage,
            || {
                format!(
                    "htlc {i} of {amount_sat} sat is dust (below {floor} sat) and must be trimmed"
                )
            },
        )?;
    }
    for (what, v) in [
        ("to_broadcaster", data.to_broadcaster_value_sat),
        ("to_countersignatory", data.to_countersignatory_value_sat),
    ] {
        policy.check(RuleId::CommitmentDustTrimmed, v == 0 || v >= dust_limit, || {
            format!("{what} output of {v} sat is below the dust limit {dust_limit} and must be trimmed")
        })?;
    }
    // The fee the transaction actually pays is what its outputs leave of the
    // channel: the declared fee plus trimmed HTLCs. Bounded at the highest
    // feerate plus the dust exposure.
    let tx = built.transaction;
    let out_sat = tx
        .output
        .iter()
        .fold(0u64, |a, o| a.saturating_add(o.value.to_sat()));
    let actual_fee = setup.channel_value_sat.saturating_sub(out_sat);
    let anchors_sat = if anchors {
        2 * ANCHOR_OUTPUT_VALUE_SAT
    } else {
        0
    };
    let most = commitment_fee_sat(policy.max_feerate_per_kw, htlcs.len(), anchors)
        .saturating_add(policy.max_dust_exposure_sat)
        .saturating_add(anchors_sat);
    policy.check(RuleId::CommitmentFeeRange, actual_fee <= most, || {
        format!(
            "the commitment's outputs leave {actual_fee} sat to fees, more than the {most} sat the \
             highest feerate and the dust exposure allow"
        )
    })?;
    let declared = commitment_fee_sat(data.feerate_per_kw, htlcs.len(), anchors);
    let sum = data
        .to_broadcaster_value_sat
        .saturating_add(data.to_countersignatory_value_sat)
        .saturating_add(inflight_sat)
        .saturating_add(declared)
        .saturating_add(anchors_sat);
    policy.check(
        RuleId::CommitmentBalanceConserved,
        sum <= setup.channel_value_sat,
        || {
            format!(
                "outputs, HTLCs ({inflight_sat} sat), fee ({declared} sat) and anchors exceed the \
                 channel value {} sat",
                setup.channel_value_sat
            )
        },
    )
}
