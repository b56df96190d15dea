//! Rebuilding commitment and HTLC transactions (BOLT 3) from the channel's
//! recorded parameters and a request's typed fields. The node's own bytes are
//! never signed: whatever it sends is turned back into a transaction here.

use alloc::format;
use alloc::vec::Vec;

use crate::state::{ChannelKind, CommitmentRecord, SetupRecord};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{All, Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, ScriptBuf, Transaction, Txid};
use lightning::chain::transaction::OutPoint as LdkOutPoint;
use lightning::ln::chan_utils::{
    self, ChannelPublicKeys, ChannelTransactionParameters, CommitmentTransaction,
    CounterpartyChannelTransactionParameters, HTLCOutputInCommitment, TrustedCommitmentTransaction,
    TxCreationKeys,
};
use lightning::ln::channel_keys::{DelayedPaymentKey, RevocationKey};
use lightning::types::features::ChannelTypeFeatures;

use crate::error::SignerError;
use crate::CommitmentNumber;

/// Value of each anchor output (BOLT 3).
pub const ANCHOR_OUTPUT_VALUE_SAT: u64 = 330;

// Field parsing is shared with the node (`lnpd_proto::ldk`).
pub use lnpd_proto::ldk::{
    channel_keys_to_wire, parse_32, parse_outpoint, parse_pubkey, parse_signature,
};

/// LDK's feature set for a channel type the signer supports.
pub fn channel_type_features(setup: &SetupRecord) -> Result<ChannelTypeFeatures, SignerError> {
    match ChannelKind::try_from(setup.channel_type) {
        Ok(ChannelKind::StaticRemoteKey) => Ok(ChannelTypeFeatures::only_static_remote_key()),
        Ok(ChannelKind::AnchorsZeroFeeHtlcTx) => {
            Ok(ChannelTypeFeatures::anchors_zero_htlc_fee_and_dependencies())
        }
        // `channel-type-safe` refused any other type at set-up.
        _ => Err(SignerError::invalid(
            "only static_remote_key and anchors_zero_fee_htlc_tx channels can be built",
        )),
    }
}

/// The channel's parameters in LDK's form, from what was recorded at set-up.
pub fn channel_parameters(
    setup: &SetupRecord,
    holder_pubkeys: ChannelPublicKeys,
) -> Result<ChannelTransactionParameters, SignerError> {
    let funding = setup.funding()?;
    let index = u16::try_from(funding.vout)
        .map_err(|_| SignerError::invalid("funding output index above 65535"))?;
    let delay = |v: u32, what: &str| {
        u16::try_from(v).map_err(|_| SignerError::invalid(format!("{what} above 65535")))
    };
    Ok(ChannelTransactionParameters {
        holder_pubkeys,
        holder_selected_contest_delay: delay(
            setup.holder_selected_contest_delay,
            "holder_selected_contest_delay",
        )?,
        is_outbound_from_holder: setup.is_outbound,
        counterparty_parameters: Some(CounterpartyChannelTransactionParameters {
            pubkeys: setup.counterparty_pubkeys()?,
            selected_contest_delay: delay(
                setup.counterparty_selected_contest_delay,
                "counterparty_selected_contest_delay",
            )?,
        }),
        funding_outpoint: Some(LdkOutPoint {
            txid: funding.txid,
            index,
        }),
        splice_parent_funding_txid: None,
        channel_type_features: channel_type_features(setup)?,
        channel_value_satoshis: setup.channel_value_sat,
    })
}

/// Fee of a commitment transaction with `num_htlcs` non-dust HTLCs (BOLT 3).
pub fn commitment_fee_sat(feerate_per_kw: u32, num_htlcs: usize, anchors: bool) -> u64 {
    let base: u64 = if anchors { 1124 } else { 724 };
    (feerate_per_kw as u64).saturating_mul(base + 172 * num_htlcs as u64) / 1000
}

