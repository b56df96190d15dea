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
use bitcoin::{OutPoint, Script, Transaction, TxOut};

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

impl<'a> Sweep<'a> {
    /// A sweep whose every output pays the wallet, with no parent to pay
    /// for and a locktime of its choice.
    pub fn plain(tx: &'a Transaction, input_sat: &'a [u64]) -> Self {
        Sweep {
            tx,
            input_sat,
            fixed_output: None,
            parent_weight: 0,
            at_stake_sat: None,
            free_locktime: true,
        }
    }
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

/// A transaction spending one output the signer knows (an HTLC output of
/// the peer's commitment, our anchor), with fee inputs of the node's.
pub struct OutputSpend<'a> {
    /// The transaction (no witnesses).
    pub tx: &'a Transaction,
    /// The input the signer signs.
    pub input: usize,
    /// The output that input must spend, from the signer's own rebuild.
    pub spends: OutPoint,
    /// The rule a different outpoint breaks, and what it is, for the refusal.
    pub rule: RuleId,
    /// What `spends` is, for the refusal.
    pub what: &'a str,
    /// The outputs proven: the request's transactions and the signer's own.
    pub proofs: &'a Prevouts,
    /// Weight of an unconfirmed parent the fee also pays for.
    pub parent_weight: u64,
    /// Value the relative fee bound is measured against, if not the inputs'.
    pub at_stake_sat: Option<u64>,
}

/// The validator of an HTLC claim on the peer's commitment and of an
/// anchor spend (CPFP): the input spends the output the signer rebuilt,
/// every input's amount is proven, then every rule of a sweep.
pub fn validate_output_spend(s: &OutputSpend, facts: &Facts) -> Result<(), SignerError> {
    check_spends(facts.policy, s.rule, s.tx, s.input, &s.spends, s.what)?;
    let amounts = s.proofs.amounts(s.tx)?;
    validate_sweep(
        &Sweep {
            parent_weight: s.parent_weight,
            at_stake_sat: s.at_stake_sat,
            ..Sweep::plain(s.tx, &amounts)
        },
        facts,
    )
}

/// A second-stage HTLC transaction of our commitment.
pub struct HolderHtlcSpend<'a> {
    /// BOLT 3's transaction, built by the signer.
    pub expected: &'a Transaction,
    /// The node's transaction (no witnesses).
    pub tx: &'a Transaction,
    /// The input spending the HTLC output.
    pub input: usize,
    /// Whether we offered the HTLC (an HTLC-timeout transaction).
    pub offered: bool,
    /// Whether the channel has anchors (fee inputs may be added).
    pub anchors: bool,
    /// The outputs proven, with our commitment's.
    pub proofs: &'a Prevouts,
}

/// The validator of `SignHolderHtlcTransaction`: BOLT 3's transaction
/// (`validate_holder_htlc_tx`); with anchors, the fee inputs' amounts
/// proven, change to the wallet and the fee bounded.
pub fn validate_holder_htlc_spend(s: &HolderHtlcSpend, facts: &Facts) -> Result<(), SignerError> {
    validate_holder_htlc_tx(
        facts.policy,
        s.expected,
        s.tx,
        s.input,
        s.offered,
        s.anchors,
    )?;
    if !s.anchors {
        return Ok(());
    }
    let amounts = s.proofs.amounts(s.tx)?;
    validate_sweep(
        &Sweep {
            tx: s.tx,
            input_sat: &amounts,
            fixed_output: Some(s.input),
            parent_weight: 0,
            at_stake_sat: None,
            free_locktime: false,
        },
        facts,
    )
}

