//! Key derivation: seed -> BIP32 master -> node key, channel base secrets,
//! wallet account. Everything is deterministic, so a seed restores all keys.
//!
//! Paths (all hardened):
//! - node secret: `m/1017'/0'/0'`
//! - channel master: `m/1017'/0'/1'`; a channel's secrets are
//!   `SHA256(tag || HMAC-SHA256(channel master, channel_keys_id))`
//! - node-side symmetric keys and keys-id entropy: `m/1017'/0'/2'`
//! - on-chain wallet: BIP 84, `m/84'/coin'/0'` with coin 0 on mainnet, 1 elsewhere

use alloc::vec::Vec;
use core::fmt;

use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use bitcoin::Network;
use lightning::ln::chan_utils::{self, ChannelPublicKeys};
use lightning::types::payment::PaymentHash;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::SignerError;
use crate::{ChannelKeysId, CommitmentNumber};

/// The BIP 32 master seed (the BIP 39 seed, 64 bytes, or any 16..=64 bytes).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Seed(Vec<u8>);

impl Seed {
    /// Wraps seed bytes; BIP 32 accepts 16 to 64 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, SignerError> {
        if !(16..=64).contains(&bytes.len()) {
            return Err(SignerError::invalid("a seed must be 16 to 64 bytes"));
        }
        Ok(Seed(bytes))
    }
    /// The seed bytes (secret).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

/// Secrets of one channel. Erased on drop, never printed.
#[derive(Clone)]
pub struct ChannelSecrets {
    /// Key of our side of the 2-of-2 funding output.
    pub funding_key: SecretKey,
    /// Base of the revocation keys we hand to the peer.
    pub revocation_base_key: SecretKey,
    /// Key of our to_remote output on the peer's commitment.
    pub payment_key: SecretKey,
    /// Base of the delayed payment keys of our to_local.
    pub delayed_payment_base_key: SecretKey,
    /// Base of our HTLC keys.
    pub htlc_base_key: SecretKey,
    /// Seed of our per-commitment secrets (BOLT 3 shachain).
    pub commitment_seed: [u8; 32],
}

impl Drop for ChannelSecrets {
    fn drop(&mut self) {
        self.funding_key.non_secure_erase();
        self.revocation_base_key.non_secure_erase();
        self.payment_key.non_secure_erase();
        self.delayed_payment_base_key.non_secure_erase();
        self.htlc_base_key.non_secure_erase();
        self.commitment_seed.zeroize();
    }
}

impl fmt::Debug for ChannelSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelSecrets(<redacted>)")
    }
}

impl ChannelSecrets {
    /// The public side, as the peer sees it.
    pub fn pubkeys(&self, secp: &Secp256k1<All>) -> ChannelPublicKeys {
        use lightning::ln::channel_keys::{
            DelayedPaymentBasepoint, HtlcBasepoint, RevocationBasepoint,
        };
        ChannelPublicKeys {
            funding_pubkey: PublicKey::from_secret_key(secp, &self.funding_key),
            revocation_basepoint: RevocationBasepoint::from(PublicKey::from_secret_key(
                secp,
                &self.revocation_base_key,
            )),
            payment_point: PublicKey::from_secret_key(secp, &self.payment_key),
            delayed_payment_basepoint: DelayedPaymentBasepoint::from(PublicKey::from_secret_key(
                secp,
                &self.delayed_payment_base_key,
            )),
            htlc_basepoint: HtlcBasepoint::from(PublicKey::from_secret_key(
                secp,
                &self.htlc_base_key,
            )),
        }
    }

    /// Our per-commitment secret for commitment `n`.
    pub fn commitment_secret(&self, n: CommitmentNumber) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(chan_utils::build_commitment_secret(
            &self.commitment_seed,
            n.to_ldk(),
        ))
    }

    /// Our per-commitment point for commitment `n`.
    pub fn per_commitment_point(&self, secp: &Secp256k1<All>, n: CommitmentNumber) -> PublicKey {
        let secret = self.commitment_secret(n);
        // A shachain output is a valid key except with negligible probability;
        // BOLT 3 gives no fallback, so neither do peers.
        let sk = SecretKey::from_slice(&secret[..]).unwrap_or(self.funding_key);
        PublicKey::from_secret_key(secp, &sk)
    }
}

