//! Rules on channel set-up and the first commitment.

use alloc::format;

use crate::state::ChannelKind;
use crate::state::{CommitmentRecord, SetupRecord};

use crate::commitment::{commitment_fee_sat, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::{PolicyConfig, RuleId};
use crate::state::ChannelRecord;
use crate::ChannelKeysId;

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
    r: &SetupRecord,
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
    r: &SetupRecord,
    is_own_script: impl Fn(&bitcoin::Script) -> bool,
) -> Result<(), SignerError> {
    let known_type = matches!(
        ChannelKind::try_from(r.channel_type),
        Ok(ChannelKind::StaticRemoteKey | ChannelKind::AnchorsZeroFeeHtlcTx)
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

/// The pushes (msat, from the funder to the fundee at open) a first
/// commitment is consistent with: an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushRange {
    /// Lowest push.
    pub lo: u64,
    /// Highest push.
    pub hi: u64,
}

impl PushRange {
    fn exactly(msat: u64) -> Self {
        PushRange { lo: msat, hi: msat }
    }

    fn meet(self, other: PushRange) -> Option<PushRange> {
        let r = PushRange {
            lo: self.lo.max(other.lo),
            hi: self.hi.min(other.hi),
        };
        (r.lo <= r.hi).then_some(r)
    }
}

/// What a first commitment pays each side for a given push, before
/// trimming: (funder, fundee) in sat. The funder pays the fee and anchors.
pub fn first_commitment_values(
    setup: &SetupRecord,
    feerate_per_kw: u32,
    push_msat: u64,
) -> (u64, u64) {
    let anchors = setup.is_anchors();
    let fee = commitment_fee_sat(feerate_per_kw, 0, anchors);
    let anchors_sat = if anchors {
        2 * ANCHOR_OUTPUT_VALUE_SAT
    } else {
        0
    };
    let funder_msat = setup
        .channel_value_sat
        .saturating_mul(1000)
        .saturating_sub(push_msat);
    let funder_sat = (funder_msat / 1000).saturating_sub(fee + anchors_sat);
    (funder_sat, push_msat / 1000)
}

/// The pushes a first commitment's two outputs are consistent with, given
/// the broadcaster's dust limit; `None` when no push is.
pub fn push_range_of(
    setup: &SetupRecord,
    holder_is_broadcaster: bool,
    data: &CommitmentRecord,
) -> Option<PushRange> {
    let value_msat = setup.channel_value_sat.saturating_mul(1000);
    let dust = if holder_is_broadcaster {
        setup.holder_dust_limit_sat
    } else {
        setup.counterparty_dust_limit_sat
    };
    // A value below `keep` sat is trimmed to no output.
    let keep = dust.max(1);
    let holder_is_funder = setup.is_outbound;
    let (funder_v, fundee_v) = if holder_is_broadcaster == holder_is_funder {
        (
            data.to_broadcaster_value_sat,
            data.to_countersignatory_value_sat,
        )
    } else {
        (
            data.to_countersignatory_value_sat,
            data.to_broadcaster_value_sat,
        )
    };
    // The fundee gets floor(push / 1000) sat.
    let fundee = if fundee_v == 0 {
        PushRange {
            lo: 0,
            hi: keep.saturating_mul(1000) - 1,
        }
    } else if fundee_v < dust {
        return None;
    } else {
        let lo = fundee_v.checked_mul(1000)?;
        PushRange { lo, hi: lo + 999 }
    };
    // The funder gets value - ceil(push / 1000) - fee - anchors sat; with
    // no push, `paid`.
    let (paid, _) = first_commitment_values(setup, data.feerate_per_kw, 0);
    let funder = if funder_v == 0 {
        if paid < keep {
            PushRange {
                lo: 0,
                hi: value_msat,
            }
        } else {
            // ceil(push / 1000) > paid - keep.
            let k = paid - keep + 1;
            PushRange {
                lo: (k - 1) * 1000 + 1,
                hi: value_msat,
            }
        }
    } else if funder_v < dust || funder_v > paid {
        return None;
    } else {
        // ceil(push / 1000) == paid - funder_v.
        let k = paid - funder_v;
        PushRange {
            lo: if k == 0 { 0 } else { (k - 1) * 1000 + 1 },
            hi: k * 1000,
        }
    };
    PushRange {
        lo: 0,
        hi: value_msat,
    }
    .meet(fundee)?
    .meet(funder)
}

/// The first commitment has no HTLCs and gives the funder the funded value
/// (less push, fee and anchors), the fundee the push, each trimmed at dust.
///
/// The push is what the signer knows, never the node's claim: on a channel
/// we fund, the push set up (`onchain-no-push`); on a channel the peer
/// funds, what the peer's signature on our first commitment gives us (any
/// push is a gift to us), and their first commitment must agree with it.
pub fn check_first_commitment(
    policy: &PolicyConfig,
    setup: &SetupRecord,
    record: &ChannelRecord,
    holder_is_broadcaster: bool,
    data: &CommitmentRecord,
) -> Result<(), SignerError> {
    policy.check(
        RuleId::CommitmentFirstNoHtlcs,
        data.htlcs.is_empty(),
        || "the first commitment carries HTLCs".into(),
    )?;
    let known = if setup.is_outbound {
        Some(PushRange::exactly(setup.push_msat))
    } else if holder_is_broadcaster {
        // Ours, signed by the peer: whatever it gives us.
        Some(PushRange {
            lo: 0,
            hi: setup.channel_value_sat.saturating_mul(1000),
        })
    } else {
        // Theirs: consistent with what our first commitment gave us.
        match record.holder.as_ref().and_then(|h| h.commitment.as_ref()) {
            Some(ours) if ours.commitment_number == 0 => push_range_of(setup, true, ours),
            _ => None,
        }
    };
    let Some(known) = known else {
        return Err(SignerError::policy(
            RuleId::CommitmentFirstNoHtlcs,
            "a channel the peer funds: its first commitment is signed only after ours, \
             which tells the push, was validated",
        ));
    };
    let ok = push_range_of(setup, holder_is_broadcaster, data).and_then(|r| r.meet(known));
    policy.check(RuleId::CommitmentFirstNoHtlcs, ok.is_some(), || {
        let (funder, fundee) = first_commitment_values(setup, data.feerate_per_kw, known.lo);
        format!(
            "first commitment pays {}/{} sat (broadcaster/countersignatory), not what the \
             funded value and a push of {}..={} msat give (funder {funder} sat, fundee \
             {fundee} sat before trimming)",
            data.to_broadcaster_value_sat, data.to_countersignatory_value_sat, known.lo, known.hi
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(value_sat: u64, outbound: bool, anchors: bool, dust: u64) -> SetupRecord {
        SetupRecord {
            channel_value_sat: value_sat,
            is_outbound: outbound,
            holder_dust_limit_sat: dust,
            counterparty_dust_limit_sat: dust + 100,
            channel_type: if anchors {
                ChannelKind::AnchorsZeroFeeHtlcTx as i32
            } else {
                ChannelKind::StaticRemoteKey as i32
            },
            ..Default::default()
        }
    }

    /// The first commitment a push gives, trimmed as BOLT 3 says.
    fn commitment(s: &SetupRecord, holder: bool, feerate: u32, push: u64) -> CommitmentRecord {
        let (funder, fundee) = first_commitment_values(s, feerate, push);
        let dust = if holder {
            s.holder_dust_limit_sat
        } else {
            s.counterparty_dust_limit_sat
        };
        let trim = |v: u64| if v < dust { 0 } else { v };
        let (b, c) = if holder == s.is_outbound {
            (funder, fundee)
        } else {
            (fundee, funder)
        };
        CommitmentRecord {
            feerate_per_kw: feerate,
            to_broadcaster_value_sat: trim(b),
            to_countersignatory_value_sat: trim(c),
            ..Default::default()
        }
    }

    fn same_outputs(a: &CommitmentRecord, b: &CommitmentRecord) -> bool {
        a.to_broadcaster_value_sat == b.to_broadcaster_value_sat
            && a.to_countersignatory_value_sat == b.to_countersignatory_value_sat
    }

    /// The range holds exactly the pushes that give those outputs: every
    /// push inside does, the pushes just outside do not.
    #[test]
    fn push_range_is_exactly_the_pushes_giving_the_outputs() {
        let value = 100_000u64;
        let pushes = [
            0,
            1,
            999,
            1000,
            1001,
            353_999,
            354_000,
            354_001,
            20_000_000,
            20_000_500,
            value * 1000 - 6_000_000,
            value * 1000 - 1,
            value * 1000,
        ];
        let mut checked = 0;
        for anchors in [false, true] {
            for outbound in [false, true] {
                for holder in [false, true] {
                    for feerate in [253, 2500, 50_000] {
                        let s = setup(value, outbound, anchors, 354);
                        for push in pushes {
                            let c = commitment(&s, holder, feerate, push);
                            let r = push_range_of(&s, holder, &c).expect("consistent");
                            assert!(r.lo <= push && push <= r.hi, "{push} not in {r:?}");
                            for p in [r.lo, r.hi, (r.lo + r.hi) / 2] {
                                assert!(same_outputs(&commitment(&s, holder, feerate, p), &c));
                            }
                            if r.lo > 0 {
                                let below = commitment(&s, holder, feerate, r.lo - 1);
                                assert!(!same_outputs(&below, &c), "{push}: {r:?} too narrow");
                            }
                            if r.hi < value * 1000 {
                                let above = commitment(&s, holder, feerate, r.hi + 1);
                                assert!(!same_outputs(&above, &c), "{push}: {r:?} too narrow");
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 2 * 2 * 3 * pushes.len());
    }

    #[test]
    fn outputs_no_push_gives_are_refused() {
        let s = setup(100_000, false, true, 354);
        // More than the channel holds, an untrimmed dust output, an output
        // above what the funder can have.
        for (b, c) in [(60_000, 60_000), (100, 90_000), (0, 100_000)] {
            let d = CommitmentRecord {
                feerate_per_kw: 253,
                to_broadcaster_value_sat: b,
                to_countersignatory_value_sat: c,
                ..Default::default()
            };
            assert_eq!(push_range_of(&s, true, &d), None, "{b}/{c}");
        }
    }

    /// On a channel the peer funds, their first commitment must give us
    /// what ours did; before ours is validated it is not signed.
    #[test]
    fn inbound_first_commitments_agree_on_the_push() {
        let policy = PolicyConfig::default();
        let s = setup(100_000, false, true, 354);
        let push = 20_000_500;
        let ours = CommitmentRecord {
            commitment_number: 0,
            ..commitment(&s, true, 2500, push)
        };
        let mut record = ChannelRecord::default();
        assert!(check_first_commitment(&policy, &s, &record, true, &ours).is_ok());
        let theirs = commitment(&s, false, 2500, push);
        let e = check_first_commitment(&policy, &s, &record, false, &theirs).unwrap_err();
        assert!(format!("{e}").contains("after ours"), "{e}");
        record.holder = Some(crate::state::HolderRecord {
            commitment: Some(ours),
            ..Default::default()
        });
        assert!(check_first_commitment(&policy, &s, &record, false, &theirs).is_ok());
        // Theirs giving us 1 sat less than ours did is refused.
        let short = commitment(&s, false, 2500, push - 1000);
        let e = check_first_commitment(&policy, &s, &record, false, &short).unwrap_err();
        assert!(format!("{e}").contains("commitment-first-no-htlcs"), "{e}");
        // On a channel we fund, only the push set up (none) is accepted.
        let out = setup(100_000, true, true, 354);
        let gift = commitment(&out, false, 2500, 5_000_000);
        assert!(check_first_commitment(&policy, &out, &record, false, &gift).is_err());
        let plain = commitment(&out, false, 2500, 0);
        assert!(check_first_commitment(&policy, &out, &record, false, &plain).is_ok());
    }
}