/// The revoked commitment a justice input leads to: the transaction it
/// spends, if that spends the funding outpoint alone, or that
/// transaction's parent (the peer's HTLC transaction on its revoked
/// commitment); `sweep-input-proven` if the request does not prove it.
pub fn revoked_commitment<'a>(
    tx: &Transaction,
    input: usize,
    proofs: &'a [Transaction],
    funding: &OutPoint,
) -> Result<&'a Transaction, SignerError> {
    let unproven = || {
        SignerError::policy(
            RuleId::SweepInputProven,
            "the request does not prove the revoked commitment the justice input spends \
             (send it and the transactions the inputs spend)",
        )
    };
    let by_txid = |txid: &bitcoin::Txid| proofs.iter().find(|t| t.compute_txid() == *txid);
    let spends_funding = |t: &Transaction| {
        t.input.len() == 1
            && t.input
                .first()
                .is_some_and(|x| x.previous_output == *funding)
    };
    let spent = tx
        .input
        .get(input)
        .and_then(|x| by_txid(&x.previous_output.txid))
        .ok_or_else(unproven)?;
    if spends_funding(spent) {
        return Ok(spent);
    }
    spent
        .input
        .first()
        .and_then(|x| by_txid(&x.previous_output.txid))
        .filter(|parent| spends_funding(parent))
        .ok_or_else(unproven)
}

/// A justice transaction's input, to judge.
pub struct JusticeSpend<'a> {
    /// The transaction (no witnesses).
    pub tx: &'a Transaction,
    /// The input the signer signs.
    pub input: usize,
    /// The per-commitment secret the node gave.
    pub given_secret: &'a [u8; 32],
    /// The secret the peer revealed for the commitment spent, if it did.
    pub revealed_secret: Option<[u8; 32]>,
    /// The outputs proven by the request.
    pub proofs: &'a Prevouts,
}

/// The validator of a justice signature: the secret is the one the peer
/// revealed for that very commitment (`sweep-justice-secret`), every
/// input's amount is proven, then every rule of a sweep. Returns the output
/// the input spends.
pub fn validate_justice(s: &JusticeSpend, facts: &Facts) -> Result<TxOut, SignerError> {
    check_justice_secret(s.given_secret, s.revealed_secret, facts)?;
    let amounts = s.proofs.amounts(s.tx)?;
    let spent =
        s.tx.input
            .get(s.input)
            .and_then(|x| s.proofs.get(&x.previous_output))
            .cloned()
            .ok_or_else(|| SignerError::invalid("input index out of range"))?;
    validate_sweep(&Sweep::plain(s.tx, &amounts), facts)?;
    Ok(spent)
}

/// A sweep of outputs LDK handed back (`SpendSpendableOutputs`), built by
/// the signer from the node's descriptors.
pub struct SpendableSweep<'a> {
    /// The transaction built (no witnesses).
    pub tx: &'a Transaction,
    /// What each input's descriptor says it spends (amount and script).
    pub claimed: &'a [TxOut],
    /// The outputs the request proved.
    pub proofs: &'a Prevouts,
    /// The change script asked for, paid or not.
    pub change: &'a Script,
    /// The feerate asked for (sat per 1000 weight units).
    pub feerate_per_kw: u32,
}

/// The validator of `SpendSpendableOutputs`: a feerate within the limit,
/// every descriptor's output proven by the transaction holding it
/// (`sweep-input-proven`), a change script of the wallet even when no change
/// is paid, then every rule of a sweep.
pub fn validate_spendable_sweep(s: &SpendableSweep, facts: &Facts) -> Result<(), SignerError> {
    let policy = facts.policy;
    policy.check(
        RuleId::SweepFeeRange,
        s.feerate_per_kw <= policy.max_onchain_feerate_per_kw,
        || {
            format!(
                "sweep feerate {} sat/kw above {} sat/kw",
                s.feerate_per_kw, policy.max_onchain_feerate_per_kw
            )
        },
    )?;
    let amounts = s.proofs.amounts(s.tx)?;
    for (i, (txin, claimed)) in s.tx.input.iter().zip(s.claimed).enumerate() {
        let proven = s.proofs.get(&txin.previous_output) == Some(claimed);
        policy.check(RuleId::SweepInputProven, proven, || {
            format!(
                "input {i}: the transaction sent does not hold the descriptor's output \
                 (amount and script) at {}",
                txin.previous_output
            )
        })?;
    }
    policy.check(
        RuleId::SweepDestinationAllowed,
        facts.is_allowed_destination(s.change),
        || "the sweep's change script is outside the signer's wallet".into(),
    )?;
    validate_sweep(&Sweep::plain(s.tx, &amounts), facts)
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
