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
//!
//! One commitment may both add trimmed HTLCs of ours and settle trimmed
//! HTLCs to the peer (several updates in one round), so the pot can shrink
//! while our side drops: value that went into the pot is its growth plus
//! what left it for the peer, and what left it is at most the peer's gain
//! and at most the previous pot (never more than was in it).
//!
//! The bound is per commitment: since the signer cannot tell an honest
//! round (trimmed HTLCs settled to the peer while new ones are added) from
//! our balance moved to the peer through a full pot, a compromised node
//! could repeat the latter on every commitment. The payment controls
//! (`payment-velocity`, `payment-max`) do not see trimmed HTLCs either;
//! keep `max_dust_exposure_sat` low where that matters.

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
    /// The same for the peer.
    theirs: u64,
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
    let their_value = if holder {
        c.to_countersignatory_value_sat
    } else {
        c.to_broadcaster_value_sat
    };
    let total = our_value + our_htlcs + if setup.is_outbound { fees } else { 0 };
    let theirs = their_value
        + all_htlcs.saturating_sub(our_htlcs)
        + if setup.is_outbound { 0 } else { fees };
    let visible = c
        .to_broadcaster_value_sat
        .saturating_add(c.to_countersignatory_value_sat)
        .saturating_add(all_htlcs)
        .saturating_add(fees);
    Side {
        total,
        theirs,
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
    let left_pot_to_them = new.theirs.saturating_sub(old.theirs).min(old.pot);
    let invisible = (new.pot + left_pot_to_them).saturating_sub(old.pot);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A static-remote-key channel of 1 000 000 sat that we fund, fee 0.
    fn setup() -> SetupChannelRequest {
        SetupChannelRequest {
            channel_value_sat: 1_000_000,
            is_outbound: true,
            ..Default::default()
        }
    }

    /// The counterparty's commitment (the one we sign): they broadcast it.
    fn theirs(their_sat: u64, our_sat: u64) -> CommitmentData {
        CommitmentData {
            to_broadcaster_value_sat: their_sat,
            to_countersignatory_value_sat: our_sat,
            ..Default::default()
        }
    }

    fn check(previous: &CommitmentData, next: &CommitmentData) -> Result<(), SignerError> {
        check_update(
            &PolicyConfig::default(),
            &setup(),
            false,
            previous,
            next,
            &[],
        )
    }

    #[test]
    fn allows_a_new_trimmed_htlc_while_trimmed_ones_settle_to_the_peer() {
        // 100 sat of trimmed HTLCs in the pot; in one round, seven of ours
        // (70 sat) are claimed by the peer and we offer a new one of 10 sat.
        let previous = theirs(500, 999_400);
        let next = theirs(570, 999_390);
        assert!(check(&previous, &next).is_ok());
    }

    #[test]
    fn refuses_a_transfer_to_the_peer_with_no_pot_to_explain_it() {
        let previous = theirs(500, 999_500);
        let next = theirs(100_500, 899_500);
        let e = check(&previous, &next).unwrap_err();
        assert_eq!(e.rule, Some(RuleId::CommitmentBalanceConserved));
    }

    #[test]
    fn refuses_more_than_the_previous_pot_going_to_the_peer() {
        // 100 sat in the pot; the peer gains 10 100 sat, we lose 10 000.
        let previous = theirs(500, 999_400);
        let next = theirs(10_600, 989_400);
        let e = check(&previous, &next).unwrap_err();
        assert_eq!(e.rule, Some(RuleId::CommitmentBalanceConserved));
    }
}