/// All long-term keys of one signer.
pub struct KeyRing {
    network: Network,
    node_secret: SecretKey,
    channel_master: Zeroizing<[u8; 32]>,
    symmetric_master: Zeroizing<[u8; 32]>,
    wallet_account: Xpriv,
    master_fingerprint: bitcoin::bip32::Fingerprint,
    /// Channel secrets given explicitly (the BOLT 3 test vectors' keys).
    #[cfg(any(test, feature = "test-utils"))]
    overrides: alloc::collections::BTreeMap<ChannelKeysId, ChannelSecrets>,
}

impl Drop for KeyRing {
    fn drop(&mut self) {
        self.node_secret.non_secure_erase();
        self.wallet_account.private_key.non_secure_erase();
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

fn hardened(path: &[u32]) -> DerivationPath {
    path.iter()
        .map(|i| ChildNumber::Hardened { index: *i })
        .collect::<Vec<_>>()
        .into()
}

fn tagged(tag: &[u8], key: &[u8]) -> [u8; 32] {
    let mut e = sha256::Hash::engine();
    e.input(tag);
    e.input(key);
    sha256::Hash::from_engine(e).to_byte_array()
}

/// Turns 32 bytes into a secret key, re-hashing in the (negligible) case
/// they are not a valid scalar.
fn to_secret_key(mut bytes: [u8; 32]) -> SecretKey {
    loop {
        if let Ok(sk) = SecretKey::from_slice(&bytes) {
            bytes.zeroize();
            return sk;
        }
        bytes = tagged(b"lnpd/rehash", &bytes);
    }
}

/// BIP 44 coin type of a network.
pub fn coin_type(network: Network) -> u32 {
    if network == Network::Bitcoin {
        0
    } else {
        1
    }
}

impl KeyRing {
    /// Derives every key from the seed.
    pub fn from_seed(
        seed: &Seed,
        network: Network,
        secp: &Secp256k1<All>,
    ) -> Result<Self, SignerError> {
        let master = Xpriv::new_master(network, seed.expose())
            .map_err(|_| SignerError::invalid("seed rejected by BIP 32"))?;
        let derive = |path: &[u32]| {
            master
                .derive_priv(secp, &hardened(path))
                .map_err(|_| SignerError::internal("BIP 32 derivation failed"))
        };
        let node = derive(&[1017, 0, 0])?;
        let chan = derive(&[1017, 0, 1])?;
        let sym = derive(&[1017, 0, 2])?;
        let wallet_account = derive(&[84, coin_type(network), 0])?;
        Ok(KeyRing {
            network,
            node_secret: node.private_key,
            channel_master: Zeroizing::new(chan.private_key.secret_bytes()),
            symmetric_master: Zeroizing::new(sym.private_key.secret_bytes()),
            wallet_account,
            master_fingerprint: master.fingerprint(secp),
            #[cfg(any(test, feature = "test-utils"))]
            overrides: Default::default(),
        })
    }

    /// The network the keys are for.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The node's secret key (never leaves the signer).
    pub fn node_secret(&self) -> &SecretKey {
        &self.node_secret
    }

    /// The node id.
    pub fn node_id(&self, secp: &Secp256k1<All>) -> PublicKey {
        PublicKey::from_secret_key(secp, &self.node_secret)
    }

    /// A 32-byte symmetric key for a node-side purpose (see module docs).
    pub fn symmetric_key(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = hmac::HmacEngine::<sha256::Hash>::new(&self.symmetric_master[..]);
        mac.input(purpose);
        Zeroizing::new(hmac::Hmac::from_engine(mac).to_byte_array())
    }

    /// Derives the secrets of the channel with this keys id.
    pub fn channel_secrets(&self, id: &ChannelKeysId) -> ChannelSecrets {
        #[cfg(any(test, feature = "test-utils"))]
        if let Some(s) = self.overrides.get(id) {
            return s.clone();
        }
        let mut mac = hmac::HmacEngine::<sha256::Hash>::new(&self.channel_master[..]);
        mac.input(&id.0);
        let channel_seed = Zeroizing::new(hmac::Hmac::from_engine(mac).to_byte_array());
        let k = |tag: &[u8]| to_secret_key(tagged(tag, &channel_seed[..]));
        ChannelSecrets {
            funding_key: k(b"lnpd/funding"),
            revocation_base_key: k(b"lnpd/revocation"),
            payment_key: k(b"lnpd/payment"),
            delayed_payment_base_key: k(b"lnpd/delayed"),
            htlc_base_key: k(b"lnpd/htlc"),
            commitment_seed: tagged(b"lnpd/commitment-seed", &channel_seed[..]),
        }
    }

    /// Uses `secrets` for channel `id` instead of deriving them (tests only).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn set_channel_secrets(&mut self, id: ChannelKeysId, secrets: ChannelSecrets) {
        self.overrides.insert(id, secrets);
    }

    /// The wallet's account-level extended private key (`m/84'/coin'/0'`).
    pub fn wallet_account(&self) -> &Xpriv {
        &self.wallet_account
    }

    /// The wallet account's extended public key.
    pub fn wallet_xpub(&self, secp: &Secp256k1<All>) -> Xpub {
        Xpub::from_priv(secp, &self.wallet_account)
    }

    /// The fingerprint of the BIP 32 master key (for descriptors and PSBTs).
    pub fn master_fingerprint(&self) -> bitcoin::bip32::Fingerprint {
        self.master_fingerprint
    }

    /// The wallet key at `m/84'/coin'/0'/chain/index` (chain 0 external, 1 internal).
    pub fn wallet_key(
        &self,
        secp: &Secp256k1<All>,
        chain: u32,
        index: u32,
    ) -> Result<SecretKey, SignerError> {
        let path: DerivationPath = [
            ChildNumber::from_normal_idx(chain).map_err(|_| SignerError::invalid("bad chain"))?,
            ChildNumber::from_normal_idx(index)
                .map_err(|_| SignerError::invalid("wallet index out of range"))?,
        ]
        .as_ref()
        .into();
        self.wallet_account
            .derive_priv(secp, &path)
            .map(|x| x.private_key)
            .map_err(|_| SignerError::internal("BIP 32 derivation failed"))
    }
}

/// Hash of a payment preimage.
pub fn payment_hash(preimage: &[u8; 32]) -> PaymentHash {
    PaymentHash(sha256::Hash::hash(preimage).to_byte_array())
}

/// BOLT 3's per-commitment private key, `base_secret + SHA256(point ||
/// base_point)`, with the base point given (the signer keeps it): one hash
/// and a scalar addition, where LDK's `derive_private_key` first multiplies
/// the base secret to find the base point again.
pub fn derive_private_key(
    per_commitment_point: &PublicKey,
    base_secret: &SecretKey,
    base_point: &PublicKey,
) -> Result<SecretKey, SignerError> {
    let mut sha = sha256::Hash::engine();
    sha.input(&per_commitment_point.serialize());
    sha.input(&base_point.serialize());
    let tweak = sha256::Hash::from_engine(sha).to_byte_array();
    let scalar = bitcoin::secp256k1::Scalar::from_be_bytes(tweak)
        .map_err(|_| SignerError::internal("per-commitment tweak out of range"))?;
    base_secret
        .add_tweak(&scalar)
        .map_err(|_| SignerError::internal("per-commitment key tweak failed"))
}

#[cfg(test)]
mod derive_tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn derive_private_key_matches_ldk() {
        let secp = Secp256k1::new();
        for i in 1u8..20 {
            let base = SecretKey::from_slice(&[i; 32]).unwrap();
            let point =
                PublicKey::from_secret_key(&secp, &SecretKey::from_slice(&[i + 100; 32]).unwrap());
            let ours = derive_private_key(&point, &base, &PublicKey::from_secret_key(&secp, &base))
                .unwrap();
            assert_eq!(ours, chan_utils::derive_private_key(&secp, &point, &base));
        }
    }
}
