//! Rules against the chain height the signer follows (`crate::chain`):
//! `commitment-htlc-cltv-range` and `sweep-locktime-range`.
//!
//! Only HTLCs we offer are bounded: a far expiry locks our funds for that
//! long. HTLCs the peer offers us are the peer's choice; the node fails
//! those that expire too soon, but they sit in a commitment first, so
//! refusing them would only stall the channel.

use alloc::format;
use alloc::vec::Vec;

use bitcoin::absolute::LockTime;
use lnpd_proto::signer::CommitmentData;

use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};

/// Seconds per block, to bound a time-based locktime.
const BLOCK_SECS: u64 = 600;

/// Every HTLC we offer in `next` (a counterparty commitment) that was not in
/// `previous` expires at most `max_htlc_cltv_window` blocks past `height`.
pub fn check_htlc_expiries(
    policy: &PolicyConfig,
    previous: Option<&CommitmentData>,
    next: &CommitmentData,
    height: u32,
) -> Result<(), SignerError> {
    let latest = height.saturating_add(policy.max_htlc_cltv_window);
    // A multiset, as for the payment controls.
    let mut before: Vec<_> = previous
        .into_iter()
        .flat_map(crate::policy::payments::offered_by_us)
        .map(|o| (&o.payment_hash, o.cltv_expiry))
        .collect();
    for h in crate::policy::payments::offered_by_us(next) {
        if let Some(i) = before
            .iter()
            .position(|b| *b == (&h.payment_hash, h.cltv_expiry))
        {
            before.swap_remove(i);
            continue;
        }
        policy.check(RuleId::CommitmentHtlcCltvRange, h.cltv_expiry <= latest, || {
            format!(
                "HTLC expiring at height {} while the chain is at {height} (at most {} blocks ahead)",
                h.cltv_expiry, policy.max_htlc_cltv_window
            )
        })?;
    }
    Ok(())
}

/// A sweep's locktime is at most `max_sweep_locktime_ahead` blocks past
/// `height` (or as many ten-minute blocks past `now`, for a time).
pub fn check_sweep_locktime(
    policy: &PolicyConfig,
    lock_time: LockTime,
    height: u32,
    now: u64,
) -> Result<(), SignerError> {
    let ahead = policy.max_sweep_locktime_ahead;
    match lock_time {
        LockTime::Blocks(b) => policy.check(
            RuleId::SweepLocktimeRange,
            b.to_consensus_u32() <= height.saturating_add(ahead),
            || {
                format!(
                    "sweep locked until height {b} while the chain is at {height} (at most {ahead} blocks ahead)"
                )
            },
        ),
        LockTime::Seconds(t) => policy.check(
            RuleId::SweepLocktimeRange,
            now == 0
                || u64::from(t.to_consensus_u32()) <= now + u64::from(ahead) * BLOCK_SECS,
            || format!("sweep locked until time {t}, now {now}"),
        ),
    }
}
