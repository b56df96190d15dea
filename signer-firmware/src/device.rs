//! The device's main loop body: HID reports in, HID reports out. A complete
//! message is a `DeviceRequest`: a `signer.proto` `Request` (or batch),
//! handled by the signer core (the same code, policy and state rules as
//! `lnpd-signer run`) over the flash store, or pairing and the
//! per-connection hello. Signing requests are served only on a connection
//! (channel id) whose host proved, over a fresh nonce, that it holds a
//! paired key. The channel id is no secret to other programs that can open
//! the same USB device, though: only an encrypted session would stop one
//! from sending on an authenticated connection. Payments above the approval
//! threshold and new pairings ask the user ([`crate::ui`]). A bad frame or
//! message gets an error reply and changes nothing.

use alloc::boxed::Box;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::str::FromStr;

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use bitcoin::secp256k1::{All, Message as Digest, PublicKey, Secp256k1, SecretKey};
use bitcoin::Network;
use lnpd_proto::pairing::{hello_digest, host_hello_digest, pairing_code};
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
    signer: Signer<FlashStore<F>>,
    rx: Reassembler,
    ui: U,
    secp: Secp256k1<All>,
    identity: SecretKey,
    /// Connections (channel ids) that said hello with a paired key, newest
    /// last: the bridge and, now and then, an operator's command.
    hello: Vec<u32>,
    /// Nonces handed out by Identity, per channel id, for the next hello.
    nonces: Vec<(u32, [u8; 32])>,
    /// Randomness for the nonces.
    entropy: Box<dyn Entropy>,
}

