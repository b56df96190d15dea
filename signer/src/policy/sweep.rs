//! Rules on transactions that spend a channel's outputs with a signature
//! of ours alone: justice, HTLC claims and second-stage HTLC transactions,
//! anchor children (CPFP) and spendable outputs. Each pays only the
//! signer's wallet (`sweep-destination-allowed`), unlocks near the chain tip
//! (`sweep-locktime-range`), spends inputs whose amounts are proven
//! (`sweep-input-proven`: a segwit signature commits to its own input's
//! amount only, so a node could otherwise understate amounts across
//! requests and burn the difference in fees) and pays a fee bounded in
//! absolute terms (the on-chain feerate limit over the transaction's, or
//! the package's, weight) and in relative terms (a share of the value it
//! spends) (`sweep-fee-range`). A justice transaction needs the very
//! secret the peer revealed for the revoked commitment it spends
//! (`sweep-justice-secret`).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use bitcoin::absolute::LockTime;
use bitcoin::{OutPoint, Transaction, TxOut};

use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::{PolicyConfig, RuleId};

/// Seconds per block, to bound a time-based locktime.
const BLOCK_SECS: u64 = 600;

/// Witness weight allowed per input when bounding a fee (the largest
/// witness of the scripts the signer spends: an HTLC's revocation path).
pub const WITNESS_ALLOWANCE_WU: u64 = 300;

/// Outputs the signer knows the amount and script of: those of
/// transactions the request proved (by their txid), and those of
/// transactions the signer built itself.
#[derive(Default)]
pub struct Prevouts {
    known: BTreeMap<OutPoint, TxOut>,
}

impl Prevouts {
    /// Every output of `tx`, which the caller checked is the transaction
    /// behind its txid (it computed the txid from it).
    pub fn add_tx(&mut self, tx: &Transaction) {
        let txid = tx.compute_txid();
        for (vout, o) in tx.output.iter().enumerate() {
            self.known.insert(
                OutPoint {
                    txid,
                    vout: vout as u32,
                },
                o.clone(),
            );
        }
    }

    /// One output the signer knows from its own state.
    pub fn add(&mut self, outpoint: OutPoint, out: TxOut) {
        self.known.insert(outpoint, out);
    }

    /// The output an outpoint names, if proven.
    pub fn get(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        self.known.get(outpoint)
    }

    /// The amount of every input of `tx` (sat), or `sweep-input-proven`.
    pub fn amounts(&self, tx: &Transaction) -> Result<Vec<u64>, SignerError> {
        tx.input
            .iter()
            .enumerate()
            .map(|(i, txin)| {
                self.known
                    .get(&txin.previous_output)
                    .map(|o| o.value.to_sat())
                    .ok_or_else(|| {
                        SignerError::policy(
                            RuleId::SweepInputProven,
                            format!(
                                "input {i} spends {}, an output the request does not prove \
                                 (send the transaction that holds it)",
                                txin.previous_output
                            ),
                        )
                    })
            })
            .collect()
    }
}

/// Transactions a request sent as proofs, decoded.
pub fn decode_proofs(raw: &[Vec<u8>]) -> Result<Vec<Transaction>, SignerError> {
    if raw.len() > 1_000 {
        return Err(SignerError::invalid("at most 1000 previous transactions"));
    }
    raw.iter()
        .enumerate()
        .map(|(i, b)| {
            bitcoin::consensus::deserialize(b).map_err(|_| {
                SignerError::invalid(format!("previous transaction {i} does not decode"))
            })
        })
        .collect()
}

/// A transaction spending channel outputs, to judge.
pub struct Sweep<'a> {
    /// The transaction (no witnesses).
    pub tx: &'a Transaction,
    /// Every input's proven amount (sat).
    pub input_sat: &'a [u64],
    /// An output fixed by BOLT 3 that does not pay the wallet (the
    /// revocable output of a second-stage HTLC transaction).
    pub fixed_output: Option<usize>,
    /// Weight of unconfirmed parents the fee also pays for (a CPFP child's
    /// commitment).
    pub parent_weight: u64,
    /// Value the relative fee bound is measured against, when it is not the
    /// inputs' (a CPFP child protects the channel's value).
    pub at_stake_sat: Option<u64>,
    /// Whether the locktime is the sweep's choice (else BOLT 3 fixes it, as
    /// an HTLC-timeout transaction's expiry).
    pub free_locktime: bool,
}

