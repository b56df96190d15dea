//! Rules on on-chain transactions the wallet signs (funding, spends).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use bitcoin::hashes::Hash;
use bitcoin::{OutPoint, Psbt, ScriptBuf, TxOut};

use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::RuleId;
use crate::ChannelKeysId;

/// What a wallet transaction does to the signer's records.
#[derive(Debug, Default)]
pub struct PsbtVerdict {
    /// Channels it funds (their funding is recorded as signed, by txid).
    pub funds: Vec<ChannelKeysId>,
    /// Its fee (sat), proven by the previous transactions.
    pub fee_sat: u64,
}

/// An HTLC output of a holder commitment the signer signed for broadcast,
/// and what its second-stage (HTLC-timeout or HTLC-success) transaction
/// pays: our revocable output after the delay. Rebuilt by the signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecondStage {
    /// The channel.
    pub channel: ChannelKeysId,
    /// The HTLC output of our commitment (what the input spends).
    pub htlc_output: TxOut,
    /// The output BOLT 3's HTLC transaction pays.
    pub pays: TxOut,
}

/// Witness weight of an HTLC input of a second-stage transaction (the
/// larger, HTLC-success: two signatures, the preimage, the script).
const HTLC_WITNESS_WEIGHT: u64 = 327;

/// Witness weight of a 2-of-2 funding input (a commitment's).
const FUNDING_WITNESS_WEIGHT: u64 = 222;

/// Witness weight of a P2WPKH input (signature and key), for the fee bound.
const P2WPKH_WITNESS_WEIGHT: u64 = 108;

