//! NodeSigner operations: node id, ECDH, invoice, gossip and message
//! signatures, and the node-side symmetric keys.

use alloc::format;
use alloc::vec::Vec;

use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::secp256k1::{ecdh::SharedSecret, Keypair, Message, PublicKey, Scalar, SecretKey};
use lightning::ln::msgs::{
    UnsignedChannelAnnouncement, UnsignedChannelUpdate, UnsignedNodeAnnouncement,
};
use lightning::routing::gossip::NodeId;
use lightning::util::ser::LengthReadable;
use lnpd_proto::signer::{self as pb, reply, request, GossipKind, Recipient};

use crate::commitment::{parse_32, parse_pubkey};
use crate::error::SignerError;
use crate::signer::Signer;
use crate::store::Store;

/// Largest gossip message or BOLT 12 invoice accepted (BOLT 1 message limit).
const MAX_MESSAGE_BYTES: usize = 65_535;

fn node_only(recipient: i32) -> Result<(), SignerError> {
    match Recipient::try_from(recipient) {
        Ok(Recipient::Node) => Ok(()),
        Ok(Recipient::PhantomNode) => Err(SignerError::invalid(
            "phantom node keys are not supported by this signer",
        )),
        Err(_) => Err(SignerError::invalid("unknown recipient")),
    }
}

/// Reads a whole message of type `T`, refusing trailing bytes.
fn read_exact<T: LengthReadable>(what: &str, bytes: &[u8]) -> Result<T, SignerError> {
    let mut cursor = bytes;
    let v = T::read_from_fixed_length_buffer(&mut cursor)
        .map_err(|_| SignerError::invalid(format!("malformed {what}")))?;
    if !cursor.is_empty() {
        return Err(SignerError::invalid(format!("trailing bytes after {what}")));
    }
    Ok(v)
}

