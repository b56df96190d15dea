//! OutputSpender: sweeping outputs LDK hands back (our to_local after its
//! delay, our to_remote, outputs already paying the wallet) into the wallet.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, PublicKey, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute::LockTime, Amount, CompressedPublicKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Witness,
};
use lightning::ln::chan_utils;
use lightning::ln::channel_keys::{DelayedPaymentKey, RevocationKey};
use lnpd_proto::signer::{self as pb, spendable_output::Kind};

use super::shared::MAX_TX_IO;
use crate::commitment::{parse_outpoint, parse_pubkey};
use crate::error::SignerError;
use crate::policy::sweep::{validate_spendable_sweep, Prevouts, SpendableSweep};
use crate::signer::Signer;
use crate::store::Store;
use crate::ChannelKeysId;

/// How one input is spent.
enum Spend {
    /// P2WPKH: witness `<sig> <pubkey>`.
    Wpkh(SecretKey),
    /// P2WSH with a script; witness `<sig> [extra] <script>`.
    Wsh {
        key: SecretKey,
        script: ScriptBuf,
        empty_before_script: bool,
    },
}

const DUMMY_SIG_LEN: usize = 73;

impl<S: Store> Signer<S> {
    /// The input spending a descriptor's output, what the descriptor says
    /// the output is, and how to sign it.
    fn plan_input(&self, d: &pb::SpendableOutput) -> Result<(TxIn, TxOut, Spend), SignerError> {
        let outpoint = parse_outpoint(d.outpoint.as_ref())?;
        let out = d
            .output
            .as_ref()
            .ok_or_else(|| SignerError::invalid("descriptor without output"))?;
        let spk = ScriptBuf::from_bytes(out.script_pubkey.clone());
        let kind = d
            .kind
            .as_ref()
            .ok_or_else(|| SignerError::invalid("descriptor without kind"))?;
        let (sequence, spend) = match kind {
            Kind::StaticPayment(p) => {
                let id = ChannelKeysId::from_slice(&p.channel_keys_id)?;
                let key = self.keys.channel_secrets(&id).payment_key;
                let pk = PublicKey::from_secret_key(&self.secp, &key);
                let anchor_script = chan_utils::get_to_countersigner_keyed_anchor_redeemscript(&pk);
                if spk == ScriptBuf::new_p2wpkh(&CompressedPublicKey(pk).wpubkey_hash()) {
                    (Sequence::ENABLE_RBF_NO_LOCKTIME, Spend::Wpkh(key))
                } else if spk == anchor_script.to_p2wsh() {
                    (
                        Sequence(1),
                        Spend::Wsh {
                            key,
                            script: anchor_script,
                            empty_before_script: false,
                        },
                    )
                } else {
                    return Err(SignerError::invalid(
                        "static payment output does not pay this channel's payment key",
                    ));
                }
            }
            Kind::DelayedPayment(p) => {
                let id = ChannelKeysId::from_slice(&p.channel_keys_id)?;
                let point = parse_pubkey("per_commitment_point", &p.per_commitment_point)?;
                let revocation =
                    RevocationKey(parse_pubkey("revocation_pubkey", &p.revocation_pubkey)?);
                let delay = u16::try_from(p.to_self_delay)
                    .map_err(|_| SignerError::invalid("to_self_delay above 65535"))?;
                let base = self.keys.channel_secrets(&id).delayed_payment_base_key;
                let key = chan_utils::derive_private_key(&self.secp, &point, &base);
                let delayed = DelayedPaymentKey(PublicKey::from_secret_key(&self.secp, &key));
                let script = chan_utils::get_revokeable_redeemscript(&revocation, delay, &delayed);
                if spk != script.to_p2wsh() {
                    return Err(SignerError::invalid(
                        "delayed output does not match its keys and delay",
                    ));
                }
                (
                    Sequence(delay as u32),
                    Spend::Wsh {
                        key,
                        script,
                        empty_before_script: true,
                    },
                )
            }
            Kind::StaticOutput(_) => {
                let (chain, index) = self.wallet_scripts.position(&spk).ok_or_else(|| {
                    SignerError::invalid("static output does not pay the signer's wallet")
                })?;
                (
                    Sequence::ENABLE_RBF_NO_LOCKTIME,
                    Spend::Wpkh(self.keys.wallet_key(&self.secp, chain, index)?),
                )
            }
        };
        let txin = TxIn {
            previous_output: outpoint,
            script_sig: ScriptBuf::new(),
            sequence,
            witness: Witness::new(),
        };
        let claimed = TxOut {
            value: Amount::from_sat(out.value_sat),
            script_pubkey: spk,
        };
        Ok((txin, claimed, spend))
    }

