//! Rules on mutual-close transactions.

use alloc::format;

use bitcoin::Script;
use lnpd_proto::signer::{SetupChannelRequest, SignClosingTransactionRequest};

use crate::commitment::{commitment_fee_sat, is_anchors, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};
use crate::state::ChannelRecord;
use crate::types::ChannelKeysId;

/// Witness weight of a 2-of-2 funding input (two signatures, the script).
const FUNDING_WITNESS_WEIGHT: u64 = 222;

/// Checks a closing transaction before it is signed. `unsigned_weight` is
/// the weight of the closing transaction without its witness.
pub fn check_close(
    unsigned_weight: u64,
    policy: &PolicyConfig,
    id: &ChannelKeysId,
    record: &ChannelRecord,
    setup: &SetupChannelRequest,
    r: &SignClosingTransactionRequest,
    is_own_script: impl Fn(&Script) -> bool,
) -> Result<(), SignerError> {
    let total = r
        .to_holder_value_sat
        .checked_add(r.to_counterparty_value_sat)
        .filter(|t| *t <= setup.channel_value_sat)
        .ok_or_else(|| SignerError::invalid("closing outputs exceed the channel value"))?;
    let holder = record.holder.as_ref().and_then(|h| h.commitment.as_ref());
    let pending = holder.is_some_and(|c| !c.htlcs.is_empty())
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
            || is_own_script(script);
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
    if let Some(c) = holder {
        let anchors = is_anchors(setup);
        let paid = if setup.is_outbound {
            commitment_fee_sat(c.feerate_per_kw, c.htlcs.len(), anchors)
                + if anchors {
                    2 * ANCHOR_OUTPUT_VALUE_SAT
                } else {
                    0
                }
        } else {
            0
        };
        let balance = c.to_broadcaster_value_sat + paid;
        let ours_with_fee = r.to_holder_value_sat + if setup.is_outbound { fee } else { 0 };
        // One satoshi of slack for msat rounding; a trimmed (dust) output may vanish.
        let ok = ours_with_fee + 1 >= balance
            || (r.to_holder_value_sat == 0 && balance < setup.holder_dust_limit_sat);
        policy.check(RuleId::CloseValueMatches, ok, || {
            format!(
                "channel {id}: closing pays us {} sat (+{} fee share) but our balance is {balance} sat",
                r.to_holder_value_sat,
                ours_with_fee - r.to_holder_value_sat
            )
        })?;
    }
    Ok(())
}
