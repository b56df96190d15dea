//! A holder commitment the signer refused after LDK had moved to it (the
//! validation went with the next signature, `signer_client::queued`): LDK
//! would force close with that commitment, which the signer never signs.
//! The node broadcasts the previous commitment instead — the latest the
//! signer validated, unrevoked (its secret goes out only with a successful
//! validation), which LDK's monitor knows as the previous holder
//! commitment and claims from — then closes the channel in LDK, which is
//! never let ask the signer for the refused one (a signer asked for a
//! holder commitment beyond its record freezes the channel, taking its own
//! state for an old copy).

use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::ecdsa::Signature;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Transaction, Witness};
use lightning::chain::chaininterface::BroadcasterInterface;
use lightning::ln::chan_utils::{
    make_funding_redeemscript, ChannelTransactionParameters, HolderCommitmentTransaction,
};
use lnpd_proto::signer::{self as pb, reply, request};

use crate::node::Node;
use crate::signer_client::convert;
use crate::signer_client::queued::RefusedValidation;

/// The previous commitment with both signatures in its witness; checks
/// ours against the commitment first.
pub fn signed_commitment(
    commitment: &HolderCommitmentTransaction,
    params: &ChannelTransactionParameters,
    holder_sig: &Signature,
) -> Result<Transaction, String> {
    let ours = params.holder_pubkeys.funding_pubkey;
    let theirs = params
        .counterparty_parameters
        .as_ref()
        .ok_or("no counterparty keys")?
        .pubkeys
        .funding_pubkey;
    let script = make_funding_redeemscript(&ours, &theirs);
    let built = commitment.trust().built_transaction().clone();
    let sighash = built.get_sighash_all(&script, params.channel_value_satoshis);
    Secp256k1::verification_only()
        .verify_ecdsa(&sighash, holder_sig, &ours)
        .map_err(|_| "the signer's signature is not for this commitment".to_string())?;
    let mut tx = built.transaction;
    let mut witness = Witness::new();
    // OP_CHECKMULTISIG's extra pop (BIP 147: empty), then the signatures
    // in the order of the keys in the script.
    witness.push(Vec::<u8>::new());
    let ours_sig = bitcoin::ecdsa::Signature::sighash_all(*holder_sig);
    let theirs_sig = bitcoin::ecdsa::Signature::sighash_all(commitment.counterparty_sig);
    if ours.serialize()[..] < theirs.serialize()[..] {
        witness.push_ecdsa_signature(&ours_sig);
        witness.push_ecdsa_signature(&theirs_sig);
    } else {
        witness.push_ecdsa_signature(&theirs_sig);
        witness.push_ecdsa_signature(&ours_sig);
    }
    witness.push(script.as_bytes());
    tx.input
        .first_mut()
        .ok_or("a commitment without input")?
        .witness = witness;
    Ok(tx)
}

impl Node {
    /// Closes the channel of a refused validation with the previous
    /// commitment (see the module's text). Blocking: runs off the runtime.
    pub fn close_with_previous_commitment(self: &Arc<Self>, r: RefusedValidation) {
        let id = hex::encode(r.keys_id);
        tracing::error!(
            "channel {id}: holder commitment {} refused by the signer ({}); force-closing with commitment {}",
            r.number,
            r.reason,
            r.previous.commitment_number()
        );
        let body = request::Body::SignHolderCommitment(pb::SignHolderCommitmentRequest {
            channel_keys_id: r.keys_id.to_vec(),
            commitment_number: convert::number(r.previous.commitment_number()),
        });
        let sig = match self.signer.call_retrying(
            "sign the previous commitment",
            body,
            Duration::from_secs(120),
        ) {
            Ok(reply::Body::Signature(s)) => Signature::from_compact(&s.signature)
                .map_err(|_| "a malformed signature".to_string()),
            Ok(_) => Err("an unexpected reply".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let tx = sig.and_then(|sig| signed_commitment(&r.previous, &r.params, &sig));
        match tx {
            Ok(tx) => {
                tracing::warn!(
                    txid = %tx.compute_txid(),
                    "channel {id}: broadcasting the previous commitment, the latest the signer validated"
                );
                self.chain.broadcast_transactions(&[&tx]);
            }
            Err(e) => tracing::error!(
                "channel {id}: cannot close with the previous commitment: {e}; the channel stays open in the signer, retry by restarting the node"
            ),
        }
        // Then LDK stops using the channel (it is not asked to sign the
        // refused commitment: see `sign_holder_commitment`). Its error
        // message makes the peer close too, with its commitment, which
        // now conflicts with ours already out.
        let channel = self
            .channel_manager
            .list_channels()
            .into_iter()
            .find(|c| c.funding_txo.is_some() && c.funding_txo == r.params.funding_outpoint);
        match channel {
            Some(c) => {
                let why = format!("the signer refused our commitment: {}", r.reason);
                if let Err(e) = self.channel_manager.force_close_broadcasting_latest_txn(
                    &c.channel_id,
                    &c.counterparty.node_id,
                    why,
                ) {
                    tracing::warn!("channel {}: LDK's force close: {e:?}", c.channel_id);
                }
            }
            None => tracing::warn!("channel {id}: not open in LDK now"),
        }
    }
}
