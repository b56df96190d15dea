//! The ECDH of an incoming HTLC's onion is asked for when the HTLC arrives
//! (`node/src/signer_client/onion_ecdh.rs`): here against a real
//! `lnpd-signer`, whose answer asked ahead is still there, the same as the
//! usual request's, after the signer is gone; each answer is taken once,
//! and at most a bounded number is kept.

use std::time::{Duration, Instant};

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use lnpd_node::signer_client::onion_ecdh::{EcdhAhead, MAX_AHEAD};
use lnpd_node::signer_client::SignerConnection;
use lnpd_proto::signer::{self as pb, reply, request};
use lnpd_tests::process::SignerProcess;

fn point(i: u8) -> PublicKey {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[i.max(1); 32]).expect("secret key");
    PublicKey::from_secret_key(&secp, &sk)
}

/// ECDH with the node key the usual way.
fn usual_ecdh(conn: &SignerConnection, p: &PublicKey) -> Vec<u8> {
    match conn.call(
        request::Body::Ecdh(pb::EcdhRequest {
            recipient: pb::Recipient::Node as i32,
            other_key: p.serialize().to_vec(),
            tweak: None,
        }),
        Duration::from_secs(10),
    ) {
        Ok(reply::Body::Ecdh(r)) => r.shared_secret,
        other => panic!("ECDH: {other:?}"),
    }
}

#[test]
fn an_onion_ecdh_asked_ahead_is_answered_by_the_signer_and_taken_once() {
    let mut signer = SignerProcess::init("onion-ecdh").expect("init signer");
    let addr = signer.start().expect("start signer");
    let conn = SignerConnection::start(&addr, signer.node_tls()).expect("connection");
    let (p, q) = (point(3), point(4));
    let expected = usual_ecdh(&conn, &p);
    assert_ne!(expected, usual_ecdh(&conn, &q), "two points, two secrets");

    let ahead = EcdhAhead::default();
    assert!(ahead.take(&p).is_none(), "nothing asked for yet");
    ahead.ask(&conn, p);
    ahead.ask(&conn, p);
    assert_eq!(ahead.len(), 1, "one request per point");
    let asked = Instant::now();
    while ahead.answered() < 1 {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the signer answers the ECDH asked ahead"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // The signer is gone: the answer can only be the one asked ahead.
    signer.kill9();
    let taken = ahead.take(&p).expect("the answer asked ahead");
    assert_eq!(taken.secret_bytes().to_vec(), expected);
    assert!(ahead.take(&p).is_none(), "each answer is taken once");
    assert!(ahead.is_empty());

    // Asked while the signer is down: no answer, LDK asks the usual way.
    ahead.ask(&conn, q);
    assert!(ahead.take(&q).is_none());
}

#[test]
fn at_most_a_bounded_number_of_answers_is_kept() {
    let mut signer = SignerProcess::init("onion-ecdh-bound").expect("init signer");
    let addr = signer.start().expect("start signer");
    let conn = SignerConnection::start(&addr, signer.node_tls()).expect("connection");
    let first = usual_ecdh(&conn, &point(1));
    let ahead = EcdhAhead::default();
    let n = u8::try_from(MAX_AHEAD + 1).expect("a small bound");
    for i in 1..=n {
        ahead.ask(&conn, point(i));
    }
    assert_eq!(ahead.len(), MAX_AHEAD);
    assert!(ahead.take(&point(1)).is_none(), "the oldest went first");
    let last = ahead.take(&point(n)).expect("the newest is kept");
    assert_eq!(last.secret_bytes().to_vec(), usual_ecdh(&conn, &point(n)));
    assert_ne!(first, last.secret_bytes().to_vec());
}
