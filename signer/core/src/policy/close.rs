//! Rules on mutual-close transactions.

use alloc::format;

use crate::state::SetupRecord;
use bitcoin::Script;
use lnpd_proto::signer::SignClosingTransactionRequest;

use crate::commitment::{commitment_fee_sat, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::RuleId;
use crate::state::ChannelRecord;
use crate::ChannelKeysId;

/// Longest output script in a close: the longest standard witness program
/// (42 bytes). Bounds the weight the fee cap is computed from.
const MAX_SCRIPT_LEN: usize = 42;

/// Witness weight of a 2-of-2 funding input (two signatures, the script).
const FUNDING_WITNESS_WEIGHT: u64 = 222;

/// The validator of a mutual close, before it is signed: outputs within the
/// channel, no HTLCs pending (`close-no-pending-htlcs`), our output to our
/// wallet or upfront script (`close-destination-allowed`), the fee within
/// bounds when we pay it (`close-fee-range`), our output at least our
/// balance less our fee share (`close-value-matches`), and a locktime near
/// the chain tip (`close-locktime-range`). `unsigned_weight` is the weight
/// of the closing transaction without its witness.
pub fn validate_close(
    unsigned_weight: u64,
    facts: &Facts,
    id: &ChannelKeysId,
    record: &ChannelRecord,
    setup: &SetupRecord,
    r: &SignClosingTransactionRequest,
) -> Result<(), SignerError> {
    let policy = facts.policy;
    let total = r
        .to_holder_value_sat
        .checked_add(r.to_counterparty_value_sat)
        .filter(|t| *t <= setup.channel_value_sat)
        .ok_or_else(|| SignerError::invalid("closing outputs exceed the channel value"))?;
    for script in [&r.to_holder_script, &r.to_counterparty_script] {
        if script.len() > MAX_SCRIPT_LEN {
            return Err(SignerError::invalid(format!(
                "closing output script of {} bytes; at most {MAX_SCRIPT_LEN} (a standard script)",
                script.len()
            )));
        }
    }
    let Some(holder) = record.holder.as_ref().and_then(|h| h.commitment.as_ref()) else {
        return Err(SignerError::policy(
            RuleId::CloseValueMatches,
            format!("channel {id}: no validated commitment yet, so no balance to close with"),
        ));
    };
    let pending = !holder.htlcs.is_empty()
        || record
            .counterparty
            .as_ref()
            .is_some_and(|c| !c.htlcs.is_empty());
    policy.check(RuleId::CloseNoPendingHtlcs, !pending, || {
        format!("channel {id} still has HTLCs pending")
    })?;

    if r.to_holder_value_sat > 0 {
        let script = Script::from_bytes(&r.to_holder_script);
        let allowed = (!setup.holder_shutdown_script.is_empty()
            && r.to_holder_script == setup.holder_shutdown_script)
            || facts.is_own(script);
        policy.check(RuleId::CloseDestinationAllowed, allowed, || {
            format!("channel {id}: our closing output pays a script that is not ours")
        })?;
    }

    let fee = setup.channel_value_sat - total;
    let weight = unsigned_weight + FUNDING_WITNESS_WEIGHT;
    let max_fee = policy.max_onchain_feerate_per_kw as u64 * weight / 1000;
    // Only the funder's money goes to the fee; a fundee does not care.
    policy.check(RuleId::CloseFeeRange, !setup.is_outbound || fee <= max_fee, || {
        format!(
            "channel {id}: closing fee {fee} sat above {max_fee} sat ({} sat/kw for {weight} weight units)",
            policy.max_onchain_feerate_per_kw
        )
    })?;

    // Our balance in the latest holder commitment, before the commitment fee
    // and anchors the funder paid; the funder also pays the closing fee.
    let anchors = setup.is_anchors();
    let paid = if setup.is_outbound {
        let anchors_sat = if anchors {
            2 * ANCHOR_OUTPUT_VALUE_SAT
        } else {
            0
        };
        commitment_fee_sat(holder.feerate_per_kw, holder.htlcs.len(), anchors) + anchors_sat
    } else {
        0
    };
    let balance = holder.to_broadcaster_value_sat + paid;
    let fee_share = if setup.is_outbound { fee } else { 0 };
    // One satoshi of slack for msat rounding; a trimmed (dust) output may vanish.
    let ok = r.to_holder_value_sat + fee_share + 1 >= balance
        || (r.to_holder_value_sat == 0 && balance < setup.holder_dust_limit_sat);
    policy.check(RuleId::CloseValueMatches, ok, || {
        format!(
            "channel {id}: closing pays us {} sat (+{fee_share} fee share) but our balance is {balance} sat",
            r.to_holder_value_sat
        )
    })?;
    let lock = r.lock_time;
    let ahead = policy.max_sweep_locktime_ahead;
    let lock_ok = if lock < 500_000_000 {
        lock <= facts.height.saturating_add(ahead)
    } else {
        facts.now > 0 && u64::from(lock) <= facts.now + u64::from(ahead) * 600
    };
    policy.check(RuleId::CloseLocktimeRange, lock_ok, || {
        format!(
            "channel {id}: the close is locked until {lock}, more than {ahead} blocks past the chain tip ({})",
            facts.height
        )
    })
}
