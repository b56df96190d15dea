//! LDK's types turned into `signer.proto` fields, and back.

use bitcoin::Transaction;
use lightning::ln::chan_utils::{ChannelTransactionParameters, CommitmentTransaction};
use lightning::sign::SpendableOutputDescriptor;
use lnpd_proto::signer as pb;

use lnpd_proto::ldk::{channel_keys_to_wire, htlc_to_wire, outpoint_to_wire, txout_to_wire};

/// LDK's dust limit for our side; LDK does not tell the signer the
/// counterparty's, so the same lower bound is used for it (the signer's
/// dust check then never refuses a commitment LDK built).
pub const LDK_DUST_LIMIT_SAT: u64 = 354;

/// Our count-up number of an LDK commitment index.
pub fn number(ldk_idx: u64) -> u64 {
    lnpd_proto::INITIAL_COMMITMENT_NUMBER.saturating_sub(ldk_idx)
}

/// The fields of a transaction the node built.
pub fn unsigned_tx(tx: &Transaction) -> pb::UnsignedTx {
    pb::UnsignedTx {
        version: tx.version.0,
        lock_time: tx.lock_time.to_consensus_u32(),
        inputs: tx
            .input
            .iter()
            .map(|i| pb::TxIn {
                previous_output: Some(outpoint_to_wire(&i.previous_output)),
                sequence: i.sequence.0,
            })
            .collect(),
        outputs: tx.output.iter().map(txout_to_wire).collect(),
    }
}

/// What the signer rebuilds a commitment from.
pub fn commitment_data(tx: &CommitmentTransaction) -> pb::CommitmentData {
    pb::CommitmentData {
        commitment_number: number(tx.commitment_number()),
        feerate_per_kw: tx.negotiated_feerate_per_kw(),
        to_broadcaster_value_sat: tx.to_broadcaster_value_sat(),
        to_countersignatory_value_sat: tx.to_countersignatory_value_sat(),
        htlcs: tx.nondust_htlcs().iter().map(htlc_to_wire).collect(),
        per_commitment_point: tx.per_commitment_point().serialize().to_vec(),
        transaction: bitcoin::consensus::encode::serialize(
            &tx.trust().built_transaction().transaction,
        ),
    }
}

/// The set-up record of a channel, from the parameters LDK hands the signer.
/// `None` until LDK knows the counterparty's keys and the funding outpoint.
pub fn setup_request(
    keys_id: &[u8; 32],
    p: &ChannelTransactionParameters,
) -> Option<pb::SetupChannelRequest> {
    let cp = p.counterparty_parameters.as_ref()?;
    let funding = p.funding_outpoint.as_ref()?;
    let features = &p.channel_type_features;
    let channel_type = if features.supports_anchors_zero_fee_htlc_tx() {
        pb::ChannelType::AnchorsZeroFeeHtlcTx
    } else if features.supports_static_remote_key()
        && !features.supports_anchors_nonzero_fee_htlc_tx()
    {
        pb::ChannelType::StaticRemoteKey
    } else {
        pb::ChannelType::Unspecified
    };
    Some(pb::SetupChannelRequest {
        channel_keys_id: keys_id.to_vec(),
        is_outbound: p.is_outbound_from_holder,
        channel_value_sat: p.channel_value_satoshis,
        push_msat: 0,
        funding_outpoint: Some(outpoint_to_wire(&funding.into_bitcoin_outpoint())),
        channel_type: channel_type as i32,
        holder_selected_contest_delay: p.holder_selected_contest_delay as u32,
        counterparty_selected_contest_delay: cp.selected_contest_delay as u32,
        holder_dust_limit_sat: LDK_DUST_LIMIT_SAT,
        counterparty_dust_limit_sat: LDK_DUST_LIMIT_SAT,
        counterparty_keys: Some(channel_keys_to_wire(&cp.pubkeys)),
        counterparty_shutdown_script: vec![],
        holder_shutdown_script: vec![],
    })
}

/// An output LDK asks to sweep, with the transaction that holds it
/// (`previous_tx`: the signer's proof of the amount; empty if unknown).
pub fn spendable(d: &SpendableOutputDescriptor, previous_tx: Vec<u8>) -> pb::SpendableOutput {
    use pb::spendable_output::Kind;
    match d {
        SpendableOutputDescriptor::StaticOutput {
            outpoint: o,
            output,
            channel_keys_id,
        } => pb::SpendableOutput {
            outpoint: Some(outpoint_to_wire(&o.into_bitcoin_outpoint())),
            output: Some(txout_to_wire(output)),
            previous_tx,
            kind: Some(Kind::StaticOutput(pb::StaticOutput {
                channel_keys_id: channel_keys_id.map(|i| i.to_vec()).unwrap_or_default(),
            })),
        },
        SpendableOutputDescriptor::DelayedPaymentOutput(p) => pb::SpendableOutput {
            outpoint: Some(outpoint_to_wire(&p.outpoint.into_bitcoin_outpoint())),
            output: Some(txout_to_wire(&p.output)),
            previous_tx,
            kind: Some(Kind::DelayedPayment(pb::DelayedPaymentOutput {
                channel_keys_id: p.channel_keys_id.to_vec(),
                per_commitment_point: p.per_commitment_point.serialize().to_vec(),
                to_self_delay: p.to_self_delay as u32,
                revocation_pubkey: p.revocation_pubkey.to_public_key().serialize().to_vec(),
            })),
        },
        SpendableOutputDescriptor::StaticPaymentOutput(p) => pb::SpendableOutput {
            outpoint: Some(outpoint_to_wire(&p.outpoint.into_bitcoin_outpoint())),
            output: Some(txout_to_wire(&p.output)),
            previous_tx,
            kind: Some(Kind::StaticPayment(pb::StaticPaymentOutput {
                channel_keys_id: p.channel_keys_id.to_vec(),
            })),
        },
    }
}
