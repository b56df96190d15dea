//! The device's sessions: pairing a host (its user confirms the code on
//! the device) and, on each connection, the paired host's proof over a
//! fresh nonce (hello). Signing requests are served only on a connection
//! that said hello.

use bitcoin::secp256k1::{Message as Digest, PublicKey};
use lnpd_proto::pairing::{hello_digest, host_hello_digest, pairing_code};
use lnpd_proto::signer as pb;
use lnpd_signer_core::SignerError;

use crate::device::Device;
use crate::flash::Flash;
use crate::ui::{Answer, Prompt, Ui};

/// Connections remembered at once.
pub(crate) const MAX_CONNECTIONS: usize = 4;

impl<F: Flash, U: Ui> Device<F, U> {
    /// A fresh nonce for this connection's next hello (the latest per
    /// connection, a few connections at once).
    pub(crate) fn identity_nonce(&mut self, cid: u32) -> pb::IdentityReply {
        let nonce = self.entropy.random_bytes();
        self.nonces.retain(|(c, _)| *c != cid);
        if self.nonces.len() >= MAX_CONNECTIONS {
            self.nonces.remove(0);
        }
        self.nonces.push((cid, nonce));
        pb::IdentityReply {
            device_key: self.identity().serialize().to_vec(),
            nonce: nonce.to_vec(),
        }
    }

    pub(crate) fn pair(&mut self, p: &pb::PairRequest) -> Result<pb::PairReply, SignerError> {
        PublicKey::from_slice(&p.host_key)
            .map_err(|_| SignerError::invalid("host_key is not a public key"))?;
        if p.nonce.len() != 32 {
            return Err(SignerError::invalid("nonce must be 32 bytes"));
        }
        let device_key = self.identity().serialize();
        let code = pairing_code(&device_key, &p.host_key, &p.nonce);
        match self.ui.ask(&Prompt::Pair { code: code.clone() }) {
            Answer::Confirm => {
                self.signer.pair_host(&p.host_key)?;
                Ok(pb::PairReply {
                    device_key: device_key.to_vec(),
                    code,
                })
            }
            _ => Err(SignerError::precondition("pairing refused on the device")),
        }
    }

    pub(crate) fn hello(
        &mut self,
        cid: u32,
        h: &pb::HelloRequest,
    ) -> Result<pb::HelloReply, SignerError> {
        if h.challenge.len() != 32 {
            return Err(SignerError::invalid("challenge must be 32 bytes"));
        }
        if !self.signer.paired_hosts().contains(&h.host_key) {
            return Err(SignerError::precondition(
                "this host is not paired with the device: pair first",
            ));
        }
        // The host proves it holds the paired key, over this connection's
        // nonce (used once).
        let Some(i) = self.nonces.iter().position(|(c, _)| *c == cid) else {
            return Err(SignerError::precondition(
                "no nonce for this connection: send Identity before Hello",
            ));
        };
        let (_, nonce) = self.nonces.remove(i);
        let host = PublicKey::from_slice(&h.host_key)
            .map_err(|_| SignerError::invalid("host_key is not a public key"))?;
        let proof = bitcoin::secp256k1::ecdsa::Signature::from_compact(&h.host_signature)
            .map_err(|_| SignerError::invalid("host_signature is not a compact signature"))?;
        let digest =
            Digest::from_digest(host_hello_digest(&nonce, cid, &self.identity().serialize()));
        if self.secp.verify_ecdsa(&digest, &proof, &host).is_err() {
            return Err(SignerError::precondition(
                "the host's hello signature does not verify: not this paired host",
            ));
        }
        let digest = Digest::from_digest(hello_digest(&h.challenge, &h.host_key));
        let signature = self.secp.sign_ecdsa(&digest, &self.identity);
        self.hello.retain(|c| *c != cid);
        if self.hello.len() >= MAX_CONNECTIONS {
            self.hello.remove(0);
        }
        self.hello.push(cid);
        Ok(pb::HelloReply {
            device_key: self.identity().serialize().to_vec(),
            signature: signature.serialize_compact().to_vec(),
        })
    }
}
