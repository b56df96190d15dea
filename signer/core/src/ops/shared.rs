//! Helpers every operation shares: the node's transaction fields as a
//! transaction, signature replies, channel keys and points (cached),
//! and the recorded set-up of a channel.

use alloc::format;
use alloc::vec::Vec;

use crate::state::SetupRecord;
use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{absolute::LockTime, Amount, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use lightning::ln::chan_utils::{self, ChannelPublicKeys, ChannelTransactionParameters};
use lnpd_proto::signer::{self as pb};

use crate::commitment::{self};
use crate::error::SignerError;
use crate::keys::ChannelSecrets;
use crate::signer::Signer;
use crate::state::ChannelRecord;
use crate::store::Store;
use crate::{ChannelKeysId, CommitmentNumber};

/// Most inputs or outputs accepted in a transaction to sign.
pub(crate) const MAX_TX_IO: usize = 1000;

/// Turns the node's transaction fields into a transaction (no witnesses).
pub(crate) fn to_transaction(tx: Option<&pb::UnsignedTx>) -> Result<Transaction, SignerError> {
    let tx = tx.ok_or_else(|| SignerError::invalid("missing transaction"))?;
    if tx.inputs.is_empty() || tx.inputs.len() > MAX_TX_IO || tx.outputs.len() > MAX_TX_IO {
        return Err(SignerError::invalid(
            "transaction needs 1 to 1000 inputs and at most 1000 outputs",
        ));
    }
    let input = tx
        .inputs
        .iter()
        .map(|i| {
            Ok(TxIn {
                previous_output: commitment::parse_outpoint(i.previous_output.as_ref())?,
                script_sig: ScriptBuf::new(),
                sequence: Sequence(i.sequence),
                witness: Witness::new(),
            })
        })
        .collect::<Result<Vec<_>, SignerError>>()?;
    let output = tx
        .outputs
        .iter()
        .map(|o| {
            if o.value_sat > 21_000_000 * 100_000_000 {
                return Err(SignerError::invalid("output value above 21 million BTC"));
            }
            if o.script_pubkey.len() > 10_000 {
                return Err(SignerError::invalid("output script too long"));
            }
            Ok(TxOut {
                value: Amount::from_sat(o.value_sat),
                script_pubkey: ScriptBuf::from_bytes(o.script_pubkey.clone()),
            })
        })
        .collect::<Result<Vec<_>, SignerError>>()?;
    Ok(Transaction {
        version: Version(tx.version),
        lock_time: LockTime::from_consensus(tx.lock_time),
        input,
        output,
    })
}

pub(crate) fn input_index(tx: &Transaction, index: u32) -> Result<usize, SignerError> {
    let i = index as usize;
    if i >= tx.input.len() {
        return Err(SignerError::invalid(format!(
            "input_index {i} out of range ({} inputs)",
            tx.input.len()
        )));
    }
    Ok(i)
}

pub(crate) fn sig_reply(sig: Signature) -> pb::SignatureReply {
    pb::SignatureReply {
        signature: sig.serialize_compact().to_vec(),
    }
}

/// Payment hashes of preimages from a request, each 32 bytes.
pub(crate) fn preimage_hashes(raw: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, SignerError> {
    raw.iter()
        .map(|p| {
            <[u8; 32]>::try_from(p.as_slice())
                .map(|p| crate::keys::payment_hash(&p).0)
                .map_err(|_| SignerError::invalid("a preimage is not 32 bytes"))
        })
        .collect()
}

impl<S: Store> Signer<S> {
    pub(crate) fn secrets(&self, id: &ChannelKeysId) -> ChannelSecrets {
        self.keys.channel_secrets(id)
    }

    pub(crate) fn holder_pubkeys(&self, id: &ChannelKeysId) -> ChannelPublicKeys {
        if let Some(k) = self.pubkeys.borrow().get(id) {
            return k.clone();
        }
        let k = self.secrets(id).pubkeys(&self.secp);
        self.pubkeys.borrow_mut().insert(*id, k.clone());
        k
    }

    /// Our per-commitment point `n` of channel `id`, from the cache when
    /// recently derived.
    pub(crate) fn our_point(&self, id: &ChannelKeysId, n: CommitmentNumber) -> PublicKey {
        if let Some(p) = self
            .points
            .borrow()
            .get(id)
            .and_then(|v| v.iter().find(|(i, _)| *i == n.0))
        {
            return p.1;
        }
        let point = self.secrets(id).per_commitment_point(&self.secp, n);
        let mut points = self.points.borrow_mut();
        let kept = points.entry(*id).or_default();
        if kept.len() >= 4 {
            kept.remove(0);
        }
        kept.push((n.0, point));
        point
    }

    /// Signs as BOLT 3's test vectors do (RFC 6979): commitment and HTLC
    /// signatures the peer receives.
    pub(crate) fn sign(&self, msg: &Message, key: &SecretKey) -> Signature {
        self.secp.sign_ecdsa(msg, key)
    }

    /// Signs with a low R (grinding the nonce, as LDK does with
    /// `grind_signatures`) for inputs of transactions we broadcast and pay
    /// fees for: at most 71 bytes, never above the witness weights LDK
    /// estimates when it sets their fee (in debug builds it asserts so).
    pub(crate) fn sign_low_r(&self, msg: &Message, key: &SecretKey) -> Signature {
        self.secp.sign_ecdsa_low_r(msg, key)
    }

    /// The channel's record and recorded set-up; errors if not set up.
    pub(crate) fn set_up_channel(
        &self,
        id: &ChannelKeysId,
    ) -> Result<(&ChannelRecord, &SetupRecord, ChannelTransactionParameters), SignerError> {
        let record = self.channel(id)?;
        let setup = record.setup.as_ref().ok_or_else(|| {
            SignerError::precondition(format!("channel {id} has not been set up"))
        })?;
        let cached = self
            .params
            .borrow()
            .get(id)
            .filter(|(s, _)| s == setup)
            .map(|(_, p)| p.clone());
        let params = match cached {
            Some(p) => p,
            None => {
                let p = commitment::channel_parameters(setup, self.holder_pubkeys(id))?;
                self.params
                    .borrow_mut()
                    .insert(*id, (setup.clone(), p.clone()));
                p
            }
        };
        Ok((record, setup, params))
    }

    /// The funding output script of a set-up channel.
    pub(crate) fn funding_script_of(
        &self,
        id: &ChannelKeysId,
        setup: &SetupRecord,
    ) -> Option<ScriptBuf> {
        let cp = setup.counterparty_pubkeys().ok()?;
        let ours = self.holder_pubkeys(id);
        Some(
            chan_utils::make_funding_redeemscript(&ours.funding_pubkey, &cp.funding_pubkey)
                .to_p2wsh(),
        )
    }
}
