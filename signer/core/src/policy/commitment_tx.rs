//! The commitment transaction the node built (LDK's), against the one the
//! signer rebuilt from the channel state: the signer signs its own, and a
//! node whose transaction differs is refused with the rule its difference
//! breaks (`commitment-input-funding`, `commitment-format`,
//! `commitment-to-self-delay`, `commitment-keys`, `commitment-anchors`,
//! `commitment-dust-trimmed`, `commitment-outputs-recognized`). A refusal
//! here means a compromised or broken node, or a state the two disagree on.

use alloc::format;

use bitcoin::consensus::encode::deserialize;
use bitcoin::{ScriptBuf, Transaction, TxOut};
use lightning::ln::chan_utils::get_revokeable_redeemscript;

use crate::commitment::Built;

use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};

/// Outputs of one transaction named by rule (the search for another
/// delay costs up to a few thousand hashes each).
const MAX_CLASSIFIED: usize = 4;
/// Anchor output value (BOLT 3).
const ANCHOR_SAT: u64 = 330;

/// Checks `given` (the node's serialized transaction) against `expected`.
/// `dust_limit_sat` is the broadcaster's; `to_self_delay` the one the
/// broadcaster's to_local output must carry.
pub fn check_given(
    policy: &PolicyConfig,
    expected: Built<'_>,
    given: &[u8],
    dust_limit_sat: u64,
    to_self_delay: u16,
) -> Result<(), SignerError> {
    if given.is_empty() {
        return Err(SignerError::invalid(
            "the request carries no commitment transaction: send the one the node built",
        ));
    }
    let given: Transaction = deserialize(given)
        .map_err(|_| SignerError::invalid("the commitment transaction does not decode"))?;
    let exp = expected.transaction;
    policy.check(
        RuleId::CommitmentInputFunding,
        given.input.len() == 1
            && given.input.first().map(|i| i.previous_output)
                == exp.input.first().map(|i| i.previous_output),
        || "the commitment does not spend exactly the channel's funding output".into(),
    )?;
    policy.check(
        RuleId::CommitmentFormat,
        given.version == exp.version
            && given.lock_time == exp.lock_time
            && given.input.first().map(|i| i.sequence) == exp.input.first().map(|i| i.sequence),
        || "version, locktime or sequence differ from BOLT 3's for this commitment number".into(),
    )?;
    if given.output == exp.output {
        return Ok(());
    }
    let to_local = |delay: u16| {
        get_revokeable_redeemscript(expected.revocation_key, delay, expected.delayed_payment_key)
            .to_p2wsh()
    };
    // Warn mode lets a violation through and goes on: name at most a few.
    for (i, o) in given
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| !exp.output.contains(o))
        .take(MAX_CLASSIFIED)
    {
        let (rule, why) = classify(o, exp, dust_limit_sat, to_self_delay, &to_local);
        policy.check(rule, false, || {
            format!("output {i} ({} sat): {why}", o.value.to_sat())
        })?;
    }
    for e in &exp.output {
        policy.check(
            RuleId::CommitmentDustTrimmed,
            given.output.contains(e),
            || {
                format!(
                    "an output of {} sat the state requires is missing (trimmed above the dust limit?)",
                    e.value.to_sat()
                )
            },
        )?;
    }
    // The same outputs in another order.
    policy.check(RuleId::CommitmentFormat, false, || {
        "outputs not in BOLT 3 order".into()
    })
}

/// Names the rule an output the signer did not build breaks.
fn classify(
    o: &TxOut,
    exp: &Transaction,
    dust_limit_sat: u64,
    to_self_delay: u16,
    to_local: &dyn Fn(u16) -> ScriptBuf,
) -> (RuleId, &'static str) {
    let value = o.value.to_sat();
    let expected_local = to_local(to_self_delay);
    if exp
        .output
        .iter()
        .any(|e| e.script_pubkey == o.script_pubkey)
    {
        return (
            RuleId::CommitmentOutputsRecognized,
            "pays a script of the state with another value",
        );
    }
    if value == ANCHOR_SAT {
        return (RuleId::CommitmentAnchors, "an anchor with the wrong key");
    }
    let local_value = exp
        .output
        .iter()
        .find(|e| e.script_pubkey == expected_local)
        .map(|e| e.value);
    if local_value == Some(o.value) {
        // Only on a refusal: try the delays a to_local output could carry.
        let other_delay = (0..=u16::MAX)
            .filter(|d| *d != to_self_delay)
            .take(4_096)
            .any(|d| to_local(d) == o.script_pubkey);
        return if other_delay {
            (
                RuleId::CommitmentToSelfDelay,
                "a to_local output with another delay than negotiated",
            )
        } else {
            (
                RuleId::CommitmentKeys,
                "a to_local output with keys not derived from the channel's",
            )
        };
    }
    if exp.output.iter().any(|e| e.value == o.value) {
        return (
            RuleId::CommitmentKeys,
            "the value of an output of the state, to keys not derived from the channel's",
        );
    }
    if value < dust_limit_sat {
        return (
            RuleId::CommitmentDustTrimmed,
            "below the dust limit: BOLT 3 trims it",
        );
    }
    (
        RuleId::CommitmentOutputsRecognized,
        "not an output of the channel's state",
    )
}
