//! The device end to end through its HID reports: pairing, hello, a
//! channel, refusals, approvals and the allow-list.

use super::*;
use crate::flash::RamFlash;
use crate::hid::REPORT_SIZE;
use crate::ui::Always;
use alloc::collections::VecDeque;
use bitcoin::secp256k1::Message as Digest;
use lnpd_proto::device_client::{DeviceClient, ReportLink};
use lnpd_proto::pairing::{hello_digest, host_hello_digest, pairing_code};
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