/// Connections remembered at once.
const MAX_CONNECTIONS: usize = 4;

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
                let nonce = self.entropy.random_bytes();
                self.nonces.retain(|(c, _)| *c != cid);
                if self.nonces.len() >= MAX_CONNECTIONS {
                    self.nonces.remove(0);
                }
                self.nonces.push((cid, nonce));
                Ok(device_reply::Body::Identity(pb::IdentityReply {
                    device_key: self.identity().serialize().to_vec(),
                    nonce: nonce.to_vec(),
                }))
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

    fn pair(&mut self, p: &pb::PairRequest) -> Result<pb::PairReply, SignerError> {
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

    fn hello(&mut self, cid: u32, h: &pb::HelloRequest) -> Result<pb::HelloReply, SignerError> {
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
mod tests {
    use super::*;
    use crate::flash::RamFlash;
    use crate::hid::REPORT_SIZE;
    use crate::ui::Always;
    use alloc::collections::VecDeque;
    use lnpd_proto::device_client::{DeviceClient, ReportLink};
    use lnpd_proto::signer::request;
    use lnpd_signer_core::testing::{
        memory_signer, test_entropy, ChannelPair, PairOptions, SignerHandle,
    };

    /// A device in the same process, as a report link.
    struct Wire<U: Ui> {
        device: Device<RamFlash, U>,
        out: VecDeque<Report>,
    }

    impl<U: Ui> ReportLink for Wire<U> {
        type Error = &'static str;
        fn send(&mut self, report: &Report) -> Result<(), Self::Error> {
            self.out.extend(self.device.on_report(report));
            Ok(())
        }
        fn receive(&mut self) -> Result<Report, Self::Error> {
            self.out.pop_front().ok_or("the device has nothing to say")
        }
    }

    /// The host: pairs, says hello, then sends signer requests.
    struct Host<U: Ui> {
        client: DeviceClient<Wire<U>>,
    }

    fn host_key() -> Vec<u8> {
        // The host's key: secret 07…07.
        PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[7; 32]).unwrap())
            .serialize()
            .to_vec()
    }

    impl<U: Ui> Host<U> {
        fn send(&mut self, body: device_request::Body) -> device_reply::Body {
            self.client
                .exchange(&pb::DeviceRequest { body: Some(body) })
                .expect("link")
                .body
                .expect("reply body")
        }
        fn pair(&mut self) -> device_reply::Body {
            self.send(device_request::Body::Pair(pb::PairRequest {
                host_key: host_key(),
                nonce: alloc::vec![5; 32],
            }))
        }
        fn hello(&mut self) -> device_reply::Body {
            let signature = self.host_signature(&[7; 32]);
            self.send(device_request::Body::Hello(pb::HelloRequest {
                host_key: host_key(),
                challenge: alloc::vec![6; 32],
                host_signature: signature,
            }))
        }

        /// Identity (a fresh nonce), signed with the host secret `secret`.
        fn host_signature(&mut self, secret: &[u8; 32]) -> Vec<u8> {
            let (device_key, nonce) =
                match self.send(device_request::Body::Identity(Default::default())) {
                    device_reply::Body::Identity(i) => (i.device_key, i.nonce),
                    other => panic!("identity: {other:?}"),
                };
            let digest = host_hello_digest(&nonce, self.client.cid(), &device_key);
            Secp256k1::new()
                .sign_ecdsa(
                    &Digest::from_digest(digest),
                    &SecretKey::from_slice(secret).unwrap(),
                )
                .serialize_compact()
                .to_vec()
        }
    }

    impl<U: Ui> SignerHandle for Host<U> {
        fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
            let req = pb::Request {
                id: 3,
                body: Some(body),
            };
            match self.send(device_request::Body::Request(req)) {
                device_reply::Body::Reply(pb::Reply {
                    body: Some(reply::Body::Error(e)),
                    ..
                })
                | device_reply::Body::Error(e) => Err(SignerError::from_wire(&e)),
                device_reply::Body::Reply(pb::Reply { body: Some(b), .. }) => Ok(b),
                _ => Err(SignerError::internal("unexpected reply")),
            }
        }
        fn handle_batch(
            &mut self,
            bodies: Vec<request::Body>,
        ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
            Ok(bodies.into_iter().map(|b| self.handle(b)).collect())
        }
    }

    fn device<U: Ui>(flash: RamFlash, policy: PolicyConfig, ui: U) -> Device<RamFlash, U> {
        Device::new(
            &Seed::new(alloc::vec![1; 32]).unwrap(),
            Network::Regtest,
            policy,
            flash,
            ui,
            test_entropy(1),
            test_entropy(9),
        )
        .unwrap()
    }

    /// A host on channel `cid` of a new device with the default policy.
    fn new_host<U: Ui>(ui: U, cid: u32) -> Host<U> {
        host(
            device(RamFlash::new(64 * 1024, 256), PolicyConfig::default(), ui),
            cid,
        )
    }

    fn host<U: Ui>(device: Device<RamFlash, U>, cid: u32) -> Host<U> {
        Host {
            client: DeviceClient::new(
                Wire {
                    device,
                    out: VecDeque::new(),
                },
                cid,
            ),
        }
    }

    fn is_error(b: &device_reply::Body) -> bool {
        matches!(b, device_reply::Body::Error(_))
    }

    #[test]
    fn a_paired_host_runs_a_channel_through_hid_reports() {
        let mut h = new_host(Always(Answer::Confirm), 0x0102_0304);
        let device_key = match h.pair() {
            device_reply::Body::Pair(p) => {
                assert_eq!(
                    p.code,
                    pairing_code(&p.device_key, &host_key(), &[5; 32]),
                    "both sides compute the same code"
                );
                p.device_key
            }
            other => panic!("pairing: {other:?}"),
        };
        match h.hello() {
            device_reply::Body::Hello(r) => {
                assert_eq!(r.device_key, device_key);
                let sig = bitcoin::secp256k1::ecdsa::Signature::from_compact(&r.signature).unwrap();
                Secp256k1::new()
                    .verify_ecdsa(
                        &Digest::from_digest(hello_digest(&[6; 32], &host_key())),
                        &sig,
                        &PublicKey::from_slice(&device_key).unwrap(),
                    )
                    .expect("the device proves its identity");
            }
            other => panic!("hello: {other:?}"),
        }
        let mut p = ChannelPair::open(
            Box::new(h),
            Box::new(memory_signer(2, PolicyConfig::default())),
            PairOptions::default(),
        )
        .expect("channel opens over HID");
        let htlc = p.add_htlc(20_000_000, 1).expect("payment over HID");
        p.settle_htlc(&htlc).expect("settled over HID");
        assert_eq!(p.number, 2);
    }

    #[test]
    fn only_a_paired_host_that_said_hello_is_served() {
        let mut h = new_host(Always(Answer::Deny), 7);
        let ping = device_request::Body::Request(pb::Request {
            id: 1,
            body: Some(request::Body::Ping(Default::default())),
        });
        assert!(is_error(&h.send(ping.clone())), "no hello yet");
        assert!(is_error(&h.hello()), "not paired");
        assert!(is_error(&h.pair()), "the user denied the pairing");
        assert!(is_error(&h.hello()), "still not paired");
        assert!(h
            .client
            .into_link()
            .device
            .signer()
            .paired_hosts()
            .is_empty());
    }

    #[test]
    fn hello_needs_the_paired_hosts_signature_over_a_fresh_nonce() {
        let mut h = new_host(Always(Answer::Confirm), 7);
        assert!(!is_error(&h.pair()));
        let hello_with = |h: &mut Host<Always>, signature: Vec<u8>| {
            h.send(device_request::Body::Hello(pb::HelloRequest {
                host_key: host_key(),
                challenge: alloc::vec![6; 32],
                host_signature: signature,
            }))
        };
        // Signed with another key than the paired one.
        let wrong = h.host_signature(&[8; 32]);
        assert!(is_error(&hello_with(&mut h, wrong)));
        // Right key, but no fresh nonce: a replayed hello.
        let good = h.host_signature(&[7; 32]);
        assert!(!is_error(&hello_with(&mut h, good.clone())));
        assert!(
            is_error(&hello_with(&mut h, good)),
            "the nonce is used once"
        );
    }

    #[test]
    fn pairing_survives_a_restart_and_hello_is_per_connection() {
        let mut h = new_host(Always(Answer::Confirm), 7);
        assert!(!is_error(&h.pair()));
        let flash = h.client.into_link().device.into_flash();
        let mut h = host(
            device(flash, PolicyConfig::default(), Always(Answer::Deny)),
            8,
        );
        let ping = device_request::Body::Request(pb::Request {
            id: 1,
            body: Some(request::Body::Ping(Default::default())),
        });
        assert!(
            is_error(&h.send(ping.clone())),
            "a new connection says hello first"
        );
        assert!(!is_error(&h.hello()), "paired before the restart");
        assert!(!is_error(&h.send(ping)));
    }

    #[test]
    fn a_bad_frame_gets_an_error_reply_and_changes_nothing() {
        let mut d = device(
            RamFlash::new(64 * 1024, 256),
            PolicyConfig::default(),
            Always(Answer::Confirm),
        );
        let mut out = d.on_report(&[0u8; 10]);
        assert_eq!(out.len(), 1);
        let mut second = [0u8; REPORT_SIZE];
        second[..4].copy_from_slice(&7u32.to_be_bytes());
        second[5] = 3; // a continuation with nothing started
        out.extend(d.on_report(&second));
        for r in out {
            let mut rx = Reassembler::new();
            let (_, m) = rx.push(&r).unwrap().expect("one-report error reply");
            let reply = pb::DeviceReply::decode(&m[..]).unwrap();
            assert!(matches!(
                reply.body,
                Some(device_reply::Body::Error(e)) if e.kind == pb::ErrorKind::Invalid as i32
            ));
        }
        // Garbage that frames fine but is no DeviceRequest: an error reply too.
        let mut rx = Reassembler::new();
        let mut reply = None;
        for r in fragment(9, &[0xFF; 40]).unwrap() {
            for out in d.on_report(&r) {
                reply = rx.push(&out).unwrap().or(reply);
            }
        }
        let (_, m) = reply.expect("a reply");
        assert!(is_error(
            &pb::DeviceReply::decode(&m[..]).unwrap().body.unwrap()
        ));
        assert_eq!(d.signer().channels().count(), 0);
    }

    #[test]
    fn allow_list_entries_need_the_button_and_survive_a_restart() {
        let addr = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        let script = bitcoin::Address::from_str(addr)
            .unwrap()
            .assume_checked()
            .script_pubkey()
            .to_bytes();
        let add = |entry: &str| {
            device_request::Body::AllowlistAdd(pb::AllowlistAddRequest {
                entry: entry.into(),
            })
        };
        let mut h = new_host(Always(Answer::Deny), 1);
        h.send(device_request::Body::Pair(pb::PairRequest {
            host_key: host_key(),
            nonce: alloc::vec![5; 32],
        }));
        // Denied on the device (and unpaired hosts are not even asked).
        assert!(is_error(&h.send(add(addr))));
        let flash = h.client.into_link().device.into_flash();
        let mut h = host(
            device(flash, PolicyConfig::default(), Always(Answer::Confirm)),
            2,
        );
        assert!(is_error(&h.send(add(addr))), "hello first");
        assert!(!is_error(&h.pair()));
        assert!(!is_error(&h.hello()));
        assert!(
            is_error(&h.send(add("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"))),
            "mainnet address"
        );
        assert!(is_error(&h.send(add("garbage"))));
        assert!(!is_error(&h.send(add(addr))));
        // The generator point, as a payee node id.
        let payee = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
        assert!(!is_error(&h.send(add(payee))));
        let flash = h.client.into_link().device.into_flash();
        let d = device(flash, PolicyConfig::default(), Always(Answer::Deny));
        assert!(
            d.signer().policy().allowed_scripts.contains(&script),
            "kept across a restart"
        );
    }

    /// A BOLT 11 invoice of `amount_msat` for payment hash tag `tag`.
    fn invoice(tag: u8, amount_msat: u64) -> alloc::string::String {
        use lightning_invoice::{Currency, InvoiceBuilder};
        let s = Secp256k1::new();
        let key = SecretKey::from_slice(&[4; 32]).unwrap();
        InvoiceBuilder::new(Currency::Regtest)
            .description("device test".into())
            .payment_hash(sha256::Hash::hash(&[tag; 32]))
            .payment_secret(lightning::types::payment::PaymentSecret([1; 32]))
            .duration_since_epoch(core::time::Duration::from_secs(1_700_000_000))
            .min_final_cltv_expiry_delta(18)
            .amount_milli_satoshis(amount_msat)
            .expiry_time(core::time::Duration::from_secs(3600))
            .build_signed(|m| s.sign_ecdsa_recoverable(m, &key))
            .unwrap()
            .to_string()
    }

    /// Confirms pairings; answers payments with its answer.
    struct Payments(Answer);

    impl Ui for Payments {
        fn ask(&mut self, prompt: &Prompt) -> Answer {
            match prompt {
                Prompt::Payment { .. } => self.0,
                _ => Answer::Confirm,
            }
        }
    }

    #[test]
    fn a_payment_above_the_threshold_asks_the_user() {
        let policy = PolicyConfig {
            approval_above_sat: Some(10_000),
            ..PolicyConfig::default()
        };
        for (answer, approved) in [
            (Answer::Confirm, true),
            (Answer::Deny, false),
            (Answer::Timeout, false),
        ] {
            let mut h = host(
                device(
                    RamFlash::new(64 * 1024, 256),
                    policy.clone(),
                    Payments(answer),
                ),
                1,
            );
            h.pair();
            h.hello();
            let shown = call_show(&mut h, invoice(1, 50_000_000));
            match shown {
                Ok(r) => assert!(approved && !r.awaiting_approval, "{answer:?}"),
                Err(e) => {
                    assert!(!approved, "{answer:?}: {e}");
                    assert_eq!(e.rule, Some(RuleId::PaymentApproval), "{e}");
                }
            }
            // Below the threshold nothing is asked.
            assert!(call_show(&mut h, invoice(2, 5_000_000)).is_ok());
        }
    }

    fn call_show<U: Ui>(
        h: &mut Host<U>,
        bolt11: alloc::string::String,
    ) -> Result<pb::ShowInvoiceReply, SignerError> {
        match h.handle(request::Body::ShowInvoice(pb::ShowInvoiceRequest {
            bolt11,
            amount_msat: 0,
        }))? {
            reply::Body::ShowInvoice(r) => Ok(r),
            _ => Err(SignerError::internal("wrong reply")),
        }
    }
}
