//! Random and mutated requests fed to the decoder and the handler: the
//! signer never panics, always answers with a well-formed reply, and a
//! refused request leaves its state exactly as it was.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use lnpd_proto::signer::{self as pb, reply, request};
use lnpd_signer_core::testing::{
    memory_signer, next_counterparty_request, ChannelPair, PairOptions, Rng,
};
use lnpd_signer_core::PolicyConfig;
use prost::Message;

fn corpus(p: &mut ChannelPair) -> Vec<Vec<u8>> {
    let id = p.alice.keys_id.clone();
    let next = next_counterparty_request(p).expect("request");
    let (holder, _) = p
        .holder_request(true, p.number + 1)
        .expect("holder request");
    let bodies = vec![
        request::Body::Ping(pb::PingRequest {
            nonce: vec![1, 2, 3],
        }),
        request::Body::Ecdh(pb::EcdhRequest {
            recipient: 0,
            other_key: p.bob.pubkeys.funding_pubkey.clone(),
            tweak: Some(vec![3; 32]),
        }),
        request::Body::SignCounterpartyCommitment(next),
        request::Body::ValidateHolderCommitment(holder),
        request::Body::ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: id.clone(),
            commitment_number: p.number,
        }),
        request::Body::SetupChannel(p.alice.setup.clone()),
        request::Body::SignHolderCommitment(pb::SignHolderCommitmentRequest {
            channel_keys_id: id.clone(),
            commitment_number: p.number,
        }),
        request::Body::SignClosingTransaction(pb::SignClosingTransactionRequest {
            channel_keys_id: id.clone(),
            to_holder_value_sat: 1000,
            to_counterparty_value_sat: 2000,
            to_holder_script: vec![0, 20],
            to_counterparty_script: vec![0, 20],
            lock_time: 0,
        }),
        request::Body::SignInvoice(pb::SignInvoiceRequest {
            recipient: 0,
            hrp: "lnbcrt1m".into(),
            data_u5: vec![1, 2, 3, 4, 5, 6, 7],
        }),
        request::Body::SignGossip(pb::SignGossipRequest {
            kind: 2,
            unsigned_message: vec![0; 100],
        }),
        request::Body::SpendSpendableOutputs(pb::SpendSpendableOutputsRequest::default()),
        request::Body::SignPsbt(pb::SignPsbtRequest {
            psbt: b"psbt\xff\x01\x00".to_vec(),
        }),
        request::Body::GetWalletDescriptor(pb::GetWalletDescriptorRequest {}),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            pb::Request {
                id: i as u64,
                body: Some(b),
            }
            .encode_to_vec()
        })
        .collect()
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    match rng.index(6) {
        0 => {
            for _ in 0..1 + rng.index(4) {
                if !v.is_empty() {
                    let i = rng.index(v.len());
                    v[i] ^= 1 << rng.index(8);
                }
            }
        }
        1 => v.truncate(rng.index(v.len() + 1)),
        2 => {
            let i = rng.index(v.len() + 1);
            let junk: Vec<u8> = (0..1 + rng.index(40)).map(|_| rng.next() as u8).collect();
            v.splice(i..i, junk);
        }
        3 => {
            if !v.is_empty() {
                let i = rng.index(v.len());
                v[i] = rng.next() as u8;
            }
        }
        4 => v = (0..rng.index(300)).map(|_| rng.next() as u8).collect(),
        _ => {
            // Duplicate a slice: repeated fields and overlong lengths.
            if v.len() > 2 {
                let a = rng.index(v.len() - 1);
                let b = a + 1 + rng.index(v.len() - a - 1);
                let dup = v[a..b].to_vec();
                v.extend_from_slice(&dup);
            }
        }
    }
    v
}

#[test]
fn random_and_mutated_requests_never_panic_nor_change_state_on_error() {
    let mut p = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("channel opens");
    p.add_htlc(5_000_000, 1).expect("htlc");
    let corpus = corpus(&mut p);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut errors, mut accepted) = (0, 0);
    for _ in 0..4000 {
        let base = &corpus[rng.index(corpus.len())];
        let input = mutate(&mut rng, base);
        let before = p.alice.signer.state_digest().expect("in-process signer");
        let out = p
            .alice
            .signer
            .handle_bytes(&input)
            .expect("in-process signer");
        let reply = pb::Reply::decode(out.as_slice()).expect("the reply is always a valid Reply");
        match reply.body {
            Some(reply::Body::Error(e)) => {
                errors += 1;
                assert!(!e.message.is_empty(), "errors carry a reason");
                assert_eq!(
                    before,
                    p.alice.signer.state_digest().unwrap(),
                    "refused input {input:02x?} changed state"
                );
            }
            Some(_) => accepted += 1,
            None => panic!("empty reply"),
        }
    }
    assert!(
        errors > 1000,
        "the mutations should mostly be refused ({errors} errors)"
    );
    assert!(
        accepted > 0,
        "some requests stay valid ({accepted} accepted)"
    );
    // An oversized request is refused before decoding.
    let big = vec![0u8; lnpd_signer_core::signer::MAX_REQUEST_BYTES + 1];
    let r = pb::Reply::decode(p.alice.signer.handle_bytes(&big).unwrap().as_slice()).unwrap();
    assert!(matches!(r.body, Some(reply::Body::Error(_))));
}
