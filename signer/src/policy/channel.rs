//! Rules on channel set-up and the first commitment.

use alloc::format;

use lnpd_proto::signer::{ChannelType, CommitmentData, SetupChannelRequest};

use crate::commitment::{commitment_fee_sat, is_anchors, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::{PolicyConfig, RuleId};
use crate::state::ChannelRecord;
use crate::types::ChannelKeysId;

/// What a set-up request asks of a channel's record.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupVerdict {
    /// The channel was set up with exactly these parameters: nothing to do.
    Again,
    /// A new set-up, to record.
    New,
}

/// The validator of `SetupChannel`: the keys id is one the signer issued
/// and never set up (`channel-keys-id-issued`, `channel-keys-id-unique`,
/// `channel-params-immutable`), no other channel has that funding outpoint
/// (`channel-funding-unique`), the signer holds fewer channels than its
/// limit (`resource-limit`), and the parameters are safe ([`check_setup`]).
/// The identity rules refuse in every mode: going on would corrupt state.
pub fn validate_setup(
    id: &ChannelKeysId,
    record: Option<&ChannelRecord>,
    r: &SetupChannelRequest,
    facts: &Facts,
) -> Result<SetupVerdict, SignerError> {
    let policy = facts.policy;
    if let Some(existing) = record.and_then(|c| c.setup.as_ref()) {
        if existing == r {
            return Ok(SetupVerdict::Again);
        }
        let rule = if existing.funding_outpoint != r.funding_outpoint {
            RuleId::ChannelKeysIdUnique
        } else {
            RuleId::ChannelParamsImmutable
        };
        return Err(SignerError::policy(
            rule,
            format!("channel {id} was already set up with other parameters"),
        ));
    }
    if !record.is_some_and(|c| c.issued_by_signer) {
        return Err(SignerError::policy(
            RuleId::ChannelKeysIdIssued,
            format!("channel keys id {id} was not issued by this signer (or not kept)"),
        ));
    }
    if r.funding_outpoint.is_some() {
        if let Some((other, _)) = facts.channels.iter().find(|(o, c)| {
            *o != id
                && c.setup
                    .as_ref()
                    .is_some_and(|s| s.funding_outpoint == r.funding_outpoint)
        }) {
            return Err(SignerError::policy(
                RuleId::ChannelFundingUnique,
                format!("channel {other} already has that funding outpoint"),
            ));
        }
    }
    let set_up = facts
        .channels
        .values()
        .filter(|c| c.setup.is_some())
        .count();
    if set_up >= policy.max_channels {
        return Err(SignerError::policy(
            RuleId::ResourceLimit,
            format!(
                "the signer holds {set_up} channels, its limit (max_channels = {})",
                policy.max_channels
            ),
        ));
    }
    check_setup(policy, r, |s| facts.is_own(s))?;
    Ok(SetupVerdict::New)
}

