//! `RemoteKeysManager`: LDK's node-level signer traits over the signer
//! connection. Only public data is cached: the node id and the three
//! symmetric keys LDK keeps in the node (none of them can move funds).

use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::ecdh::SharedSecret;
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use bitcoin::secp256k1::{schnorr, All, PublicKey, Scalar, Secp256k1};
use bitcoin::{absolute::LockTime, ScriptBuf, Transaction, TxOut};
use lightning::ln::inbound_payment::ExpandedKey;
use lightning::ln::msgs::UnsignedGossipMessage;
use lightning::ln::script::ShutdownScript;
use lightning::offers::invoice::UnsignedBolt12Invoice;
use lightning::sign::{
    ChangeDestinationSourceSync, EntropySource, NodeSigner, OutputSpender, PeerStorageKey,
    ReceiveAuthKey, Recipient, SignerProvider, SpendableOutputDescriptor,
};
use lightning::util::ser::Writeable;
use lightning_invoice::RawBolt11Invoice;
use lnpd_proto::signer::{self as pb, reply, request};
use zeroize::Zeroizing;

use super::channel::RemoteChannelSigner;
use super::connection::expect_reply;
use super::connection::{CallError, SignerConnection};
use super::convert;
use crate::chain_watch::TxSource;

/// How long LDK-blocking operations (ECDH, gossip, keys ids) wait for an
/// unavailable signer before giving up.
pub const BLOCKING_PATIENCE: Duration = Duration::from_secs(30);

/// Why the keys manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The signer could not be asked.
    #[error("{0}")]
    Call(#[from] CallError),
    /// The signer speaks another protocol or answered nonsense.
    #[error("signer answered unexpectedly: {0}")]
    Protocol(String),
    /// The signer's state is older than one it acknowledged to this node:
    /// it signs nothing (`state-rollback-detected`).
    #[error("the signer refuses to sign (state-rollback-detected): {0}")]
    Rollback(String),
}

/// LDK's keys manager whose every secret operation is a call to `lnpd-signer`.
pub struct RemoteKeysManager {
    conn: Arc<SignerConnection>,
    txs: Arc<dyn TxSource>,
    /// Whether channel signers may queue holder-commitment validations.
    validations: Arc<super::queued::ValidationQueue>,
    /// ECDH of incoming onions asked for when their HTLC arrived.
    onion_ecdh: super::onion_ecdh::EcdhAhead,
    node_id: PublicKey,
    inbound_payment_key: Zeroizing<[u8; 32]>,
    peer_storage_key: Zeroizing<[u8; 32]>,
    receive_auth_key: Zeroizing<[u8; 32]>,
    secp: Secp256k1<All>,
}

