//! The signer's on-chain wallet: BIP 84 (`wpkh`) keys, the descriptors the
//! node watches, scripts it hands out, and PSBT signing.
//!
//! Descriptors are written by hand (with the BIP 380 checksum) rather than
//! through the `miniscript` crate: two fixed `wpkh` templates do not justify
//! that dependency in the no_std core.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bitcoin::bip32::{ChildNumber, DerivationPath, Xpub};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{All, Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{CompressedPublicKey, Psbt, Script, ScriptBuf};
use lnpd_proto::signer as pb;

use crate::error::SignerError;
use crate::handler::Signer;
use crate::keys::{coin_type, KeyRing};
use crate::state::MetaRecord;
use crate::store::Store;

/// Addresses of the external chain the signer recognises as its own.
pub const EXTERNAL_LOOKAHEAD: u32 = 500;
/// Internal-chain addresses recognised beyond the last one handed out.
pub const INTERNAL_LOOKAHEAD: u32 = 100;

/// BIP 380 descriptor checksum.
pub fn descriptor_checksum(desc: &str) -> Result<String, SignerError> {
    const INPUT: &str = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
    const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    fn polymod(mut c: u64, val: u64) -> u64 {
        let c0 = c >> 35;
        c = ((c & 0x7_ffff_ffff) << 5) ^ val;
        for (bit, g) in [
            0xf5dee51989u64,
            0xa9fdca3312,
            0x1bab10e32d,
            0x3706b1677a,
            0x644d626ffd,
        ]
        .iter()
        .enumerate()
        {
            if c0 & (1 << bit) != 0 {
                c ^= g;
            }
        }
        c
    }
    let (mut c, mut cls, mut clscount) = (1u64, 0u64, 0);
    for ch in desc.chars() {
        let pos = INPUT
            .find(ch)
            .ok_or_else(|| SignerError::invalid("descriptor has an invalid character"))?
            as u64;
        c = polymod(c, pos & 31);
        cls = cls * 3 + (pos >> 5);
        clscount += 1;
        if clscount == 3 {
            c = polymod(c, cls);
            cls = 0;
            clscount = 0;
        }
    }
    if clscount > 0 {
        c = polymod(c, cls);
    }
    for _ in 0..8 {
        c = polymod(c, 0);
    }
    c ^= 1;
    Ok((0..8)
        .map(|j| CHARSET[((c >> (5 * (7 - j))) & 31) as usize] as char)
        .collect())
}

/// The P2WPKH script of a wallet key.
fn wpkh_script(xpub: &Xpub) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(xpub.public_key).wpubkey_hash())
}

/// Scripts of the wallet the signer recognises as its own (for close and
/// sweep destinations).
#[derive(Clone, Debug, Default)]
pub struct WalletScripts {
    /// Script -> (chain, index).
    known: BTreeMap<ScriptBuf, (u32, u32)>,
    internal_through: u32,
}

impl WalletScripts {
    /// Derives the external lookahead and the internal chain through `internal_through`.
    pub fn new(
        keys: &KeyRing,
        secp: &Secp256k1<All>,
        internal_through: u32,
    ) -> Result<Self, SignerError> {
        let mut w = WalletScripts::default();
        let account = keys.wallet_xpub(secp);
        let ext = chain_xpub(&account, secp, 0)?;
        for i in 0..EXTERNAL_LOOKAHEAD {
            w.known.insert(wpkh_script(&child(&ext, secp, i)?), (0, i));
        }
        w.extend_internal(&account, secp, internal_through)?;
        Ok(w)
    }

    fn extend_internal(
        &mut self,
        account: &Xpub,
        secp: &Secp256k1<All>,
        through: u32,
    ) -> Result<(), SignerError> {
        let int = chain_xpub(account, secp, 1)?;
        let start = if self.known.is_empty() {
            0
        } else {
            self.internal_through
        };
        for i in start..through.saturating_add(INTERNAL_LOOKAHEAD) {
            self.known
                .insert(wpkh_script(&child(&int, secp, i)?), (1, i));
        }
        self.internal_through = self
            .internal_through
            .max(through.saturating_add(INTERNAL_LOOKAHEAD));
        Ok(())
    }