/// SHA256 of an invoice's hrp and data part (data padded to whole bytes), as BOLT 11 signs it.
pub fn invoice_hash(hrp: &str, data_u5: &[u8]) -> Result<[u8; 32], SignerError> {
    if !hrp.is_ascii() || !hrp.starts_with("ln") {
        return Err(SignerError::invalid(
            "invoice hrp must be ASCII and start with \"ln\"",
        ));
    }
    let mut preimage: Vec<u8> = hrp.as_bytes().to_vec();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &v in data_u5 {
        if v > 31 {
            return Err(SignerError::invalid("invoice data must hold 5-bit values"));
        }
        acc = (acc << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            preimage.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits > 0 {
        preimage.push((acc << (8 - bits)) as u8);
    }
    Ok(sha256::Hash::hash(&preimage).to_byte_array())
}

impl<S: Store> Signer<S> {
    pub(crate) fn get_node_id(
        &self,
        r: &pb::GetNodeIdRequest,
    ) -> Result<pb::GetNodeIdReply, SignerError> {
        node_id_reply(&self.node_id(), r)
    }

    pub(crate) fn ecdh(&self, r: &pb::EcdhRequest) -> Result<pb::EcdhReply, SignerError> {
        ecdh_reply(self.keys.node_secret(), r)
    }

    /// The node key apart from the signer (see [`NodeKey`]).
    pub fn node_key(&self) -> NodeKey {
        NodeKey {
            secret: *self.keys.node_secret(),
            node_id: self.node_id(),
        }
    }
}

fn node_id_reply(
    node_id: &PublicKey,
    r: &pb::GetNodeIdRequest,
) -> Result<pb::GetNodeIdReply, SignerError> {
    node_only(r.recipient)?;
    Ok(pb::GetNodeIdReply {
        node_id: node_id.serialize().to_vec(),
    })
}

fn ecdh_reply(node_secret: &SecretKey, r: &pb::EcdhRequest) -> Result<pb::EcdhReply, SignerError> {
    node_only(r.recipient)?;
    let other = parse_pubkey("other_key", &r.other_key)?;
    let mut secret = *node_secret;
    if let Some(t) = &r.tweak {
        let scalar = Scalar::from_be_bytes(parse_32("tweak", t)?)
            .map_err(|_| SignerError::invalid("tweak is not a valid scalar"))?;
        secret = secret
            .mul_tweak(&scalar)
            .map_err(|_| SignerError::invalid("tweak gives an invalid key"))?;
    }
    let shared = SharedSecret::new(&other, &secret);
    secret.non_secure_erase();
    Ok(pb::EcdhReply {
        shared_secret: shared.secret_bytes().to_vec(),
    })
}

/// The node key's operations that read and write no state: ECDH (onion
/// peeling, the peer transport) and the node id. A daemon answers them
/// with this copy of the key, apart from the signer, so that they never
/// wait for a request in progress (a durable write). Erased on drop.
#[derive(Clone)]
pub struct NodeKey {
    secret: SecretKey,
    node_id: PublicKey,
}

impl NodeKey {
    /// The answer to `body`, as the signer would give it; `None` for a
    /// request that needs the signer (not `Body::node_key_only`).
    pub fn handle(&self, body: &request::Body) -> Option<Result<reply::Body, SignerError>> {
        match body {
            request::Body::Ecdh(r) => Some(ecdh_reply(&self.secret, r).map(reply::Body::Ecdh)),
            request::Body::GetNodeId(r) => {
                Some(node_id_reply(&self.node_id, r).map(reply::Body::GetNodeId))
            }
            _ => None,
        }
    }
}

impl Drop for NodeKey {
    fn drop(&mut self) {
        self.secret.non_secure_erase();
    }
}

impl core::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Signer<S> {
    pub(crate) fn sign_invoice(
        &self,
        r: &pb::SignInvoiceRequest,
    ) -> Result<pb::RecoverableSignatureReply, SignerError> {
        node_only(r.recipient)?;
        if r.data_u5.len() > 8 * MAX_MESSAGE_BYTES / 5 {
            return Err(SignerError::invalid("invoice too long"));
        }
        let hash = invoice_hash(&r.hrp, &r.data_u5)?;
        crate::policy::node::validate_invoice(
            &self.policy,
            self.keys.network(),
            &r.hrp,
            &r.data_u5,
        )?;
        let sig = self
            .secp
            .sign_ecdsa_recoverable(&Message::from_digest(hash), self.keys.node_secret());
        let (rid, bytes) = sig.serialize_compact();
        Ok(pb::RecoverableSignatureReply {
            signature: bytes.to_vec(),
            recovery_id: rid.to_i32(),
        })
    }

    pub(crate) fn sign_bolt12_invoice(
        &mut self,
        r: &pb::SignBolt12InvoiceRequest,
    ) -> Result<pb::SchnorrSignatureReply, SignerError> {
        use lightning::offers::invoice::UnsignedBolt12Invoice;
        if r.invoice_tlv.len() > MAX_MESSAGE_BYTES {
            return Err(SignerError::invalid("BOLT 12 invoice too long"));
        }
        let invoice = UnsignedBolt12Invoice::try_from(r.invoice_tlv.clone())
            .map_err(|_| SignerError::invalid("malformed BOLT 12 invoice"))?;
        if invoice.signing_pubkey() != self.node_id() {
            return Err(SignerError::invalid(
                "BOLT 12 invoice's signing key is not this node's key",
            ));
        }
        let digest = *invoice.tagged_hash().as_digest();
        let keypair = Keypair::from_secret_key(&self.secp, self.keys.node_secret());
        let aux = self.entropy.random_bytes();
        let sig = self
            .secp
            .sign_schnorr_with_aux_rand(&digest, &keypair, &aux);
        Ok(pb::SchnorrSignatureReply {
            signature: sig.as_ref().to_vec(),
        })
    }

    pub(crate) fn sign_gossip(
        &self,
        r: &pb::SignGossipRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        if r.unsigned_message.len() > MAX_MESSAGE_BYTES {
            return Err(SignerError::invalid("gossip message too long"));
        }
        let ours = NodeId::from_pubkey(&self.node_id());
        match GossipKind::try_from(r.kind) {
            Ok(GossipKind::NodeAnnouncement) => {
                let m: UnsignedNodeAnnouncement =
                    read_exact("node_announcement", &r.unsigned_message)?;
                if m.node_id != ours {
                    return Err(SignerError::invalid(
                        "node_announcement is for another node",
                    ));
                }
            }
            Ok(GossipKind::ChannelUpdate) => {
                let _: UnsignedChannelUpdate = read_exact("channel_update", &r.unsigned_message)?;
            }
            Ok(GossipKind::ChannelAnnouncement) => {
                let m: UnsignedChannelAnnouncement =
                    read_exact("channel_announcement", &r.unsigned_message)?;
                let funding_keys: Vec<NodeId> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| c.setup.is_some())
                    .map(|(id, _)| NodeId::from_pubkey(&self.holder_pubkeys(id).funding_pubkey))
                    .collect();
                crate::policy::node::check_announcement_keys(
                    &self.policy,
                    &m,
                    &ours,
                    &funding_keys,
                )?;
            }
            _ => return Err(SignerError::invalid("unknown gossip kind")),
        }
        let digest = sha256d::Hash::hash(&r.unsigned_message).to_byte_array();
        let sig = self
            .secp
            .sign_ecdsa(&Message::from_digest(digest), self.keys.node_secret());
        Ok(pb::SignatureReply {
            signature: sig.serialize_compact().to_vec(),
        })
    }

    pub(crate) fn sign_message(&self, r: &pb::SignMessageRequest) -> pb::SignMessageReply {
        let signature = lightning::util::message_signing::sign(&r.message, self.keys.node_secret());
        pb::SignMessageReply { signature }
    }

    pub(crate) fn get_node_keys(&self) -> pb::GetNodeKeysReply {
        pb::GetNodeKeysReply {
            inbound_payment_key: self.keys.symmetric_key(b"inbound-payment").to_vec(),
            peer_storage_key: self.keys.symmetric_key(b"peer-storage").to_vec(),
            receive_auth_key: self.keys.symmetric_key(b"receive-auth").to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_hash_pads_to_bytes() {
        // 3 values = 15 bits -> 2 bytes, the last one padded with a zero bit.
        let h = invoice_hash("lnbc", &[31, 31, 31]).unwrap();
        let expect = sha256::Hash::hash(&[b'l', b'n', b'b', b'c', 0xff, 0xfe]).to_byte_array();
        assert_eq!(h, expect);
        assert!(invoice_hash("lnbc", &[32]).is_err());
        assert!(invoice_hash("bc", &[1]).is_err());
    }
}
