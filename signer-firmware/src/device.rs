//! The device's main loop body: HID reports in, HID reports out. A complete
//! message is a `DeviceRequest`: a `signer.proto` `Request` (or batch),
//! handled by the signer core (the same code, policy and state rules as
//! `lnpd-signer run`) over the flash store, or pairing and the
//! per-connection hello ([`crate::session`]). Signing requests are served
//! only on a connection (channel id) whose host proved, over a fresh nonce,
//! that it holds a paired key. The channel id is no secret to other programs that can open
//! the same USB device, though: only an encrypted session would stop one
//! from sending on an authenticated connection. Payments above the approval
//! threshold and new pairings ask the user ([`crate::ui`]). A bad frame or
//! message gets an error reply and changes nothing.

use alloc::boxed::Box;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::str::FromStr;

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use bitcoin::Network;
use lnpd_proto::signer::{self as pb, device_reply, device_request, reply};
use lnpd_signer_core::policy::RuleId;
use lnpd_signer_core::signer::Entropy;
use lnpd_signer_core::{PolicyConfig, Seed, Signer, SignerError};
use prost::Message;

use crate::flash::{Flash, FlashStore};
use crate::hid::{fragment, Reassembler, Report};
use crate::ui::{Answer, Prompt, Ui};

/// A hardware signer: the signer core over flash, behind HID framing.
pub struct Device<F: Flash, U: Ui> {
    pub(crate) signer: Signer<FlashStore<F>>,
    pub(crate) rx: Reassembler,
    pub(crate) ui: U,
    pub(crate) secp: Secp256k1<All>,
    pub(crate) identity: SecretKey,
    /// Connections (channel ids) that said hello with a paired key, newest
    /// last: the bridge and, now and then, an operator's command.
    pub(crate) hello: Vec<u32>,
    /// Nonces handed out by Identity, per channel id, for the next hello.
    pub(crate) nonces: Vec<(u32, [u8; 32])>,
    /// Randomness for the nonces.
    pub(crate) entropy: Box<dyn Entropy>,
}

impl<F: Flash, U: Ui> Device<F, U> {
    /// Starts the device with its seed, loading its state from `flash`.
    /// `entropy` feeds the signer core, `nonces` the connection nonces.
    pub fn new(
        seed: &Seed,
        network: Network,
        policy: PolicyConfig,
        flash: F,
        ui: U,
        entropy: Box<dyn Entropy>,
        nonces: Box<dyn Entropy>,
    ) -> Result<Self, SignerError> {
        let store = FlashStore::open(flash).map_err(SignerError::from)?;
        // The identity key comes from the seed: a restored device is the
        // same device to its hosts.
        let mut e = hmac::HmacEngine::<sha256::Hash>::new(b"lnpd-device-identity");
        e.input(seed.expose());
        let identity = SecretKey::from_slice(hmac::Hmac::from_engine(e).as_byte_array())
            .map_err(|_| SignerError::internal("identity key out of range"))?;
        let mut signer = Signer::new(seed, network, policy, store, entropy)?;
        signer.load_kept_allowlist();
        Ok(Device {
            signer,
            rx: Reassembler::new(),
            ui,
            secp: Secp256k1::new(),
            identity,
            hello: Vec::new(),
            nonces: Vec::new(),
            entropy: nonces,
        })
    }

    /// The device's identity key (what hosts pair with).
    pub fn identity(&self) -> PublicKey {
        PublicKey::from_secret_key(&self.secp, &self.identity)
    }

    /// Handles one report; returns the reports of the reply (none until a
    /// request is complete).
    pub fn on_report(&mut self, report: &[u8]) -> Vec<Report> {
        match self.rx.push(report) {
            Ok(None) => Vec::new(),
            Ok(Some((cid, message))) => {
                let reply = match pb::DeviceRequest::decode(&message[..]) {
                    Ok(r) => self.on_request(cid, r),
                    Err(_) => error(&SignerError::invalid("not a DeviceRequest")),
                };
                fragment(cid, &reply.encode_to_vec())
                    .unwrap_or_else(|e| error_reports(cid, &SignerError::internal(e.to_string())))
            }
            Err(e) => {
                let cid = report
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                error_reports(cid, &SignerError::invalid(e.to_string()))
            }
        }
    }