    /// Whether a script pays the wallet.
    pub fn contains(&self, s: &Script) -> bool {
        self.known.contains_key(s)
    }

    /// The (chain, index) of a wallet script.
    pub fn position(&self, s: &Script) -> Option<(u32, u32)> {
        self.known.get(s).copied()
    }
}

fn chain_xpub(account: &Xpub, secp: &Secp256k1<All>, chain: u32) -> Result<Xpub, SignerError> {
    child(account, secp, chain)
}

fn child(x: &Xpub, secp: &Secp256k1<All>, i: u32) -> Result<Xpub, SignerError> {
    let n = ChildNumber::from_normal_idx(i)
        .map_err(|_| SignerError::invalid("wallet index out of range"))?;
    x.ckd_pub(secp, n)
        .map_err(|_| SignerError::internal("BIP 32 derivation failed"))
}

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

    /// Whether `script` is the funding output of a channel set up with this
    /// signer, and what is known of it.
    fn funding_match(
        &self,
        script: &Script,
        value_sat: u64,
    ) -> Option<crate::policy::onchain::FundingMatch> {
        for (id, record) in &self.channels {
            let Some(setup) = record.setup.as_ref() else {
                continue;
            };
            let Ok(cp) = crate::commitment::parse_channel_keys(setup.counterparty_keys.as_ref())
            else {
                continue;
            };
            let ours = self.holder_pubkeys(id);
            let funding = lightning::ln::chan_utils::make_funding_redeemscript(
                &ours.funding_pubkey,
                &cp.funding_pubkey,
            );
            if funding.to_p2wsh().as_script() == script {
                return Some(crate::policy::onchain::FundingMatch {
                    value_matches: value_sat == setup.channel_value_sat,
                    first_commitment_validated: record.holder.is_some(),
                });
            }
        }
        None
    }

    /// Hands out the next internal-chain script, persisting the index first.
    fn next_internal_script(&mut self) -> Result<ScriptBuf, SignerError> {
        let index = self.meta.next_internal_index;
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
        crate::types::ChannelKeysId::from_slice(&r.channel_keys_id)?;
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
        &self,
        r: &pb::SignPsbtRequest,
    ) -> Result<pb::SignPsbtReply, SignerError> {
        if r.psbt.len() > crate::handler::MAX_REQUEST_BYTES {
            return Err(SignerError::invalid("PSBT too large"));
        }
        let mut psbt = Psbt::deserialize(&r.psbt)
            .map_err(|e| SignerError::invalid(format!("malformed PSBT: {e}")))?;
        crate::policy::onchain::check_psbt(
            &self.policy,
            &psbt,
            |s| self.is_allowed_destination(s),
            |s, v| self.funding_match(s, v),
        )?;
        let fingerprint = self.keys.master_fingerprint();
        let account_path: DerivationPath = [84, coin_type(self.keys.network()), 0]
            .iter()
            .map(|i| ChildNumber::Hardened { index: *i })
            .collect::<Vec<_>>()
            .into();
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
                .sign_ecdsa(&Message::from_digest(h.to_byte_array()), &key);
            input.partial_sigs.insert(
                bitcoin::PublicKey::new(derived),
                bitcoin::ecdsa::Signature {
                    signature: sig,
                    sighash_type: EcdsaSighashType::All,
                },
            );
            signed.push(i as u32);
        }
        Ok(pb::SignPsbtReply {
            psbt: psbt.serialize(),
            signed_inputs: signed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_bip380_example() {
        // Example from BIP 380.
        let d = "raw(deadbeef)";
        assert_eq!(descriptor_checksum(d).unwrap(), "89f8spxm");
    }
}
