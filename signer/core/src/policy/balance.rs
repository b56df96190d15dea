//! Rules on how a channel's balance may move from one commitment to the next
//! of the same side (`commitment-balance-conserved`,
//! `commitment-settled-preimage`, `routing-incoming-claimed`).
//!
//! Our side of a commitment is our main output, plus the fee and anchors if
//! we are the funder (they come out of our balance), plus the HTLCs we
//! offered. From one commitment to the next that total may drop only by our
//! HTLCs removed as paid (the node shows their preimages; the ledger
//! admitted each through the payment controls when it first appeared), and
//! by value that became invisible: HTLCs below the dust limit are trimmed
//! from commitments and LDK does not show them to the signer, so their
//! value shows only as an unexplained remainder (the "pot", the part of the
//! actual fee above the fee the feerate gives).
//!
//! The pot is bounded per commitment (`max_dust_exposure_sat`) and what our
//! side loses to it is bounded in total over the channel's life
//! (`max_trimmed_loss_sat`), along each side's chain of commitments: the
//! net of value gone into trimmed outputs and value that came back from
//! them. A compromised node can therefore move at most that budget through
//! trimmed outputs, however many commitments it asks for. Trimmed HTLCs we
//! pay count against it too (the signer cannot tell them from a theft).
//!
//! An HTLC the peer offered us that covers a forward we paid out must be
//! paid to us when it leaves a commitment: our side grows by its amount.

use alloc::format;
use alloc::vec::Vec;

use crate::state::HtlcRecord;
use crate::state::{CommitmentRecord, SetupRecord};

use crate::commitment::{commitment_fee_sat, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::ledger::{ours, theirs, Key};
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

fn fee_and_anchors(setup: &SetupRecord, c: &CommitmentRecord) -> u64 {
    let anchors = setup.is_anchors();
    commitment_fee_sat(c.feerate_per_kw, c.htlcs.len(), anchors)
        + if anchors {
            2 * ANCHOR_OUTPUT_VALUE_SAT
        } else {
            0
        }
}

fn side(setup: &SetupRecord, c: &CommitmentRecord, holder: bool) -> Side {
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

/// A commitment following the previous one of the same side: ours
/// (`holder`, which we validate) or the counterparty's (which we sign).
pub struct SideUpdate<'a> {
    /// The channel's set-up.
    pub setup: &'a SetupRecord,
    /// Ours (else the counterparty's).
    pub holder: bool,
    /// The previous commitment of the side.
    pub previous: &'a CommitmentRecord,
    /// The new one.
    pub next: &'a CommitmentRecord,
    /// Payment hashes whose preimages the node showed (now or before).
    pub paid: &'a [[u8; 32]],
    /// Incoming HTLCs that must be paid to us if they leave.
    pub owed: &'a [Key<'a>],
    /// The side's trimmed-value budget used so far (sat).
    pub trimmed_loss_sat: u64,
}