/// Checks the parameters of a channel being set up. `is_own_script` tells
/// whether a script pays the signer's wallet.
pub fn check_setup(
    policy: &PolicyConfig,
    r: &SetupChannelRequest,
    is_own_script: impl Fn(&bitcoin::Script) -> bool,
) -> Result<(), SignerError> {
    let known_type = matches!(
        ChannelType::try_from(r.channel_type),
        Ok(ChannelType::StaticRemoteKey | ChannelType::AnchorsZeroFeeHtlcTx)
    );
    policy.check(RuleId::ChannelTypeSafe, known_type, || {
        format!(
            "channel type {} is not one the signer can validate",
            r.channel_type
        )
    })?;
    for (who, d) in [
        ("our", r.counterparty_selected_contest_delay),
        ("the counterparty's", r.holder_selected_contest_delay),
    ] {
        let ok = d >= policy.min_to_self_delay as u32 && d <= policy.max_to_self_delay as u32;
        policy.check(RuleId::ChannelToSelfDelayRange, ok, || {
            format!(
                "{who} to_self_delay {d} outside [{}, {}]",
                policy.min_to_self_delay, policy.max_to_self_delay
            )
        })?;
    }
    if r.channel_value_sat == 0 {
        return Err(SignerError::invalid("channel value is zero"));
    }
    policy.check(
        RuleId::ChannelValueMax,
        r.channel_value_sat <= policy.max_channel_value_sat,
        || {
            format!(
                "channel value {} sat above the maximum {} sat",
                r.channel_value_sat, policy.max_channel_value_sat
            )
        },
    )?;
    for (who, d) in [
        ("our", r.holder_dust_limit_sat),
        ("the counterparty's", r.counterparty_dust_limit_sat),
    ] {
        let ok = d >= policy.min_dust_limit_sat && d <= policy.max_dust_limit_sat;
        policy.check(RuleId::ChannelDustLimitRange, ok, || {
            format!(
                "{who} dust limit {d} sat outside [{}, {}]",
                policy.min_dust_limit_sat, policy.max_dust_limit_sat
            )
        })?;
    }
    policy.check(
        RuleId::OnchainNoPush,
        !r.is_outbound || r.push_msat == 0 || policy.allow_push,
        || {
            format!(
                "a channel we fund pushes {} msat to the peer; set allow_push to permit it",
                r.push_msat
            )
        },
    )?;
    if r.push_msat / 1000 > r.channel_value_sat {
        return Err(SignerError::invalid("push_msat exceeds the channel value"));
    }
    // An upfront shutdown script of ours is where a mutual close may pay us:
    // it must be the signer's own.
    let own = r.holder_shutdown_script.is_empty()
        || is_own_script(bitcoin::Script::from_bytes(&r.holder_shutdown_script));
    policy.check(RuleId::CloseDestinationAllowed, own, || {
        "our upfront shutdown script does not pay the signer's wallet".into()
    })?;
    if r.counterparty_keys.is_none() || r.funding_outpoint.is_none() {
        return Err(SignerError::invalid(
            "set-up needs the counterparty's keys and the funding outpoint",
        ));
    }
    Ok(())
}

/// The first commitment has no HTLCs and gives the funder the funded value
/// (less push, fee and anchors), the fundee the push, each trimmed at dust.
pub fn check_first_commitment(
    policy: &PolicyConfig,
    setup: &SetupChannelRequest,
    holder_is_broadcaster: bool,
    data: &CommitmentData,
) -> Result<(), SignerError> {
    policy.check(
        RuleId::CommitmentFirstNoHtlcs,
        data.htlcs.is_empty(),
        || "the first commitment carries HTLCs".into(),
    )?;
    let anchors = is_anchors(setup);
    let fee = commitment_fee_sat(data.feerate_per_kw, 0, anchors);
    let anchors_sat = if anchors {
        2 * ANCHOR_OUTPUT_VALUE_SAT
    } else {
        0
    };
    let funder_msat = setup
        .channel_value_sat
        .saturating_mul(1000)
        .saturating_sub(setup.push_msat);
    let funder_sat = (funder_msat / 1000).saturating_sub(fee + anchors_sat);
    let fundee_sat = setup.push_msat / 1000;
    let dust = if holder_is_broadcaster {
        setup.holder_dust_limit_sat
    } else {
        setup.counterparty_dust_limit_sat
    };
    let trim = |v: u64| if v < dust { 0 } else { v };
    let (holder_sat, cp_sat) = if setup.is_outbound {
        (funder_sat, fundee_sat)
    } else {
        (fundee_sat, funder_sat)
    };
    let (exp_b, exp_c) = if holder_is_broadcaster {
        (holder_sat, cp_sat)
    } else {
        (cp_sat, holder_sat)
    };
    let ok = data.to_broadcaster_value_sat == trim(exp_b)
        && data.to_countersignatory_value_sat == trim(exp_c);
    policy.check(RuleId::CommitmentFirstNoHtlcs, ok, || {
        format!(
            "first commitment pays {}/{} sat (broadcaster/countersignatory), expected {}/{}",
            data.to_broadcaster_value_sat,
            data.to_countersignatory_value_sat,
            trim(exp_b),
            trim(exp_c)
        )
    })
}
