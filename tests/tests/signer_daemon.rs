//! The `lnpd-signer` daemon as a real process: mutual TLS is enforced, and
//! its state survives `kill -9` between requests.

use lnpd_proto::client::SignerTls;
use lnpd_proto::signer::{self as pb, request};
use lnpd_signer_core::call;
use lnpd_signer_core::testing::{memory_signer, ChannelPair, PairOptions};
use lnpd_signer_core::{PolicyConfig, RuleId};
use lnpd_tests::{RemoteSigner, SignerProcess};

fn ping(s: &mut RemoteSigner) -> Result<(), lnpd_signer_core::SignerError> {
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
    let mut other = lnpd_signer_core::testing::next_counterparty_request(&mut pair).unwrap();
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
    let log = alice.log();
    assert!(
        log.contains("revoke-next-validated") && log.contains("release_commitment_secret"),
        "the refusal is logged with its rule id and operation: {log}"
    );
    // ... and in the audit log, readable while the daemon runs.
    let audit = std::process::Command::new(lnpd_tests::signer_bin())
        .args(["log", "--json", "--last", "5", "--data-dir"])
        .arg(alice.data_dir())
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("\"rule\":\"revoke-next-validated\"")
            && audit.contains("release_commitment_secret"),
        "audit log: {audit}"
    );

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
    // Another #n, countersigned by the peer (a colluding one signs anything).
    let _ = req;
    let mut other_n = pair.commitment_data(true, n).unwrap();
    other_n.feerate_per_kw += 1;
    let replay = lnpd_signer_core::testing::Colluder::new(2)
        .validation_request(&mut pair, true, other_n)
        .unwrap();
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

#[test]
fn init_restores_the_same_keys_from_the_mnemonic_and_never_overwrites_a_seed() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = lnpd_tests::signer_bin();
    let dir = lnpd_tests::TempDir::new("restore");
    let pass = dir.path.join("pass");
    std::fs::write(&pass, "pw").unwrap();
    let mnemonic = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art";
    let restore = |sub: &str| {
        let mut child = Command::new(&bin)
            .args([
                "init",
                "--restore",
                "--network",
                "regtest",
                "--kdf-memory-kib",
                "8192",
            ])
            .arg("--data-dir")
            .arg(dir.path.join(sub))
            .arg("--passphrase-file")
            .arg(&pass)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // init may refuse (existing seed) and exit before reading: a broken pipe is fine.
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{mnemonic}\n").as_bytes());
        child.wait_with_output().unwrap()
    };
    let node_id = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("node id:").map(|s| s.trim().to_string()))
            .expect("node id printed")
    };
    let a = restore("a");
    let b = restore("b");
    assert!(
        a.status.success() && b.status.success(),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(node_id(&a), node_id(&b));
    assert!(
        !String::from_utf8_lossy(&a.stdout).contains("abandon"),
        "a restored mnemonic is not echoed"
    );
    // `info` decrypts the same seed and shows the same node id.
    let info = Command::new(&bin)
        .args(["info", "--json"])
        .arg("--data-dir")
        .arg(dir.path.join("a"))
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains(&node_id(&a)));
    // A second init over an existing seed is refused and leaves it intact.
    let seed_before = std::fs::read(dir.path.join("a/seed.enc")).unwrap();
    let again = restore("a");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        seed_before,
        std::fs::read(dir.path.join("a/seed.enc")).unwrap()
    );
    // A wrong passphrase is a clear error, not a panic.
    std::fs::write(&pass, "wrong").unwrap();
    let bad = Command::new(&bin)
        .args(["info"])
        .arg("--data-dir")
        .arg(dir.path.join("a"))
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong passphrase"));
}