/// The validator of every sweep: destinations, locktime and fee.
pub fn validate_sweep(s: &Sweep, facts: &Facts) -> Result<(), SignerError> {
    let policy = facts.policy;
    for (i, o) in s.tx.output.iter().enumerate() {
        if Some(i) == s.fixed_output {
            continue;
        }
        policy.check(
            RuleId::SweepDestinationAllowed,
            facts.is_allowed_destination(&o.script_pubkey),
            || format!("output {i} of the sweep pays a script outside the signer's wallet"),
        )?;
    }
    if s.free_locktime {
        check_locktime(s.tx.lock_time, facts)?;
    }
    let in_sat = s
        .input_sat
        .iter()
        .try_fold(0u64, |a, v| a.checked_add(*v))
        .ok_or_else(|| SignerError::invalid("input values overflow"))?;
    let out_sat =
        s.tx.output
            .iter()
            .try_fold(0u64, |a, o| a.checked_add(o.value.to_sat()))
            .ok_or_else(|| SignerError::invalid("output values overflow"))?;
    let fee = in_sat.checked_sub(out_sat).ok_or_else(|| {
        SignerError::invalid(format!(
            "outputs ({out_sat} sat) exceed the inputs ({in_sat} sat)"
        ))
    })?;
    let weight =
        s.tx.weight()
            .to_wu()
            .saturating_add(WITNESS_ALLOWANCE_WU.saturating_mul(s.tx.input.len() as u64))
            .saturating_add(s.parent_weight);
    let most = (policy.max_onchain_feerate_per_kw as u64).saturating_mul(weight) / 1000;
    policy.check(RuleId::SweepFeeRange, fee <= most, || {
        format!(
            "fee {fee} sat above {most} sat ({} sat/kw over {weight} weight units)",
            policy.max_onchain_feerate_per_kw
        )
    })?;
    let stake = s.at_stake_sat.unwrap_or(in_sat);
    let share = stake.saturating_mul(policy.max_sweep_fee_percent) / 100;
    policy.check(RuleId::SweepFeeRange, fee <= share, || {
        format!(
            "fee {fee} sat is more than {}% of the {stake} sat at stake",
            policy.max_sweep_fee_percent
        )
    })
}

/// The validator of a second-stage HTLC transaction of our commitment
/// against BOLT 3's (`expected`, built by the signer): it spends that HTLC
/// output with BOLT 3's sequence, has BOLT 3's version and locktime (with
/// anchors the peer signed SINGLE|ANYONECANPAY, so other inputs may bump
/// the fee and our output sits at our input's index), pays the revocable
/// output of the channel's keys and delay (`htlc-keys`) with the value
/// BOLT 3's fee leaves (`htlc-fee-range`) (`htlc-format` for the rest).
pub fn validate_holder_htlc_tx(
    policy: &PolicyConfig,
    expected: &Transaction,
    tx: &Transaction,
    i: usize,
    offered: bool,
    anchors: bool,
) -> Result<(), SignerError> {
    let (Some(exp_in), Some(wanted)) = (expected.input.first(), expected.output.first()) else {
        return Err(SignerError::internal(
            "BOLT 3 HTLC transaction without input or output",
        ));
    };
    let input_ok = tx.input.get(i).is_some_and(|x| {
        x.previous_output == exp_in.previous_output && x.sequence == exp_in.sequence
    });
    policy.check(RuleId::HtlcFormat, input_ok, || {
        "HTLC transaction input does not spend that HTLC output with the BOLT 3 sequence".into()
    })?;
    let ours = if anchors {
        tx.output.get(i)
    } else if tx.output.len() == 1 {
        tx.output.first()
    } else {
        None
    };
    let format_ok = (!offered || tx.lock_time == expected.lock_time)
        && (anchors
            || (tx.version == expected.version
                && tx.lock_time == expected.lock_time
                && tx.input.len() == 1))
        && ours.is_some();
    policy.check(RuleId::HtlcFormat, format_ok, || {
        "HTLC transaction version, locktime or shape differ from BOLT 3's".into()
    })?;
    let Some(ours) = ours else {
        return Err(SignerError::policy(
            RuleId::HtlcFormat,
            "the HTLC transaction has no output where BOLT 3 puts ours",
        ));
    };
    policy.check(
        RuleId::HtlcKeys,
        ours.script_pubkey == wanted.script_pubkey,
        || {
            "HTLC transaction output is not the revocable output of the channel's keys and delay"
                .into()
        },
    )?;
    policy.check(RuleId::HtlcFeeRange, ours.value == wanted.value, || {
        format!(
            "HTLC transaction output of {} sat, BOLT 3's fee at the commitment's feerate leaves {} sat",
            ours.value.to_sat(),
            wanted.value.to_sat()
        )
    })
}

/// Input `i` of `tx` spends `outpoint` (`what`, for the refusal).
pub fn check_spends(
    policy: &PolicyConfig,
    rule: RuleId,
    tx: &Transaction,
    i: usize,
    outpoint: &OutPoint,
    what: &str,
) -> Result<(), SignerError> {
    policy.check(
        rule,
        tx.input
            .get(i)
            .is_some_and(|x| x.previous_output == *outpoint),
        || format!("input {i} does not spend {what}"),
    )
}

/// `sweep-justice-secret`: the secret given is the one the peer revealed
/// for the revoked commitment the justice transaction spends.
pub fn check_justice_secret(
    given: &[u8; 32],
    revealed: Option<[u8; 32]>,
    facts: &Facts,
) -> Result<(), SignerError> {
    facts.policy.check(
        RuleId::SweepJusticeSecret,
        revealed.is_some_and(|r| &r == given),
        || match revealed {
            None => "the spent commitment is not one the peer revoked".into(),
            Some(_) => "the secret is not the one the peer revealed for that commitment".into(),
        },
    )
}

/// `sweep-locktime-range`: at most `max_sweep_locktime_ahead` blocks past
/// the checked height (or as many ten-minute blocks past the clock).
pub fn check_locktime(lock_time: LockTime, facts: &Facts) -> Result<(), SignerError> {
    let policy = facts.policy;
    let (height, now) = (facts.height, facts.now);
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
            now == 0 || u64::from(t.to_consensus_u32()) <= now + u64::from(ahead) * BLOCK_SECS,
            || format!("sweep locked until time {t}, now {now}"),
        ),
    }
}
