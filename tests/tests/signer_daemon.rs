//! The `lnpd-signer` daemon as a real process: mutual TLS is enforced, and
//! its state survives `kill -9` between requests.

use lnpd_proto::client::SignerTls;
use lnpd_proto::signer::{self as pb, request};
use lnpd_signer::call;
use lnpd_signer::testing::{memory_signer, ChannelPair, PairOptions};
use lnpd_signer::{PolicyConfig, RuleId};
use lnpd_tests::{RemoteSigner, SignerProcess};

fn ping(s: &mut RemoteSigner) -> Result<(), tonic::Status> {
    s.call(request::Body::Ping(pb::PingRequest { nonce: vec![1] }))
        .map(|_| ())
}

/// Whether a client with these TLS settings is kept out (at the handshake or its first call).
fn refused(addr: &str, tls: &SignerTls) -> bool {
    match RemoteSigner::connect(addr, tls) {
        Err(_) => true,
        Ok(mut c) => ping(&mut c).is_err(),
    }
}

#[test]
fn only_clients_with_a_certificate_from_the_signers_ca_are_served() {
    let mut signer = SignerProcess::init("mtls").unwrap();
    let addr = signer.start().unwrap();
    let other = SignerProcess::init("mtls-other").unwrap();

    // The node's certificate: served.
    let mut good = signer.client().unwrap();
    ping(&mut good).expect("the node's certificate is accepted");

    // No client certificate: the handshake or the first call fails.
    let no_cert = SignerTls {
        client_cert: None,
        client_key: None,
        ..signer.node_tls()
    };
    assert!(
        refused(&addr, &no_cert),
        "a client without certificate was served"
    );

    // A certificate issued by another CA: refused.
    let foreign = SignerTls {
        ca_cert: signer.node_tls().ca_cert,
        ..other.node_tls()
    };
    assert!(
        refused(&addr, &foreign),
        "a certificate from another CA was served"
    );

    // A client that does not trust the signer's CA does not talk to it either.
    assert!(
        refused(&addr, &other.node_tls()),
        "a client trusting another CA connected"
    );

    // Plain TCP without TLS gets nothing either.
    let plain = std::net::TcpStream::connect(&addr).unwrap();
    drop(plain);
    ping(&mut good).expect("the server is still serving the node");
}

#[test]
fn state_survives_kill_9_between_requests() {
    let mut alice = SignerProcess::init("kill9").unwrap();
    alice.start().unwrap();
    let mut pair = ChannelPair::open(
        Box::new(alice.client().unwrap()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    let h1 = pair.add_htlc(20_000_000, 1).unwrap();

    // Kill between two steps of an update: Bob's side moved, Alice's not yet.
    let (req, _) = pair.holder_request(false, pair.number + 1).unwrap();
    call!(pair.bob.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment).unwrap();
    alice.kill9();
    alice.start().unwrap();
    pair.alice.signer = Box::new(alice.client().unwrap());
    // Alice remembers she signed Bob's #2: a different #2 is refused ...
    let mut other = lnpd_signer::testing::next_counterparty_request(&mut pair).unwrap();
    if let Some(c) = other.commitment.as_mut() {
        c.commitment_number = pair.number + 1;
        c.feerate_per_kw += 1;
    }
    let err =
        call!(pair.alice.signer, SignCounterpartyCommitment(other) => SignCounterpartyCommitment)
            .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::CommitmentNumberSequence), "{err}");

    // ... and she will not release the secret of her latest state.
    let current = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: pair.alice.keys_id.clone(),
        commitment_number: pair.number,
    };
    let err = call!(pair.alice.signer, ReleaseCommitmentSecret(current.clone()) => ReleaseCommitmentSecret).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::RevokeNextValidated), "{err}");

    // Finish the interrupted update by hand, then kill again right after the revocation.
    let n = pair.number;
    let secret = call!(pair.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest { channel_keys_id: pair.bob.keys_id.clone(), commitment_number: n }) => ReleaseCommitmentSecret).unwrap().secret;
    call!(pair.alice.signer, ValidateCounterpartyRevocation(pb::ValidateCounterpartyRevocationRequest { channel_keys_id: pair.alice.keys_id.clone(), commitment_number: n, secret }) => ValidateCounterpartyRevocation).unwrap();
    let (req, _) = pair.holder_request(true, n + 1).unwrap();
    call!(pair.alice.signer, ValidateHolderCommitment(req.clone()) => ValidateHolderCommitment)
        .unwrap();
    let released = call!(pair.alice.signer, ReleaseCommitmentSecret(current.clone()) => ReleaseCommitmentSecret).unwrap().secret;
    alice.kill9();
    alice.start().unwrap();
    pair.alice.signer = Box::new(alice.client().unwrap());

    // After restart: the same secret again (it is already out), never a second state #n.
    let again =
        call!(pair.alice.signer, ReleaseCommitmentSecret(current) => ReleaseCommitmentSecret)
            .unwrap()
            .secret;
    assert_eq!(released, again);
    let err = call!(pair.alice.signer, SignHolderCommitment(pb::SignHolderCommitmentRequest { channel_keys_id: pair.alice.keys_id.clone(), commitment_number: n }) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::CommitmentHolderNotRevoked), "{err}");
    let mut replay = req;
    if let Some(c) = replay.commitment.as_mut() {
        c.commitment_number = n;
        c.per_commitment_point.clear();
    }
    let err =
        call!(pair.alice.signer, ValidateHolderCommitment(replay) => ValidateHolderCommitment)
            .unwrap_err();
    assert!(
        matches!(
            err.rule,
            Some(RuleId::CommitmentHolderNotRevoked | RuleId::CommitmentNumberSequence)
        ),
        "{err}"
    );
    let secret = call!(pair.alice.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest { channel_keys_id: pair.alice.keys_id.clone(), commitment_number: n }) => ReleaseCommitmentSecret).unwrap().secret;
    call!(pair.bob.signer, ValidateCounterpartyRevocation(pb::ValidateCounterpartyRevocationRequest { channel_keys_id: pair.bob.keys_id.clone(), commitment_number: n, secret }) => ValidateCounterpartyRevocation).unwrap();
    pair.number = n + 1;

    // The channel continues: settle the HTLC and add more, with one more kill in between.
    pair.settle_htlc(&h1).unwrap();
    alice.kill9();
    alice.start().unwrap();
    pair.alice.signer = Box::new(alice.client().unwrap());
    let h2 = pair.add_htlc(1_000_000, 2).unwrap();
    pair.settle_htlc(&h2).unwrap();
    assert!(alice.log().contains("listening on"));
}