#[test]
fn a_batch_over_grpc_is_durable_before_it_answers() {
    let mut alice = SignerProcess::init("batch").unwrap();
    alice.start().unwrap();
    let mut pair = ChannelPair::open(
        Box::new(alice.client().unwrap()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    pair.advance().unwrap();
    let (revocation, next) = pair.revocation_then_next().unwrap();
    let results = pair
        .alice
        .signer
        .handle_batch(vec![revocation, next.clone()])
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    // Killed right after the reply: the revocation and the signature were
    // both on disk, so the same signature is given again (not refused).
    alice.kill9();
    alice.start().unwrap();
    pair.alice.signer = Box::new(alice.client().unwrap());
    pair.alice
        .signer
        .handle(next)
        .expect("the batch's state survived the kill");
}

/// Errors reach the node the same way alone and in a batch: the kind, the
/// rule and the text the signer gave, mapped once (`SignerError::from_wire`
/// on the node's side of `Call` and `Batch`).
#[test]
fn the_node_reads_the_same_error_alone_and_in_a_batch() {
    use lnpd_node::signer_client::{CallError, GrpcTransport, SignerTransport};
    use lnpd_signer_core::ErrorKind;
    use std::time::Duration;

    let mut signer = SignerProcess::init("errors").unwrap();
    let addr = signer.start().unwrap();
    let mut node = GrpcTransport::new(&addr, signer.node_tls()).unwrap();
    node.connect().unwrap();
    let t = Duration::from_secs(10);
    // The greeting first: the daemon answers nothing else before it.
    node.call(
        request::Body::Info(pb::InfoRequest {
            protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
            ..Default::default()
        }),
        t,
    )
    .unwrap();
    let unknown = || {
        request::Body::ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: vec![7; 32],
            commitment_number: 0,
        })
    };
    let kind = |r: Result<pb::reply::Body, CallError>| match r {
        Err(CallError::Refused(e)) => (e.kind, e.rule),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Alone, then second in a batch behind a ping.
    assert_eq!(kind(node.call(unknown(), t)), (ErrorKind::NotFound, None));
    let mut batch = node
        .call_batch(
            vec![
                request::Body::Ping(pb::PingRequest { nonce: vec![1] }),
                unknown(),
            ],
            t,
        )
        .unwrap();
    assert_eq!(kind(batch.pop().unwrap()), (ErrorKind::NotFound, None));
    assert!(matches!(batch.pop(), Some(Ok(pb::reply::Body::Ping(_)))));

    // A request that may not be batched: refused as invalid, not run.
    let batch = node
        .call_batch(
            vec![request::Body::GetNodeKeys(pb::GetNodeKeysRequest {})],
            t,
        )
        .unwrap();
    assert_eq!(
        kind(batch.into_iter().next().unwrap()),
        (ErrorKind::Invalid, None)
    );
}

/// A node of another protocol version is told so, with both versions.
#[test]
fn a_node_of_another_protocol_version_gets_a_clear_error() {
    let mut signer = SignerProcess::init("version").unwrap();
    signer.start().unwrap();
    let mut client = signer.client().unwrap();
    let old = lnpd_proto::SIGNER_PROTOCOL_VERSION - 1;
    let err = client
        .call(request::Body::Info(pb::InfoRequest {
            protocol_version: old,
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(err.kind, lnpd_signer_core::ErrorKind::FailedPrecondition);
    let want = format!(
        "this signer speaks protocol version {}, the node {old}",
        lnpd_proto::SIGNER_PROTOCOL_VERSION
    );
    assert!(err.message.contains(&want), "{err}");
    match client.call(request::Body::Info(pb::InfoRequest {
        protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
        ..Default::default()
    })) {
        Ok(pb::reply::Body::Info(i)) => {
            assert_eq!(i.protocol_version, lnpd_proto::SIGNER_PROTOCOL_VERSION)
        }
        other => panic!("the same version is served: {other:?}"),
    }
}

/// A daemon just started answers nothing but the node's greeting (`Info`
/// with the highest state counter the node saw): a signer restarted on an
/// older state is caught before its first signature. Nothing is written
/// before the greeting; after it, the same connection is served.
#[test]
fn signs_nothing_before_the_nodes_greeting() {
    use lnpd_signer_core::testing::SignerHandle;
    use lnpd_signer_core::ErrorKind;

    let mut signer = SignerProcess::init("greeting").unwrap();
    let addr = signer.start().unwrap();
    let info = |c: &mut RemoteSigner| c.info().unwrap();
    let mut last = None;
    for round in 0..2 {
        let mut c = RemoteSigner::connect_ungreeted(&addr, &signer.node_tls()).unwrap();
        let waits = |r: Result<pb::reply::Body, lnpd_signer_core::SignerError>| {
            r.is_err_and(|e| {
                e.kind == ErrorKind::Unavailable
                    && e.message.contains(lnpd_proto::AWAITING_GREETING)
            })
        };
        assert!(waits(c.handle(request::Body::NewChannelKeysId(
            pb::NewChannelKeysIdRequest::default()
        ))));
        assert!(waits(c.handle(request::Body::Ping(pb::PingRequest {
            nonce: vec![1]
        }))));
        let batch = c.handle_batch(vec![request::Body::NewChannelKeysId(
            pb::NewChannelKeysIdRequest::default(),
        )]);
        assert!(match batch {
            Err(e) => waits(Err(e)),
            Ok(results) => results.into_iter().all(waits),
        });
        // The greeting: nothing was written before it (the counter is the
        // one the daemon had when it stopped), and signing follows.
        let greeted = info(&mut c);
        if let Some(last) = last {
            assert_eq!(greeted.state_counter, last, "written before the greeting");
        }
        call!(c, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
            .expect("served once greeted");
        let after = info(&mut c).state_counter;
        assert!(
            after > greeted.state_counter,
            "round {round}: nothing written"
        );
        last = Some(after);
        // Started again: it waits for the greeting again.
        signer.kill9();
        signer.restart().unwrap();
    }
}

/// Requests of several channels that arrive together are made durable in
/// one write (group commit), each answered as if alone: a refused one
/// refuses only itself, with its rule, and changes nothing; the others'
/// state was on disk before their replies left.
#[test]
fn concurrent_channels_share_one_durable_write() {
    use lnpd_signer_core::testing::SignerHandle;

    let mut alice = SignerProcess::init("group").unwrap();
    let addr = alice.start().unwrap();
    let mut pairs: Vec<ChannelPair> = (0..4u8)
        .map(|i| {
            let mut p = ChannelPair::open(
                Box::new(alice.client().unwrap()),
                Box::new(memory_signer(20 + i, PolicyConfig::default())),
                PairOptions::default(),
            )
            .unwrap();
            p.advance().unwrap();
            p
        })
        .collect();
    let requests: Vec<_> = pairs
        .iter_mut()
        .map(|p| lnpd_signer_core::testing::next_counterparty_request(p).unwrap())
        .collect();
    // Channel 0's request moves our balance to the peer without an HTLC:
    // refused alone.
    let mut taking = requests[0].clone();
    if let Some(c) = taking.commitment.as_mut() {
        c.to_countersignatory_value_sat -= 100_000;
        c.to_broadcaster_value_sat += 100_000;
        c.transaction = pairs[0].built_transaction(false, c);
    }
    let mut together = RemoteSigner::connect(&addr, &alice.node_tls()).unwrap();
    let counter = |c: &mut RemoteSigner| c.info().unwrap().state_counter;
    let before = counter(&mut together);
    let mut bodies = vec![request::Body::SignCounterpartyCommitment(taking)];
    bodies.extend(
        requests[1..]
            .iter()
            .cloned()
            .map(request::Body::SignCounterpartyCommitment),
    );
    let results = together.call_together(bodies);
    let after = counter(&mut together);
    match &results[0] {
        Err(e) => assert_eq!(e.rule, Some(RuleId::CommitmentBalanceConserved), "{e:?}"),
        Ok(r) => panic!("a commitment taking our balance was signed: {r:?}"),
    }
    assert!(results[1..].iter().all(|r| r.is_ok()), "{results:?}");
    // Three signatures, each needing a write: fewer writes than that.
    assert!(
        after > before && after - before < 3,
        "three requests took {} durable writes",
        after - before
    );
    // Killed right after the replies: the three states were on disk (the
    // same commitments are signed again, not refused as a rewind), and
    // channel 0 is where it was (its next commitment is signed).
    alice.kill9();
    let addr = alice.start().unwrap();
    let mut again = RemoteSigner::connect(&addr, &alice.node_tls()).unwrap();
    for (i, req) in requests.into_iter().enumerate() {
        let signed = call!(again, SignCounterpartyCommitment(req) => SignCounterpartyCommitment);
        assert!(signed.is_ok(), "channel {i}: {signed:?}");
    }
}
