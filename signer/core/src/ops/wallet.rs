//! Wallet requests: the descriptors the node watches, scripts handed out
//! (change, close and sweep destinations) and PSBT signing.

use alloc::format;
use alloc::vec::Vec;

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{CompressedPublicKey, Psbt, Script, ScriptBuf};
use lnpd_proto::signer as pb;

use crate::error::SignerError;
use crate::keys::coin_type;
use crate::policy::resources::check_wallet_scripts;
use crate::signer::Signer;
use crate::state::MetaRecord;
use crate::store::Store;
use crate::wallet::descriptor_checksum;

impl<S: Store> Signer<S> {
    /// Whether a script pays the signer's wallet.
    pub fn is_own_script(&self, s: &Script) -> bool {
        self.wallet_scripts.contains(s)
    }

    /// Whether funds may go to a script: the wallet, or the operator's allow-list.
    pub fn is_allowed_destination(&self, s: &Script) -> bool {
        self.is_own_script(s) || self.policy.allowed_scripts.contains(s.as_bytes())
    }

    pub(crate) fn wallet_descriptor(&self) -> pb::GetWalletDescriptorReply {
        let xpub = self.keys.wallet_xpub(&self.secp);
        let origin = format!(
            "[{}/84h/{}h/0h]",
            self.keys.master_fingerprint(),
            coin_type(self.keys.network())
        );
        let desc = |chain: u32| {
            let d = format!("wpkh({origin}{xpub}/{chain}/*)");
            // The template only has descriptor characters, so the checksum cannot fail.
            let sum = descriptor_checksum(&d).unwrap_or_default();
            format!("{d}#{sum}")
        };
        pb::GetWalletDescriptorReply {
            external_descriptor: desc(0),
            internal_descriptor: desc(1),
            account_xpub: format!("{xpub}"),
        }
    }

