//! Rules on how a channel's balance may move from one commitment to the next
//! (`commitment-balance-conserved`, `commitment-settled-preimage`).
//!
//! Our side of a commitment is our main output, plus the fee and anchors if
//! we are the funder (they come out of our balance), plus the HTLCs we
//! offered. From one commitment to the next that total may drop only by:
//! HTLCs we newly offer (they appear in the new commitment, so the total
//! does not drop), our HTLCs removed as paid (whose preimage the node must
//! show), and value that became invisible: HTLCs below the dust limit are
//! trimmed from commitments and LDK does not show them to the signer, so
//! their value shows only as an unexplained remainder (the "dust pot"),
//! bounded by `max_dust_exposure_sat`.

use alloc::format;
use alloc::vec::Vec;

use lnpd_proto::signer::{CommitmentData, HtlcDirection, SetupChannelRequest};

use crate::commitment::{commitment_fee_sat, is_anchors, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};

/// One side's view of a commitment, in sat.
struct Side {
    /// Our main output, plus fee and anchors when we fund.
    total: u64,
    /// Value the commitment does not show (trimmed HTLCs, rounding).
    pot: u64,
}

fn fee_and_anchors(setup: &SetupChannelRequest, c: &CommitmentData) -> u64 {
    let anchors = is_anchors(setup);
    commitment_fee_sat(c.feerate_per_kw, c.htlcs.len(), anchors)
        + if anchors {
            2 * ANCHOR_OUTPUT_VALUE_SAT
        } else {
            0
        }
}

/// HTLCs we offered: "offered" by the broadcaster on our own commitment,
/// "received" by it on the counterparty's.
fn ours(c: &CommitmentData, holder: bool) -> impl Iterator<Item = &lnpd_proto::signer::Htlc> {
    let direction = if holder {
        HtlcDirection::Offered
    } else {
        HtlcDirection::Received
    } as i32;
    c.htlcs.iter().filter(move |h| h.direction == direction)
}

fn side(setup: &SetupChannelRequest, c: &CommitmentData, holder: bool) -> Side {
    let fees = fee_and_anchors(setup, c);
    let our_htlcs: u64 = ours(c, holder).map(|h| h.amount_msat / 1000).sum();
    let all_htlcs: u64 = c.htlcs.iter().map(|h| h.amount_msat / 1000).sum();
    let our_value = if holder {
        c.to_broadcaster_value_sat
    } else {
        c.to_countersignatory_value_sat
    };
    let total = our_value + our_htlcs + if setup.is_outbound { fees } else { 0 };
    let visible = c
        .to_broadcaster_value_sat
        .saturating_add(c.to_countersignatory_value_sat)
        .saturating_add(all_htlcs)
        .saturating_add(fees);
    Side {
        total,
        pot: setup.channel_value_sat.saturating_sub(visible),
    }
}

/// Checks a new commitment against the previous one of the same side: ours
/// (`holder`, which we validate) or the counterparty's (which we sign).
/// `preimages` are the payment preimages the node shows for our HTLCs the
/// peer claimed.
pub fn check_update(
    policy: &PolicyConfig,
    setup: &SetupChannelRequest,
    holder: bool,
    previous: &CommitmentData,
    next: &CommitmentData,
    preimages: &[[u8; 32]],
) -> Result<(), SignerError> {
    let (old, new) = (side(setup, previous, holder), side(setup, next, holder));
    policy.check(
        RuleId::CommitmentBalanceConserved,
        new.pot <= policy.max_dust_exposure_sat,
        || {
            format!(
                "{} sat of the channel are in no output (trimmed HTLCs), limit {} sat",
                new.pot, policy.max_dust_exposure_sat
            )
        },
    )?;
    let drop = old.total.saturating_sub(new.total);
    if drop == 0 {
        return Ok(());
    }
    let key = |h: &lnpd_proto::signer::Htlc| (h.payment_hash.clone(), h.amount_msat, h.cltv_expiry);
    let still: Vec<_> = ours(next, holder).map(key).collect();
    let removed: Vec<_> = ours(previous, holder)
        .filter(|h| !still.contains(&key(h)))
        .collect();
    let hashes: Vec<[u8; 32]> = preimages
        .iter()
        .map(|p| crate::keys::payment_hash(p).0)
        .collect();
    let removed_sat: u64 = removed.iter().map(|h| h.amount_msat / 1000).sum();
    let paid_sat: u64 = removed
        .iter()
        .filter(|h| hashes.iter().any(|x| h.payment_hash == x[..]))
        .map(|h| h.amount_msat / 1000)
        .sum();
    let invisible = new.pot.saturating_sub(old.pot);
    // Rounding of msat to sat: at most one sat per output.
    let slack = 2 + (previous.htlcs.len() + next.htlcs.len()) as u64;
    policy.check(
        RuleId::CommitmentBalanceConserved,
        drop <= removed_sat + invisible + slack,
        || {
            format!(
                "our side drops by {drop} sat but only {removed_sat} sat of our HTLCs were removed \
                 and {invisible} sat went to trimmed outputs"
            )
        },
    )?;
    policy.check(
        RuleId::CommitmentSettledPreimage,
        drop <= paid_sat + invisible + slack,
        || {
            format!(
                "our HTLCs are removed as paid ({} sat) without their preimages",
                drop.saturating_sub(paid_sat + invisible)
            )
        },
    )
}