fn key32(v: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeysError> {
    v.try_into()
        .map(Zeroizing::new)
        .map_err(|_| KeysError::Protocol("a node key is not 32 bytes".into()))
}

impl RemoteKeysManager {
    /// Where channel signers queue holder-commitment validations (off
    /// until enabled; see [`super::queued`]).
    pub fn validations(&self) -> &super::queued::ValidationQueue {
        &self.validations
    }

    /// Starts the ECDH LDK will ask for to decode an incoming HTLC's onion
    /// (see [`super::onion_ecdh`]).
    pub fn ask_onion_ecdh(&self, point: PublicKey) {
        self.onion_ecdh.ask(&self.conn, point)
    }

    /// Asks the signer for the node id and the node-side keys (waiting up to
    /// `patience` for it to come up) and checks the protocol version.
    pub fn new(
        conn: Arc<SignerConnection>,
        txs: Arc<dyn TxSource>,
        patience: Duration,
    ) -> Result<Self, KeysError> {
        let info = expect_reply!(
            conn.call_retrying(
                "signer info",
                request::Body::Info(pb::InfoRequest {
                    protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
                    seen_state_counter: conn.seen_state_counter(),
                }),
                patience
            ),
            Info
        )?;
        if info.protocol_version != lnpd_proto::SIGNER_PROTOCOL_VERSION {
            return Err(KeysError::Protocol(format!(
                "the signer speaks protocol version {}, this node {}: run node and signer of the same release",
                info.protocol_version,
                lnpd_proto::SIGNER_PROTOCOL_VERSION
            )));
        }
        if !info.rollback.is_empty() {
            return Err(KeysError::Rollback(info.rollback));
        }
        let node_id = PublicKey::from_slice(&info.node_id)
            .map_err(|_| KeysError::Protocol("bad node id".into()))?;
        let keys = expect_reply!(
            conn.call_retrying(
                "node keys",
                request::Body::GetNodeKeys(pb::GetNodeKeysRequest {}),
                patience
            ),
            GetNodeKeys
        )?;
        Ok(RemoteKeysManager {
            conn,
            txs,
            validations: Default::default(),
            onion_ecdh: Default::default(),
            node_id,
            inbound_payment_key: key32(&keys.inbound_payment_key)?,
            peer_storage_key: key32(&keys.peer_storage_key)?,
            receive_auth_key: key32(&keys.receive_auth_key)?,
            secp: Secp256k1::new(),
        })
    }

    /// The connection (for the node's reconnect/unblock loop).
    pub fn connection(&self) -> &Arc<SignerConnection> {
        &self.conn
    }

    fn blocking(&self, what: &str, body: request::Body) -> Result<reply::Body, CallError> {
        let r = self.conn.call_retrying(what, body, BLOCKING_PATIENCE);
        if let Err(e) = &r {
            tracing::error!("{what}: {e}");
        }
        r
    }

    /// A script of the signer's wallet (for change and channel destinations).
    fn wallet_script(&self, keys_id: [u8; 32]) -> Result<ScriptBuf, ()> {
        let r = expect_reply!(
            self.blocking(
                "destination script",
                request::Body::GetDestinationScript(pb::GetDestinationScriptRequest {
                    channel_keys_id: keys_id.to_vec()
                })
            ),
            Script
        );
        r.map(|s| ScriptBuf::from_bytes(s.script_pubkey))
            .map_err(|_| ())
    }
}

impl EntropySource for RemoteKeysManager {
    fn get_secure_random_bytes(&self) -> [u8; 32] {
        // Node-side randomness (onion session keys, ids): no long-term secret.
        let mut b = [0u8; 32];
        if getrandom::fill(&mut b).is_err() {
            tracing::error!("OS randomness unavailable");
        }
        b
    }
}

/// The data part of an invoice as 5-bit values (what BOLT 11 signs, with
/// the hrp). lightning-invoice keeps its 5-bit encoder private, so the
/// invoice is encoded with a placeholder signature and decoded again; the
/// placeholder's 104 values are dropped.
fn invoice_data_u5(invoice: &RawBolt11Invoice) -> Option<Vec<u8>> {
    use bitcoin::bech32::primitives::decode::CheckedHrpstring;
    use bitcoin::bech32::Bech32;
    let placeholder =
        RecoverableSignature::from_compact(&[1u8; 64], RecoveryId::from_i32(0).ok()?).ok()?;
    let signed = invoice.clone().sign::<_, ()>(|_| Ok(placeholder)).ok()?;
    let text = signed.to_string();
    let checked = CheckedHrpstring::new::<Bech32>(&text).ok()?;
    let all: Vec<u8> = checked
        .fe32_iter::<std::vec::IntoIter<u8>>()
        .map(|f| f.to_u8())
        .collect();
    let data_len = all.len().checked_sub(104)?;
    Some(all[..data_len].to_vec())
}

fn node_only(r: Recipient) -> Result<(), ()> {
    match r {
        Recipient::Node => Ok(()),
        Recipient::PhantomNode => Err(()),
    }
}

impl NodeSigner for RemoteKeysManager {
    fn get_expanded_key(&self) -> ExpandedKey {
        ExpandedKey::new(*self.inbound_payment_key)
    }

    fn get_peer_storage_key(&self) -> PeerStorageKey {
        PeerStorageKey {
            inner: *self.peer_storage_key,
        }
    }

    fn get_receive_auth_key(&self) -> ReceiveAuthKey {
        ReceiveAuthKey(*self.receive_auth_key)
    }

    fn get_node_id(&self, recipient: Recipient) -> Result<PublicKey, ()> {
        node_only(recipient)?;
        Ok(self.node_id)
    }

    fn ecdh(
        &self,
        recipient: Recipient,
        other_key: &PublicKey,
        tweak: Option<&Scalar>,
    ) -> Result<SharedSecret, ()> {
        node_only(recipient)?;
        if tweak.is_none() {
            if let Some(s) = self.onion_ecdh.take(other_key) {
                metrics::counter!("lnpd_node_ecdh_total", "asked" => "ahead").increment(1);
                return Ok(s);
            }
        }
        metrics::counter!("lnpd_node_ecdh_total", "asked" => "now").increment(1);
        let body = request::Body::Ecdh(pb::EcdhRequest {
            recipient: pb::Recipient::Node as i32,
            other_key: other_key.serialize().to_vec(),
            tweak: tweak.map(|t| t.to_be_bytes().to_vec()),
        });
        let r = expect_reply!(self.blocking("ecdh", body), Ecdh).map_err(|_| ())?;
        SharedSecret::from_slice(&r.shared_secret).map_err(|_| ())
    }

    fn sign_invoice(
        &self,
        invoice: &RawBolt11Invoice,
        recipient: Recipient,
    ) -> Result<RecoverableSignature, ()> {
        node_only(recipient)?;
        let body = request::Body::SignInvoice(pb::SignInvoiceRequest {
            recipient: pb::Recipient::Node as i32,
            hrp: invoice.hrp.to_string(),
            data_u5: invoice_data_u5(invoice).ok_or(())?,
        });
        let r = expect_reply!(self.blocking("sign invoice", body), RecoverableSignature)
            .map_err(|_| ())?;
        let rid = RecoveryId::from_i32(r.recovery_id).map_err(|_| ())?;
        RecoverableSignature::from_compact(&r.signature, rid).map_err(|_| ())
    }

    fn sign_bolt12_invoice(
        &self,
        invoice: &UnsignedBolt12Invoice,
    ) -> Result<schnorr::Signature, ()> {
        let body = request::Body::SignBolt12Invoice(pb::SignBolt12InvoiceRequest {
            invoice_tlv: invoice.encode(),
        });
        let r = expect_reply!(
            self.blocking("sign BOLT 12 invoice", body),
            SchnorrSignature
        )
        .map_err(|_| ())?;
        schnorr::Signature::from_slice(&r.signature).map_err(|_| ())
    }

    fn sign_gossip_message(&self, msg: UnsignedGossipMessage) -> Result<Signature, ()> {
        let (kind, bytes) = match msg {
            UnsignedGossipMessage::ChannelAnnouncement(m) => {
                (pb::GossipKind::ChannelAnnouncement, m.encode())
            }
            UnsignedGossipMessage::ChannelUpdate(m) => (pb::GossipKind::ChannelUpdate, m.encode()),
            UnsignedGossipMessage::NodeAnnouncement(m) => {
                (pb::GossipKind::NodeAnnouncement, m.encode())
            }
        };
        let body = request::Body::SignGossip(pb::SignGossipRequest {
            kind: kind as i32,
            unsigned_message: bytes,
        });
        let r = expect_reply!(self.blocking("sign gossip", body), Signature).map_err(|_| ())?;
        Signature::from_compact(&r.signature).map_err(|_| ())
    }

    fn sign_message(&self, msg: &[u8]) -> Result<String, ()> {
        let body = request::Body::SignMessage(pb::SignMessageRequest {
            message: msg.to_vec(),
        });
        expect_reply!(self.blocking("sign message", body), SignMessage)
            .map(|r| r.signature)
            .map_err(|_| ())
    }
}

impl SignerProvider for RemoteKeysManager {
    type EcdsaSigner = RemoteChannelSigner;

    fn generate_channel_keys_id(&self, inbound: bool, user_channel_id: u128) -> [u8; 32] {
        let body = request::Body::NewChannelKeysId(pb::NewChannelKeysIdRequest {
            inbound,
            user_channel_id: user_channel_id.to_be_bytes().to_vec(),
        });
        match expect_reply!(self.blocking("new channel keys id", body), NewChannelKeysId) {
            Ok(r) => match r.channel_keys_id.try_into() {
                Ok(id) => id,
                Err(_) => {
                    tracing::error!(
                        "signer returned a malformed channel keys id; using a random one"
                    );
                    self.get_secure_random_bytes()
                }
            },
            // The signer still enforces channel-keys-id-unique at set-up.
            Err(_) => self.get_secure_random_bytes(),
        }
    }

    fn derive_channel_signer(&self, channel_keys_id: [u8; 32]) -> RemoteChannelSigner {
        RemoteChannelSigner::new(
            self.conn.clone(),
            self.txs.clone(),
            self.validations.clone(),
            channel_keys_id,
        )
    }

    fn get_destination_script(&self, channel_keys_id: [u8; 32]) -> Result<ScriptBuf, ()> {
        self.wallet_script(channel_keys_id)
    }

    fn get_shutdown_scriptpubkey(&self) -> Result<ShutdownScript, ()> {
        let r = expect_reply!(
            self.blocking(
                "shutdown script",
                request::Body::GetShutdownScript(pb::GetShutdownScriptRequest {})
            ),
            Script
        )
        .map_err(|_| ())?;
        ShutdownScript::try_from(ScriptBuf::from_bytes(r.script_pubkey)).map_err(|_| ())
    }
}

impl ChangeDestinationSourceSync for RemoteKeysManager {
    fn get_change_destination_script(&self) -> Result<ScriptBuf, ()> {
        self.wallet_script([0; 32])
    }
}

impl OutputSpender for RemoteKeysManager {
    fn spend_spendable_outputs(
        &self,
        descriptors: &[&SpendableOutputDescriptor],
        outputs: Vec<TxOut>,
        change_destination_script: ScriptBuf,
        feerate_sat_per_1000_weight: u32,
        locktime: Option<LockTime>,
        _secp_ctx: &Secp256k1<All>,
    ) -> Result<Transaction, ()> {
        let body = request::Body::SpendSpendableOutputs(pb::SpendSpendableOutputsRequest {
            descriptors: descriptors
                .iter()
                .map(|d| {
                    let txid = match d {
                        SpendableOutputDescriptor::StaticOutput { outpoint, .. } => outpoint.txid,
                        SpendableOutputDescriptor::DelayedPaymentOutput(p) => p.outpoint.txid,
                        SpendableOutputDescriptor::StaticPaymentOutput(p) => p.outpoint.txid,
                    };
                    let prev = self
                        .txs
                        .transaction(&txid)
                        .map(|t| bitcoin::consensus::serialize(&t))
                        .unwrap_or_default();
                    if prev.is_empty() {
                        tracing::warn!(%txid, "the transaction of an output to sweep is not kept: the signer will ask for it");
                    }
                    convert::spendable(d, prev)
                })
                .collect(),
            outputs: outputs.iter().map(lnpd_proto::ldk::txout_to_wire).collect(),
            change_script: change_destination_script.to_bytes(),
            feerate_sat_per_kw: feerate_sat_per_1000_weight,
            lock_time: locktime.map(|l| l.to_consensus_u32()),
        });
        // The sweeper retries on error: no need to wait for the signer here.
        let r = expect_reply!(
            self.conn.call(body, Duration::from_secs(10)),
            SpendSpendableOutputs
        );
        match r {
            Ok(r) => bitcoin::consensus::deserialize(&r.transaction).map_err(|_| ()),
            Err(e) => {
                tracing::warn!("sweep not signed yet: {e}");
                Err(())
            }
        }
    }
}

impl RemoteKeysManager {
    /// Verifies that a signature from the signer is over `msg` by our node key
    /// (used in tests and start-up checks).
    pub fn verify_node_signature(
        &self,
        msg: &bitcoin::secp256k1::Message,
        sig: &Signature,
    ) -> bool {
        self.secp.verify_ecdsa(msg, sig, &self.node_id).is_ok()
    }
}