    /// Hands out the next internal-chain script, persisting the index first.
    fn next_internal_script(&mut self) -> Result<ScriptBuf, SignerError> {
        let index = self.meta.next_internal_index;
        check_wallet_scripts(index, &self.policy)?;
        let key = self.keys.wallet_key(&self.secp, 1, index)?;
        let pk = CompressedPublicKey(bitcoin::secp256k1::PublicKey::from_secret_key(
            &self.secp, &key,
        ));
        let meta = MetaRecord {
            next_internal_index: index + 1,
            ..self.meta.clone()
        };
        let mut scripts = self.wallet_scripts.clone();
        scripts.extend_internal(&self.keys.wallet_xpub(&self.secp), &self.secp, index + 1)?;
        self.commit_meta(meta)?;
        self.wallet_scripts = scripts;
        Ok(ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()))
    }

    pub(crate) fn get_destination_script(
        &mut self,
        r: &pb::GetDestinationScriptRequest,
    ) -> Result<pb::ScriptReply, SignerError> {
        crate::ChannelKeysId::from_slice(&r.channel_keys_id)?;
        Ok(pb::ScriptReply {
            script_pubkey: self.next_internal_script()?.to_bytes(),
        })
    }

    pub(crate) fn get_shutdown_script(&mut self) -> Result<pb::ScriptReply, SignerError> {
        Ok(pb::ScriptReply {
            script_pubkey: self.next_internal_script()?.to_bytes(),
        })
    }

    /// Signs every P2WPKH input of the PSBT whose BIP 32 origin is this wallet.
    pub(crate) fn sign_psbt(
        &mut self,
        r: &pb::SignPsbtRequest,
    ) -> Result<pb::SignPsbtReply, SignerError> {
        if r.psbt.len() > crate::signer::MAX_REQUEST_BYTES {
            return Err(SignerError::invalid("PSBT too large"));
        }
        let mut psbt = Psbt::deserialize(&r.psbt)
            .map_err(|e| SignerError::invalid(format!("malformed PSBT: {e}")))?;
        let fingerprint = self.keys.master_fingerprint();
        let account_path: DerivationPath = [84, coin_type(self.keys.network()), 0]
            .iter()
            .map(|i| ChildNumber::Hardened { index: *i })
            .collect::<Vec<_>>()
            .into();
        // Outputs the PSBT says are the wallet's (change): the signer derives
        // the key at that origin and checks the script is its own.
        let account = self.keys.wallet_xpub(&self.secp);
        let mut highest_internal: Option<u32> = None;
        let own_outputs: Vec<bool> = psbt
            .unsigned_tx
            .output
            .iter()
            .zip(&psbt.outputs)
            .map(|(out, o)| {
                o.bip32_derivation.iter().any(|(pk, (fp, path))| {
                    let Some(rest) = path.as_ref().strip_prefix(account_path.as_ref()) else {
                        return false;
                    };
                    let [ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }] =
                        rest
                    else {
                        return false;
                    };
                    let derived = crate::wallet::child(&account, &self.secp, *chain)
                        .and_then(|c| crate::wallet::child(&c, &self.secp, *index));
                    let ok = *fp == fingerprint
                        && *chain <= 1
                        && derived.is_ok_and(|x| {
                            x.public_key == *pk
                                && out.script_pubkey
                                    == ScriptBuf::new_p2wpkh(
                                        &CompressedPublicKey(*pk).wpubkey_hash(),
                                    )
                        });
                    if ok && *chain == 1 {
                        highest_internal = highest_internal.max(Some(*index));
                    }
                    ok
                })
            })
            .collect();
        let second_stage = self.broadcast_holder_htlcs();
        let verdict = crate::policy::onchain::validate_psbt(
            &psbt,
            &self.facts(),
            &self.funding_scripts,
            &own_outputs,
            &second_stage,
        )?;
        let tx = psbt.unsigned_tx.clone();
        let mut cache = SighashCache::new(&tx);
        let mut signed = Vec::new();
        for (i, input) in psbt.inputs.iter_mut().enumerate() {
            let ours = input.bip32_derivation.iter().find_map(|(pk, (fp, path))| {
                let rest = path.as_ref().strip_prefix(account_path.as_ref())?;
                (*fp == fingerprint && rest.len() == 2).then_some((*pk, rest[0], rest[1]))
            });
            let Some((pk, chain, index)) = ours else {
                continue;
            };
            let (ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }) =
                (chain, index)
            else {
                continue;
            };
            let utxo = input.witness_utxo.as_ref().ok_or_else(|| {
                SignerError::invalid(format!("input {i}: a wallet input needs its witness_utxo"))
            })?;
            let key = self.keys.wallet_key(&self.secp, chain, index)?;
            let derived = bitcoin::secp256k1::PublicKey::from_secret_key(&self.secp, &key);
            if derived != pk
                || utxo.script_pubkey
                    != ScriptBuf::new_p2wpkh(&CompressedPublicKey(derived).wpubkey_hash())
            {
                return Err(SignerError::invalid(format!(
                    "input {i}: key origin does not match the spent output"
                )));
            }
            if let Some(ty) = input.sighash_type {
                if ty.ecdsa_hash_ty().ok() != Some(EcdsaSighashType::All) {
                    return Err(SignerError::invalid(format!(
                        "input {i}: only SIGHASH_ALL is signed"
                    )));
                }
            }
            let h = cache
                .p2wpkh_signature_hash(i, &utxo.script_pubkey, utxo.value, EcdsaSighashType::All)
                .map_err(|e| SignerError::invalid(format!("input {i}: {e}")))?;
            let sig = self
                .secp
                .sign_ecdsa_low_r(&Message::from_digest(h.to_byte_array()), &key);
            input.partial_sigs.insert(
                bitcoin::PublicKey::new(derived),
                bitcoin::ecdsa::Signature {
                    signature: sig,
                    sighash_type: EcdsaSighashType::All,
                },
            );
            signed.push(i as u32);
        }
        // A funding transaction is recorded (by txid) before the signatures
        // leave: the channel is funded once.
        let txid = psbt.unsigned_tx.compute_txid().to_byte_array().to_vec();
        let mut writes = Vec::new();
        for id in verdict.funds {
            if let Some(record) = self.channels.get(&id) {
                if record.funding_signed_txid != txid {
                    let mut updated = record.clone();
                    updated.funding_signed_txid = txid.clone();
                    writes.push((id, updated));
                }
            }
        }
        // The fee counts against the wallet's budget; change the node took
        // further along the internal chain moves the recognised window on.
        let mut meta = None;
        if self.policy.onchain_fee_budget_sat.is_some() && verdict.fee_sat > 0 {
            let mut m = self.meta.clone();
            let window = self.policy.velocity_window_secs;
            m.recent_fees
                .retain(|f| f.at.saturating_add(window) > self.now);
            m.recent_fees.push(crate::state::RecentPayment {
                at: self.now,
                sat: verdict.fee_sat,
            });
            crate::policy::ledger::bound_records(&mut m.recent_fees);
            meta = Some(m);
        }
        if let Some(i) = highest_internal.filter(|i| *i >= self.meta.next_internal_index) {
            let mut m = meta.unwrap_or_else(|| self.meta.clone());
            m.next_internal_index = i.saturating_add(1);
            meta = Some(m);
        }
        if !writes.is_empty() || meta.is_some() {
            let next = meta.as_ref().map(|m| m.next_internal_index);
            self.commit_records(writes, Vec::new(), meta)?;
            if let Some(n) = next {
                let mut scripts = self.wallet_scripts.clone();
                scripts.extend_internal(&self.keys.wallet_xpub(&self.secp), &self.secp, n)?;
                self.wallet_scripts = scripts;
            }
        }
        Ok(pb::SignPsbtReply {
            psbt: psbt.serialize(),
            signed_inputs: signed,
        })
    }
}
