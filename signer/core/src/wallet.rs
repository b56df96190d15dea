//! The signer's on-chain wallet as data: BIP 84 (`wpkh`) scripts it
//! recognises as its own and the descriptor checksum. Requests that use it
//! (descriptors, scripts handed out, PSBT signing) are in `ops::wallet`.
//!
//! Descriptors are written by hand (with the BIP 380 checksum) rather than
//! through the `miniscript` crate: two fixed `wpkh` templates do not justify
//! that dependency in the no_std core.

use alloc::collections::BTreeMap;
use alloc::string::String;

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{CompressedPublicKey, Script, ScriptBuf};

use crate::error::SignerError;
use crate::keys::KeyRing;

/// Addresses of the external chain the signer recognises as its own.
pub const EXTERNAL_LOOKAHEAD: u32 = 500;
/// Internal-chain addresses recognised beyond the last one handed out (or
/// proven in a PSBT): the node takes change along the same chain.
pub const INTERNAL_LOOKAHEAD: u32 = 1_000;

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

    pub(crate) fn extend_internal(
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

pub(crate) fn child(x: &Xpub, secp: &Secp256k1<All>, i: u32) -> Result<Xpub, SignerError> {
    let n = ChildNumber::from_normal_idx(i)
        .map_err(|_| SignerError::invalid("wallet index out of range"))?;
    x.ckd_pub(secp, n)
        .map_err(|_| SignerError::internal("BIP 32 derivation failed"))
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