/// The validator of `SignPsbt`, before any input is signed:
/// - every output pays our wallet, an allow-listed address, the
///   second-stage output of an HTLC of our broadcast commitment that the
///   input at the same index spends (anchor channels' HTLC transactions
///   with wallet inputs for the fee) (`onchain-outputs-known`), or funds a
///   channel we fund
///   (`onchain-funding-outbound-only`) with its recorded value
///   (`onchain-funding-output-matches`) at its recorded outpoint, once
///   (`onchain-funding-outpoint`), after its first commitment was validated
///   (`onchain-initial-commitment-first`);
/// - a funding transaction spends only segwit outputs
///   (`onchain-funding-segwit-inputs`);
/// - every input's amount is proven by its previous transaction, and the
///   fee stays under the on-chain feerate limit over the transaction's
///   weight — with a channel's commitment it pays for (a CPFP child spending
///   an anchor), the package's — and within the wallet's fee budget over
///   the rolling window (`onchain-fee-range`);
/// - version 2, standard weight (`onchain-format-standard`).
///
/// `funding_scripts` maps the funding output script of every channel set
/// up with the signer to the channel; `own_outputs` tells which outputs the
/// PSBT proves are the wallet's (a key origin the signer derived and
/// matched), beyond the scripts it knows by heart; `second_stage` holds the
/// HTLC outputs of the holder commitments the signer signed for broadcast
/// (their amounts are the signer's rebuild, no previous transaction needed).
/// A zero-value OP_RETURN output pays nobody and is taken.
pub fn validate_psbt(
    psbt: &Psbt,
    facts: &Facts,
    funding_scripts: &BTreeMap<ScriptBuf, ChannelKeysId>,
    own_outputs: &[bool],
    second_stage: &BTreeMap<OutPoint, SecondStage>,
) -> Result<PsbtVerdict, SignerError> {
    let policy = facts.policy;
    let tx = &psbt.unsigned_tx;
    let txid = tx.compute_txid();
    let mut verdict = PsbtVerdict::default();
    for (i, out) in tx.output.iter().enumerate() {
        let burns_nothing = out.value.to_sat() == 0 && out.script_pubkey.is_op_return();
        // SIGHASH_SINGLE|ANYONECANPAY: an HTLC transaction's output sits at
        // the index of the input spending the HTLC.
        let htlc_second_stage = tx
            .input
            .get(i)
            .and_then(|x| second_stage.get(&x.previous_output))
            .is_some_and(|s| s.pays == *out);
        if facts.is_allowed_destination(&out.script_pubkey)
            || own_outputs.get(i).copied().unwrap_or(false)
            || burns_nothing
            || htlc_second_stage
        {
            continue;
        }
        let Some((id, record, setup)) = funding_scripts
            .get(&out.script_pubkey)
            .and_then(|id| Some((id, facts.channels.get(id)?)))
            .and_then(|(id, r)| Some((id, r, r.setup.as_ref()?)))
        else {
            policy.check(RuleId::OnchainOutputsKnown, false, || {
                format!("output {i} pays neither the signer's wallet, an allow-listed address, nor a channel set up with it")
            })?;
            continue;
        };
        policy.check(RuleId::OnchainFundingOutboundOnly, setup.is_outbound, || {
            format!("output {i} funds channel {id}, which the peer funds: our wallet never pays into it")
        })?;
        policy.check(
            RuleId::OnchainFundingOutputMatches,
            out.value.to_sat() == setup.channel_value_sat,
            || format!("output {i} funds a channel with a value other than the one set up"),
        )?;
        let recorded = setup.funding_outpoint.as_ref();
        let at_outpoint = recorded
            .is_some_and(|o| o.txid[..] == txid.to_byte_array()[..] && o.vout as usize == i);
        policy.check(RuleId::OnchainFundingOutpoint, at_outpoint, || {
            format!("output {i} funds channel {id} elsewhere than the funding outpoint recorded at set-up")
        })?;
        let once = tx
            .output
            .iter()
            .filter(|o| o.script_pubkey == out.script_pubkey)
            .count()
            == 1;
        policy.check(RuleId::OnchainFundingOutpoint, once, || {
            format!("the transaction funds channel {id} more than once")
        })?;
        let first = record.funding_signed_txid.is_empty()
            || record.funding_signed_txid[..] == txid.to_byte_array()[..];
        policy.check(RuleId::OnchainFundingOutpoint, first, || {
            format!("channel {id} was already funded by another transaction")
        })?;
        policy.check(
            RuleId::OnchainInitialCommitmentFirst,
            record.holder.is_some(),
            || {
                format!(
                    "output {i} funds a channel whose first commitment is not countersigned yet"
                )
            },
        )?;
        verdict.funds.push(*id);
    }
    let funds_channel = !verdict.funds.is_empty();
    let mut in_sat: u64 = 0;
    let mut parents_weight: u64 = 0;
    let mut htlc_witness_weight: u64 = 0;
    for (i, (txin, input)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
        if let Some(htlc) = second_stage.get(&txin.previous_output) {
            // An HTLC of our broadcast commitment: the amount is the
            // signer's rebuild; a witness_utxo saying otherwise is a lie.
            if input
                .witness_utxo
                .as_ref()
                .is_some_and(|w| *w != htlc.htlc_output)
            {
                return Err(SignerError::invalid(format!(
                    "input {i}: witness_utxo contradicts the HTLC output of channel {}",
                    htlc.channel
                )));
            }
            in_sat = in_sat
                .checked_add(htlc.htlc_output.value.to_sat())
                .ok_or_else(|| SignerError::invalid("input values overflow"))?;
            htlc_witness_weight = htlc_witness_weight
                .saturating_add(HTLC_WITNESS_WEIGHT.saturating_sub(P2WPKH_WITNESS_WEIGHT));
            continue;
        }
        // Segwit v0 signatures commit to the amount only; the previous
        // transaction proves it (a node lying about amounts inflates fees).
        let prev = input.non_witness_utxo.as_ref().ok_or_else(|| {
            SignerError::invalid(format!(
                "input {i}: the previous transaction (non_witness_utxo) is required"
            ))
        })?;
        if prev.compute_txid() != txin.previous_output.txid {
            return Err(SignerError::invalid(format!(
                "input {i}: non_witness_utxo is not the spent transaction"
            )));
        }
        let spent = prev
            .output
            .get(txin.previous_output.vout as usize)
            .ok_or_else(|| {
                SignerError::invalid(format!("input {i}: spent output index out of range"))
            })?;
        if input.witness_utxo.as_ref().is_some_and(|w| w != spent) {
            return Err(SignerError::invalid(format!(
                "input {i}: witness_utxo contradicts the previous transaction"
            )));
        }
        if funds_channel {
            policy.check(
                RuleId::OnchainFundingSegwitInputs,
                spent.script_pubkey.is_witness_program(),
                || {
                    format!(
                        "input {i} of a funding transaction is not segwit: its txid could change"
                    )
                },
            )?;
        }
        in_sat = in_sat
            .checked_add(spent.value.to_sat())
            .ok_or_else(|| SignerError::invalid("input values overflow"))?;
        // A commitment of one of our channels (it spends the funding
        // outpoint): the fee pays for it too.
        let spends_funding = prev.input.len() == 1
            && facts.channels.values().any(|c| {
                c.setup
                    .as_ref()
                    .and_then(|s| s.funding_outpoint.as_ref())
                    .is_some_and(|o| {
                        o.txid[..] == prev.input[0].previous_output.txid.to_byte_array()[..]
                            && o.vout == prev.input[0].previous_output.vout
                    })
            });
        if spends_funding {
            parents_weight =
                parents_weight.saturating_add(prev.weight().to_wu() + FUNDING_WITNESS_WEIGHT);
        }
    }
    let out_sat = tx
        .output
        .iter()
        .try_fold(0u64, |a, o| a.checked_add(o.value.to_sat()))
        .ok_or_else(|| SignerError::invalid("output values overflow"))?;
    let fee = in_sat.checked_sub(out_sat).ok_or_else(|| {
        SignerError::invalid(format!(
            "outputs ({out_sat} sat) exceed inputs ({in_sat} sat)"
        ))
    })?;
    let weight =
        tx.weight().to_wu() + P2WPKH_WITNESS_WEIGHT * tx.input.len() as u64 + htlc_witness_weight;
    let max_fee = policy.max_onchain_feerate_per_kw as u64 * (weight + parents_weight) / 1000;
    policy.check(RuleId::OnchainFeeRange, fee <= max_fee, || {
        format!(
            "fee {fee} sat above {max_fee} sat ({} sat/kw)",
            policy.max_onchain_feerate_per_kw
        )
    })?;
    if let Some(budget) = policy.onchain_fee_budget_sat {
        let window = policy.velocity_window_secs;
        let spent: u64 = facts
            .meta
            .recent_fees
            .iter()
            .filter(|f| f.at.saturating_add(window) > facts.now)
            .map(|f| f.sat)
            .sum();
        policy.check(
            RuleId::OnchainFeeRange,
            spent.saturating_add(fee) <= budget,
            || {
                format!(
                    "the wallet paid {spent} sat in fees within {window} s; {fee} sat more is above the {budget} sat budget"
                )
            },
        )?;
    }
    verdict.fee_sat = fee;
    policy.check(
        RuleId::OnchainFormatStandard,
        tx.version.0 == 2 && weight <= 400_000,
        || "transaction is not version 2 or exceeds the standard weight".into(),
    )?;
    Ok(verdict)
}
