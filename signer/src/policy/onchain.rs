//! Rules on on-chain transactions the wallet signs (funding, spends).

use alloc::format;

use bitcoin::{Psbt, Script};

use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};

/// What the signer knows about an output that funds one of its channels.
pub struct FundingMatch {
    /// The output's value equals the channel value recorded at set-up.
    pub value_matches: bool,
    /// The channel's first holder commitment was countersigned and validated.
    pub first_commitment_validated: bool,
}

/// Witness weight of a P2WPKH input (signature and key), for the fee bound.
const P2WPKH_WITNESS_WEIGHT: u64 = 108;

/// Checks a PSBT before any of its inputs is signed:
/// - every output pays our wallet or funds a channel set up with this signer
///   (2-of-2 of the recorded keys, the recorded value), after its first
///   commitment was validated;
/// - a funding transaction spends only segwit outputs;
/// - every input's amount is proven by its previous transaction, and the fee
///   stays under the on-chain feerate limit.
pub fn check_psbt(
    policy: &PolicyConfig,
    psbt: &Psbt,
    is_own_script: impl Fn(&Script) -> bool,
    funding: impl Fn(&Script, u64) -> Option<FundingMatch>,
) -> Result<(), SignerError> {
    let tx = &psbt.unsigned_tx;
    let mut funds_channel = false;
    for (i, out) in tx.output.iter().enumerate() {
        if is_own_script(&out.script_pubkey) {
            continue;
        }
        match funding(&out.script_pubkey, out.value.to_sat()) {
            Some(m) => {
                funds_channel = true;
                policy.check(RuleId::OnchainFundingOutputMatches, m.value_matches, || {
                    format!("output {i} funds a channel with a value other than the one set up")
                })?;
                policy.check(RuleId::OnchainInitialCommitmentFirst, m.first_commitment_validated, || {
                    format!("output {i} funds a channel whose first commitment is not countersigned yet")
                })?;
            }
            None => policy.check(RuleId::OnchainOutputsKnown, false, || {
                format!("output {i} pays neither the signer's wallet, an allow-listed address, nor a channel set up with it")
            })?,
        }
    }
    let mut in_sat: u64 = 0;
    for (i, (txin, input)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
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
    let weight = tx.weight().to_wu() + P2WPKH_WITNESS_WEIGHT * tx.input.len() as u64;
    let max_fee = policy.max_onchain_feerate_per_kw as u64 * weight / 1000;
    policy.check(RuleId::OnchainFeeRange, fee <= max_fee, || {
        format!(
            "fee {fee} sat above {max_fee} sat ({} sat/kw)",
            policy.max_onchain_feerate_per_kw
        )
    })?;
    policy.check(
        RuleId::OnchainFormatStandard,
        tx.version.0 == 2 && weight <= 400_000,
        || "transaction is not version 2 or exceeds the standard weight".into(),
    )
}
