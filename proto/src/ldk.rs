//! LDK's types and the wire's fields, both ways (feature `ldk`): the node
//! turns what LDK hands it into requests, the signer turns requests back
//! into LDK's types to rebuild what it signs. Parsing refuses malformed
//! fields with an `Invalid` error naming the field.

use alloc::format;
use alloc::vec::Vec;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa::Signature, PublicKey};
use bitcoin::{OutPoint, TxOut, Txid};
use lightning::ln::chan_utils::{ChannelPublicKeys, HTLCOutputInCommitment};
use lightning::ln::channel_keys::{DelayedPaymentBasepoint, HtlcBasepoint, RevocationBasepoint};
use lightning::types::payment::PaymentHash;

use crate::error::SignerError;
use crate::signer::{self as pb, CommitmentData, HtlcDirection};

/// Parses a 33-byte compressed public key field.
pub fn parse_pubkey(field: &str, bytes: &[u8]) -> Result<PublicKey, SignerError> {
    PublicKey::from_slice(bytes)
        .map_err(|_| SignerError::invalid(format!("{field} is not a valid public key")))
}

/// Parses a 64-byte compact ECDSA signature field.
pub fn parse_signature(field: &str, bytes: &[u8]) -> Result<Signature, SignerError> {
    Signature::from_compact(bytes)
        .map_err(|_| SignerError::invalid(format!("{field} is not a valid 64-byte signature")))
}

/// Parses a 32-byte hash field.
pub fn parse_32(field: &str, bytes: &[u8]) -> Result<[u8; 32], SignerError> {
    bytes
        .try_into()
        .map_err(|_| SignerError::invalid(format!("{field} must be 32 bytes, got {}", bytes.len())))
}

/// Parses a wire outpoint.
pub fn parse_outpoint(op: Option<&pb::OutPoint>) -> Result<OutPoint, SignerError> {
    let op = op.ok_or_else(|| SignerError::invalid("missing outpoint"))?;
    Ok(OutPoint {
        txid: Txid::from_byte_array(parse_32("txid", &op.txid)?),
        vout: op.vout,
    })
}

/// An outpoint on the wire.
pub fn outpoint_to_wire(o: &OutPoint) -> pb::OutPoint {
    pb::OutPoint {
        txid: o.txid.to_byte_array().to_vec(),
        vout: o.vout,
    }
}

/// An output on the wire.
pub fn txout_to_wire(o: &TxOut) -> pb::TxOut {
    pb::TxOut {
        value_sat: o.value.to_sat(),
        script_pubkey: o.script_pubkey.to_bytes(),
    }
}

/// Parses wire channel public keys.
pub fn parse_channel_keys(
    keys: Option<&pb::ChannelPublicKeys>,
) -> Result<ChannelPublicKeys, SignerError> {
    let k = keys.ok_or_else(|| SignerError::invalid("missing channel public keys"))?;
    channel_keys_from([
        &k.funding_pubkey,
        &k.revocation_basepoint,
        &k.payment_point,
        &k.delayed_payment_basepoint,
        &k.htlc_basepoint,
    ])
}

/// Channel public keys from their five encodings, in the wire's order:
/// funding, revocation, payment, delayed payment, HTLC.
pub fn channel_keys_from(k: [&[u8]; 5]) -> Result<ChannelPublicKeys, SignerError> {
    Ok(ChannelPublicKeys {
        funding_pubkey: parse_pubkey("funding_pubkey", k[0])?,
        revocation_basepoint: RevocationBasepoint::from(parse_pubkey(
            "revocation_basepoint",
            k[1],
        )?),
        payment_point: parse_pubkey("payment_point", k[2])?,
        delayed_payment_basepoint: DelayedPaymentBasepoint::from(parse_pubkey(
            "delayed_payment_basepoint",
            k[3],
        )?),
        htlc_basepoint: HtlcBasepoint::from(parse_pubkey("htlc_basepoint", k[4])?),
    })
}

/// Channel public keys on the wire.
pub fn channel_keys_to_wire(k: &ChannelPublicKeys) -> pb::ChannelPublicKeys {
    pb::ChannelPublicKeys {
        funding_pubkey: k.funding_pubkey.serialize().to_vec(),
        revocation_basepoint: k.revocation_basepoint.to_public_key().serialize().to_vec(),
        payment_point: k.payment_point.serialize().to_vec(),
        delayed_payment_basepoint: k
            .delayed_payment_basepoint
            .to_public_key()
            .serialize()
            .to_vec(),
        htlc_basepoint: k.htlc_basepoint.to_public_key().serialize().to_vec(),
    }
}

/// An HTLC on the wire (direction from the broadcaster's point of view, as
/// LDK has it).
pub fn htlc_to_wire(h: &HTLCOutputInCommitment) -> pb::Htlc {
    pb::Htlc {
        direction: if h.offered {
            HtlcDirection::Offered
        } else {
            HtlcDirection::Received
        } as i32,
        amount_msat: h.amount_msat,
        cltv_expiry: h.cltv_expiry,
        payment_hash: h.payment_hash.0.to_vec(),
    }
}

/// Parses the HTLCs of a commitment (their output indexes are the
/// rebuild's to assign).
pub fn parse_htlcs(data: &CommitmentData) -> Result<Vec<HTLCOutputInCommitment>, SignerError> {
    data.htlcs
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let offered = match HtlcDirection::try_from(h.direction) {
                Ok(HtlcDirection::Offered) => true,
                Ok(HtlcDirection::Received) => false,
                Err(_) => return Err(SignerError::invalid(format!("htlc {i}: unknown direction"))),
            };
            Ok(HTLCOutputInCommitment {
                offered,
                amount_msat: h.amount_msat,
                cltv_expiry: h.cltv_expiry,
                payment_hash: PaymentHash(parse_32("payment_hash", &h.payment_hash)?),
                transaction_output_index: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    #[test]
    fn keys_htlcs_and_outpoints_survive_the_wire() {
        let secp = Secp256k1::new();
        let pk =
            |i: u8| PublicKey::from_secret_key(&secp, &SecretKey::from_slice(&[i; 32]).unwrap());
        let keys = ChannelPublicKeys {
            funding_pubkey: pk(1),
            revocation_basepoint: RevocationBasepoint::from(pk(2)),
            payment_point: pk(3),
            delayed_payment_basepoint: DelayedPaymentBasepoint::from(pk(4)),
            htlc_basepoint: HtlcBasepoint::from(pk(5)),
        };
        let wire = channel_keys_to_wire(&keys);
        assert_eq!(parse_channel_keys(Some(&wire)).unwrap(), keys);
        let mut bad = wire.clone();
        bad.htlc_basepoint.pop();
        let e = parse_channel_keys(Some(&bad)).unwrap_err();
        assert!(e.message.contains("htlc_basepoint"), "{e}");

        let htlc = HTLCOutputInCommitment {
            offered: true,
            amount_msat: 5_000,
            cltv_expiry: 700,
            payment_hash: PaymentHash([9; 32]),
            transaction_output_index: None,
        };
        let data = CommitmentData {
            htlcs: alloc::vec![htlc_to_wire(&htlc)],
            ..Default::default()
        };
        assert_eq!(parse_htlcs(&data).unwrap(), alloc::vec![htlc]);

        let op = OutPoint {
            txid: Txid::from_byte_array([7; 32]),
            vout: 3,
        };
        assert_eq!(parse_outpoint(Some(&outpoint_to_wire(&op))).unwrap(), op);
    }
}