/// Fee of the second-stage HTLC transaction spending an HTLC of this direction.
pub fn htlc_tx_fee_sat(feerate_per_kw: u32, offered: bool, anchors: bool) -> u64 {
    if anchors {
        return 0;
    }
    let weight: u64 = if offered { 663 } else { 703 };
    (feerate_per_kw as u64).saturating_mul(weight) / 1000
}

/// A commitment rebuilt from a request, with the values policy looks at.
pub struct Rebuilt {
    /// LDK's commitment transaction (keys, outputs, HTLC indices).
    pub tx: CommitmentTransaction,
    /// Its number, counting up.
    pub number: CommitmentNumber,
}

/// Rebuilds a commitment transaction. `holder_is_broadcaster` selects whose
/// commitment it is. Refuses only what the builder cannot build soundly
/// (more than 483 HTLCs, an HTLC that cannot pay its second-stage fee,
/// outputs above the channel value); every policy rule is the validator's
/// (`policy::commitment`).
pub fn rebuild(
    params: &ChannelTransactionParameters,
    setup: &SetupRecord,
    holder_is_broadcaster: bool,
    data: &CommitmentRecord,
    secp: &Secp256k1<All>,
) -> Result<Rebuilt, SignerError> {
    let number = CommitmentNumber::new(data.commitment_number)?;
    let point = parse_pubkey("per_commitment_point", &data.per_commitment_point)?;
    let htlcs = buildable_htlcs(setup, data)?;
    let directed = if holder_is_broadcaster {
        params.as_holder_broadcastable()
    } else {
        params.as_counterparty_broadcastable()
    };
    let tx = CommitmentTransaction::new(
        number.to_ldk(),
        &point,
        data.to_broadcaster_value_sat,
        data.to_countersignatory_value_sat,
        data.feerate_per_kw,
        htlcs,
        &directed,
        secp,
    );
    Ok(Rebuilt { tx, number })
}

/// The HTLCs of `data` in LDK's form, refused where the commitment cannot
/// be built soundly: more than 483 HTLCs, an HTLC that cannot pay its
/// second-stage fee, outputs above the channel value.
pub fn buildable_htlcs(
    setup: &SetupRecord,
    data: &CommitmentRecord,
) -> Result<Vec<HTLCOutputInCommitment>, SignerError> {
    let htlcs = data.ldk_htlcs()?;
    let anchors = setup.is_anchors();
    if htlcs.len() > 483 {
        return Err(SignerError::invalid(
            "more than 483 HTLCs in one commitment",
        ));
    }
    let mut htlc_total_sat: u64 = 0;
    for (i, h) in htlcs.iter().enumerate() {
        let amount_sat = h.amount_msat / 1000;
        if amount_sat <= htlc_tx_fee_sat(data.feerate_per_kw, h.offered, anchors) {
            return Err(SignerError::invalid(format!(
                "htlc {i} of {amount_sat} sat cannot pay its second-stage fee"
            )));
        }
        htlc_total_sat = htlc_total_sat
            .checked_add(amount_sat)
            .ok_or_else(|| SignerError::invalid("HTLC values overflow"))?;
    }
    let total = data
        .to_broadcaster_value_sat
        .checked_add(data.to_countersignatory_value_sat)
        .and_then(|v| v.checked_add(htlc_total_sat))
        .ok_or_else(|| SignerError::invalid("output values overflow"))?;
    if total > setup.channel_value_sat {
        return Err(SignerError::invalid("outputs exceed the channel value"));
    }
    Ok(htlcs)
}

/// What policy reads of a rebuilt commitment: the transaction and the keys
/// of the broadcaster's to_local output.
#[derive(Clone, Copy)]
pub struct Built<'a> {
    /// The unsigned transaction.
    pub transaction: &'a Transaction,
    /// The revocation key.
    pub revocation_key: &'a RevocationKey,
    /// The broadcaster's delayed-payment key.
    pub delayed_payment_key: &'a DelayedPaymentKey,
}