/// Checks a side update; returns the side's trimmed-value budget used
/// after it.
pub fn check_update(policy: &PolicyConfig, u: &SideUpdate) -> Result<u64, SignerError> {
    let SideUpdate {
        setup,
        holder,
        previous,
        next,
        paid,
        owed,
        trimmed_loss_sat,
    } = *u;
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
    let removed_ours = removed(ours(previous, holder), ours(next, holder));
    let removed_theirs = removed(theirs(previous, holder), theirs(next, holder));
    let removed_sat: u64 = removed_ours.iter().map(|h| h.amount_msat / 1000).sum();
    let paid_sat: u64 = removed_ours
        .iter()
        .filter(|h| paid.iter().any(|x| h.payment_hash == x[..]))
        .map(|h| h.amount_msat / 1000)
        .sum();
    let received_sat: u64 = removed_theirs.iter().map(|h| h.amount_msat / 1000).sum();
    // Rounding of msat to sat: at most one sat per output.
    let slack = 2 + (previous.htlcs.len() + next.htlcs.len()) as u64;

    let owed_sat: u64 = removed_theirs
        .iter()
        .filter(|h| owed.contains(&(h.payment_hash.as_slice(), h.amount_msat, h.cltv_expiry)))
        .map(|h| h.amount_msat / 1000)
        .sum();
    if owed_sat > 0 {
        policy.check(
            RuleId::RoutingIncomingClaimed,
            new.total + paid_sat + slack >= old.total + owed_sat,
            || {
                format!(
                    "incoming HTLCs of {owed_sat} sat, covering forwards that were not failed, \
                     leave the commitment without being paid to us"
                )
            },
        )?;
    }

    let drop = old.total.saturating_sub(new.total);
    // What our side lost beyond our HTLCs paid out. The refusals allow msat
    // rounding; the budget is charged all of it, rounding included, so no
    // update moves value for free.
    let loss_raw = drop.saturating_sub(paid_sat);
    let loss = loss_raw.saturating_sub(slack);
    let left_pot_to_them = new.theirs.saturating_sub(old.theirs).min(old.pot);
    let invisible = (new.pot + left_pot_to_them).saturating_sub(old.pot);
    if loss > invisible {
        let rule = if drop <= removed_sat + invisible + slack {
            RuleId::CommitmentSettledPreimage
        } else {
            RuleId::CommitmentBalanceConserved
        };
        policy.check(rule, false, || {
            if rule == RuleId::CommitmentSettledPreimage {
                format!(
                    "our HTLCs are removed as paid ({} sat) without their preimages",
                    drop.saturating_sub(paid_sat + invisible)
                )
            } else {
                format!(
                    "our side drops by {drop} sat but only {removed_sat} sat of our HTLCs were \
                     removed and {invisible} sat went to trimmed outputs"
                )
            }
        })?;
    }
    // Value that came back from trimmed outputs (not a visible HTLC paid to
    // us) pays the budget back.
    let gain = new.total.saturating_sub(old.total);
    let returned = gain.saturating_sub(received_sat);
    let used = trimmed_loss_sat
        .saturating_add(loss_raw)
        .saturating_sub(returned);
    policy.check(
        RuleId::CommitmentBalanceConserved,
        used <= policy.max_trimmed_loss_sat || loss_raw == 0,
        || {
            format!(
                "our side lost {used} sat in all to trimmed outputs over the channel's life, \
                 limit {} sat",
                policy.max_trimmed_loss_sat
            )
        },
    )?;
    Ok(used)
}

/// HTLCs in `before` that are not in `after` (as multisets).
fn removed<'a>(
    before: impl Iterator<Item = &'a HtlcRecord>,
    after: impl Iterator<Item = &'a HtlcRecord>,
) -> Vec<&'a HtlcRecord> {
    let mut still: Vec<&HtlcRecord> = after.collect();
    let mut gone = Vec::new();
    for h in before {
        let k = (&h.payment_hash, h.amount_msat, h.cltv_expiry);
        match still
            .iter()
            .position(|s| (&s.payment_hash, s.amount_msat, s.cltv_expiry) == k)
        {
            Some(i) => {
                still.swap_remove(i);
            }
            None => gone.push(h),
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A static-remote-key channel of 1 000 000 sat that we fund, fee 0.
    fn setup() -> SetupRecord {
        SetupRecord {
            channel_value_sat: 1_000_000,
            is_outbound: true,
            ..Default::default()
        }
    }

    /// The counterparty's commitment (the one we sign): they broadcast it.
    fn theirs(their_sat: u64, our_sat: u64) -> CommitmentRecord {
        CommitmentRecord {
            to_broadcaster_value_sat: their_sat,
            to_countersignatory_value_sat: our_sat,
            ..Default::default()
        }
    }

    fn check(previous: &CommitmentRecord, next: &CommitmentRecord) -> Result<(), SignerError> {
        check_update(
            &PolicyConfig::default(),
            &SideUpdate {
                setup: &setup(),
                holder: false,
                previous,
                next,
                paid: &[],
                owed: &[],
                trimmed_loss_sat: 0,
            },
        )
        .map(|_| ())
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
    fn rounding_is_charged_to_the_budget_so_no_update_is_free() {
        // Two sat to the peer on every update, within the msat-rounding
        // slack: allowed each time, charged each time, until the budget
        // is spent.
        let policy = PolicyConfig {
            max_trimmed_loss_sat: 10,
            ..Default::default()
        };
        let mut used = 0;
        let mut last = theirs(500, 999_500);
        for i in 1..=10u64 {
            let next = theirs(500 + 2 * i, 999_500 - 2 * i);
            let r = check_update(
                &policy,
                &SideUpdate {
                    setup: &setup(),
                    holder: false,
                    previous: &last,
                    next: &next,
                    paid: &[],
                    owed: &[],
                    trimmed_loss_sat: used,
                },
            );
            match r {
                Ok(u) => used = u,
                Err(e) => {
                    assert_eq!(e.rule, Some(RuleId::CommitmentBalanceConserved));
                    assert_eq!(i, 6, "refused once the 10 sat are spent");
                    return;
                }
            }
            last = next;
        }
        panic!("2 sat a time drained the channel without end");
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