    fn on_request(&mut self, cid: u32, r: pb::DeviceRequest) -> pb::DeviceReply {
        let body = match r.body {
            Some(device_request::Body::Identity(_)) => {
                Ok(device_reply::Body::Identity(self.identity_nonce(cid)))
            }
            Some(device_request::Body::Pair(p)) => self.pair(&p).map(device_reply::Body::Pair),
            Some(device_request::Body::Hello(h)) => {
                self.hello(cid, &h).map(device_reply::Body::Hello)
            }
            Some(_) if !self.hello.contains(&cid) => Err(SignerError::precondition(
                "this connection has not proved a paired host: send Hello (pair first)",
            )),
            Some(device_request::Body::Request(q)) => {
                let result = match q.body {
                    Some(b) => self.signer_request(b),
                    None => Err(SignerError::invalid("empty request")),
                };
                Ok(device_reply::Body::Reply(pb::Reply::from_result(
                    q.id, result,
                )))
            }
            Some(device_request::Body::Batch(b)) => self.batch(b).map(device_reply::Body::Batch),
            Some(device_request::Body::AllowlistAdd(a)) => self
                .allowlist_add(&a.entry)
                .map(device_reply::Body::AllowlistAdd),
            None => Err(SignerError::invalid("empty device request")),
        };
        pb::DeviceReply {
            body: Some(body.unwrap_or_else(|e| device_reply::Body::Error(e.to_wire()))),
        }
    }

    /// A new allow-list entry, kept only if the user confirms it.
    fn allowlist_add(&mut self, entry: &str) -> Result<pb::AllowlistAddReply, SignerError> {
        let entry = entry.trim();
        let (script, payee) = if entry.len() == 66 {
            let key = PublicKey::from_str(entry)
                .map_err(|_| SignerError::invalid("not a node id (66 hex digits)"))?;
            (None, Some(key.serialize()))
        } else {
            let address = bitcoin::Address::from_str(entry)
                .map_err(|_| SignerError::invalid("neither an address nor a node id"))?
                .require_network(self.signer.network())
                .map_err(|_| SignerError::invalid("an address of another network"))?;
            (Some(address.script_pubkey().to_bytes()), None)
        };
        match self.ui.ask(&Prompt::Allow {
            entry: entry.to_string(),
        }) {
            Answer::Confirm => {
                self.signer.allow(script, payee)?;
                Ok(pb::AllowlistAddReply {})
            }
            _ => Err(SignerError::precondition("not allowed on the device")),
        }
    }

    /// A signer request; a payment awaiting approval asks the user now.
    fn signer_request(&mut self, body: pb::request::Body) -> Result<reply::Body, SignerError> {
        match self.signer.handle(body)? {
            reply::Body::ShowInvoice(r) if r.awaiting_approval => {
                let pending = self
                    .signer
                    .pending_approvals()
                    .into_iter()
                    .find(|p| p.payment_hash == r.payment_hash)
                    .ok_or_else(|| SignerError::internal("approval request vanished"))?;
                let prompt = Prompt::Payment {
                    id: pending.id.clone(),
                    amount_msat: pending.amount_msat,
                    payee: pending
                        .payee
                        .iter()
                        .map(|b| alloc::format!("{b:02x}"))
                        .collect(),
                };
                let answer = self.ui.ask(&prompt);
                let approve = answer == Answer::Confirm;
                self.signer.decide_payment(&pending, approve)?;
                if approve {
                    Ok(reply::Body::ShowInvoice(pb::ShowInvoiceReply {
                        awaiting_approval: false,
                        ..r
                    }))
                } else {
                    Err(SignerError::policy(
                        RuleId::PaymentApproval,
                        match answer {
                            Answer::Timeout => "not approved on the device in time",
                            _ => "denied on the device",
                        },
                    ))
                }
            }
            other => Ok(other),
        }
    }

    fn batch(&mut self, b: pb::BatchRequest) -> Result<pb::BatchReply, SignerError> {
        let ids: Vec<u64> = b.requests.iter().map(|r| r.id).collect();
        let bodies = b
            .requests
            .into_iter()
            .map(|r| {
                r.body
                    .ok_or_else(|| SignerError::invalid("a batched request has no body"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let results = self.signer.handle_batch(bodies);
        Ok(pb::BatchReply {
            replies: results
                .into_iter()
                .zip(ids)
                .map(|(r, id)| pb::Reply::from_result(id, r))
                .collect(),
        })
    }

    /// The signer core (for the simulator's status output).
    pub fn signer(&self) -> &Signer<FlashStore<F>> {
        &self.signer
    }

    /// Stops the device, handing the flash back (tests restart it).
    pub fn into_flash(self) -> F {
        self.signer.into_store().into_flash()
    }
}

fn error(e: &SignerError) -> pb::DeviceReply {
    pb::DeviceReply {
        body: Some(device_reply::Body::Error(e.to_wire())),
    }
}

fn error_reports(cid: u32, e: &SignerError) -> Vec<Report> {
    // An error reply is small: it always frames.
    fragment(cid, &error(e).encode_to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