    pub(crate) fn spend_spendable_outputs(
        &self,
        r: &pb::SpendSpendableOutputsRequest,
    ) -> Result<pb::SpendSpendableOutputsReply, SignerError> {
        if r.descriptors.is_empty()
            || r.descriptors.len() > MAX_TX_IO
            || r.outputs.len() > MAX_TX_IO
        {
            return Err(SignerError::invalid(
                "need 1 to 1000 descriptors and at most 1000 outputs",
            ));
        }
        let mut inputs = Vec::with_capacity(r.descriptors.len());
        let mut proofs = Prevouts::default();
        let mut total_in: u64 = 0;
        for d in &r.descriptors {
            let (txin, claimed, spend) = self.plan_input(d)?;
            if !d.previous_tx.is_empty() {
                let prev: Transaction =
                    bitcoin::consensus::deserialize(&d.previous_tx).map_err(|_| {
                        SignerError::invalid(format!(
                            "the transaction holding {} does not decode",
                            txin.previous_output
                        ))
                    })?;
                proofs.add_tx(&prev);
            }
            total_in = total_in
                .checked_add(claimed.value.to_sat())
                .ok_or_else(|| SignerError::invalid("input values overflow"))?;
            inputs.push((txin, claimed, spend));
        }
        let mut outputs = Vec::with_capacity(r.outputs.len() + 1);
        for o in &r.outputs {
            outputs.push(TxOut {
                value: Amount::from_sat(o.value_sat),
                script_pubkey: ScriptBuf::from_bytes(o.script_pubkey.clone()),
            });
        }
        let change = ScriptBuf::from_bytes(r.change_script.clone());
        let total_out = outputs
            .iter()
            .try_fold(0u64, |a, o| a.checked_add(o.value.to_sat()))
            .ok_or_else(|| SignerError::invalid("output values overflow"))?;
        let lock_time = LockTime::from_consensus(r.lock_time.unwrap_or(0));
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time,
            input: inputs.iter().map(|(i, _, _)| i.clone()).collect(),
            output: outputs,
        };
        // Weight with placeholder witnesses of the final size.
        for (txin, (_, _, spend)) in tx.input.iter_mut().zip(&inputs) {
            txin.witness = match spend {
                Spend::Wpkh(_) => Witness::from_slice(&[&[0u8; DUMMY_SIG_LEN][..], &[0u8; 33][..]]),
                Spend::Wsh {
                    script,
                    empty_before_script,
                    ..
                } => {
                    let mut w = Witness::new();
                    w.push([0u8; DUMMY_SIG_LEN]);
                    if *empty_before_script {
                        w.push([0u8; 0]);
                    }
                    w.push(script.as_bytes());
                    w
                }
            };
        }
        let fee_for = |tx: &Transaction| {
            tx.weight()
                .to_wu()
                .saturating_mul(r.feerate_sat_per_kw as u64)
                / 1000
        };
        tx.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: change.clone(),
        });
        let fee_with_change = fee_for(&tx);
        let change_value = total_in
            .checked_sub(total_out)
            .and_then(|v| v.checked_sub(fee_with_change));
        match change_value {
            Some(v) if v >= change.minimal_non_dust().to_sat() => {
                if let Some(last) = tx.output.last_mut() {
                    last.value = Amount::from_sat(v);
                }
            }
            _ => {
                tx.output.pop();
                let fee = fee_for(&tx);
                if total_in < total_out.saturating_add(fee) {
                    return Err(SignerError::invalid(format!(
                        "inputs of {total_in} sat cannot pay outputs of {total_out} sat and a fee of {fee} sat"
                    )));
                }
            }
        }

        let mut unsigned = tx.clone();
        for txin in unsigned.input.iter_mut() {
            txin.witness = Witness::new();
        }
        let claimed: Vec<TxOut> = inputs.iter().map(|(_, c, _)| c.clone()).collect();
        validate_spendable_sweep(
            &SpendableSweep {
                tx: &unsigned,
                claimed: &claimed,
                proofs: &proofs,
                change: &change,
                feerate_per_kw: r.feerate_sat_per_kw,
            },
            &self.facts(),
        )?;
        let mut cache = SighashCache::new(&unsigned);
        for (i, (_, claimed, spend)) in inputs.iter().enumerate() {
            // The validator proved the claimed amount.
            let amount = claimed.value;
            let (key, digest) = match spend {
                Spend::Wpkh(key) => {
                    let pk = CompressedPublicKey(PublicKey::from_secret_key(&self.secp, key));
                    let spk = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
                    let h = cache.p2wpkh_signature_hash(i, &spk, amount, EcdsaSighashType::All);
                    (key, h.map(|h| h.to_byte_array()).map_err(|e| e.to_string()))
                }
                Spend::Wsh { key, script, .. } => {
                    let h = cache.p2wsh_signature_hash(i, script, amount, EcdsaSighashType::All);
                    (key, h.map(|h| h.to_byte_array()).map_err(|e| e.to_string()))
                }
            };
            let digest = digest.map_err(|e| SignerError::invalid(format!("input {i}: {e}")))?;
            let sig = self
                .secp
                .sign_ecdsa_low_r(&Message::from_digest(digest), key);
            let mut witness = Witness::new();
            witness.push_ecdsa_signature(&bitcoin::ecdsa::Signature::sighash_all(sig));
            match spend {
                Spend::Wpkh(key) => {
                    witness.push(PublicKey::from_secret_key(&self.secp, key).serialize())
                }
                Spend::Wsh {
                    script,
                    empty_before_script,
                    ..
                } => {
                    if *empty_before_script {
                        witness.push([0u8; 0]);
                    }
                    witness.push(script.as_bytes());
                }
            }
            tx.input[i].witness = witness;
        }
        Ok(pb::SpendSpendableOutputsReply {
            transaction: bitcoin::consensus::serialize(&tx),
        })
    }
}