impl<'a> Built<'a> {
    /// The view of a commitment LDK's builder made.
    pub fn of(t: &'a TrustedCommitmentTransaction<'a>) -> Self {
        Built {
            transaction: &t.built_transaction().transaction,
            revocation_key: &t.keys().revocation_key,
            delayed_payment_key: &t.keys().broadcaster_delayed_payment_key,
        }
    }
}

/// The 2-of-2 funding witness script.
pub fn funding_script(params: &ChannelTransactionParameters) -> ScriptBuf {
    let cp = params
        .counterparty_parameters
        .as_ref()
        .map(|c| c.pubkeys.funding_pubkey)
        .unwrap_or(params.holder_pubkeys.funding_pubkey);
    chan_utils::make_funding_redeemscript(&params.holder_pubkeys.funding_pubkey, &cp)
}

/// SIGHASH_ALL digest of input 0 of a transaction spending the funding output.
pub fn funding_sighash(
    tx: &Transaction,
    params: &ChannelTransactionParameters,
) -> Result<Message, SignerError> {
    p2wsh_sighash(
        tx,
        0,
        &funding_script(params),
        params.channel_value_satoshis,
        EcdsaSighashType::All,
    )
}

/// Segwit v0 digest of one P2WSH input.
pub fn p2wsh_sighash(
    tx: &Transaction,
    input: usize,
    witness_script: &bitcoin::Script,
    value_sat: u64,
    ty: EcdsaSighashType,
) -> Result<Message, SignerError> {
    let h = SighashCache::new(tx)
        .p2wsh_signature_hash(input, witness_script, Amount::from_sat(value_sat), ty)
        .map_err(|e| SignerError::invalid(format!("cannot compute sighash: {e}")))?;
    Ok(Message::from_digest(h.to_byte_array()))
}

/// The sighash type the countersignatory uses on HTLC transactions.
pub fn htlc_countersignature_type(anchors: bool) -> EcdsaSighashType {
    if anchors {
        EcdsaSighashType::SinglePlusAnyoneCanPay
    } else {
        EcdsaSighashType::All
    }
}

/// Rebuilds the HTLC transactions of a commitment, each with the digest the
/// countersignatory signs. `contest_delay` is the delay on the broadcaster.
pub fn htlc_sighashes(
    tx: &CommitmentTransaction,
    contest_delay: u16,
) -> Result<Vec<(Transaction, Message)>, SignerError> {
    let trusted = tx.trust();
    htlc_transactions(
        &trusted.txid(),
        tx.negotiated_feerate_per_kw(),
        contest_delay,
        tx.nondust_htlcs(),
        trusted.channel_type_features(),
        trusted.keys(),
    )
}

/// The second-stage transactions of a commitment's HTLC outputs (`htlcs`,
/// with their output indices), each with the digest the countersignatory
/// signs.
pub fn htlc_transactions(
    txid: &Txid,
    feerate_per_kw: u32,
    contest_delay: u16,
    htlcs: &[HTLCOutputInCommitment],
    features: &ChannelTypeFeatures,
    keys: &TxCreationKeys,
) -> Result<Vec<(Transaction, Message)>, SignerError> {
    let sighash_type = htlc_countersignature_type(features.supports_anchors_zero_fee_htlc_tx());
    let mut out = Vec::with_capacity(htlcs.len());
    for h in htlcs {
        if h.transaction_output_index.is_none() {
            return Err(SignerError::internal("rebuilt HTLC has no output index"));
        }
        let htlc_tx = chan_utils::build_htlc_transaction(
            txid,
            feerate_per_kw,
            contest_delay,
            h,
            features,
            &keys.broadcaster_delayed_payment_key,
            &keys.revocation_key,
        );
        let script = chan_utils::get_htlc_redeemscript(h, features, keys);
        let msg = p2wsh_sighash(&htlc_tx, 0, &script, h.amount_msat / 1000, sighash_type)?;
        out.push((htlc_tx, msg));
    }
    Ok(out)
}
