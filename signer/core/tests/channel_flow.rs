//! A channel driven through two in-process signers: the protocol's order of
//! signatures and revocations is accepted, and out-of-order or altered
//! requests are refused without changing state.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use lnpd_proto::signer::{self as pb, reply as request_reply, request, ErrorKind as WireKind};
use lnpd_signer_core::call;
use lnpd_signer_core::policy::RuleId;
use lnpd_signer_core::store::MemoryStore;
use lnpd_signer_core::testing::{memory_signer, test_entropy, ChannelPair, PairOptions};
use lnpd_signer_core::{ErrorKind, PolicyConfig, Seed, Signer, SignerError};

fn pair(anchors: bool) -> ChannelPair {
    ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions {
            anchors,
            ..Default::default()
        },
    )
    .expect("channel opens")
}

fn assert_refused(res: Result<impl std::fmt::Debug, SignerError>, rule: RuleId) {
    match res {
        Err(e) => assert_eq!(e.rule, Some(rule), "refused for the wrong reason: {e}"),
        Ok(v) => panic!("expected refusal by {}, got {v:?}", rule.as_str()),
    }
}

/// Runs `f` against Alice's signer and checks her state did not change.
fn unchanged<T>(p: &mut ChannelPair, f: impl FnOnce(&mut ChannelPair) -> T) -> T {
    let before = p.alice.signer.state_digest();
    let out = f(p);
    assert_eq!(
        before,
        p.alice.signer.state_digest(),
        "a refused request changed state"
    );
    out
}

#[test]
fn payments_flow_through_both_channel_types() {
    for anchors in [false, true] {
        let mut p = pair(anchors);
        let mut pending = Vec::new();
        for i in 0..5u8 {
            pending.push(
                p.add_htlc(10_000_000 + i as u64 * 1000, i + 1)
                    .expect("add htlc"),
            );
        }
        assert_eq!(p.number, 5);
        for h in pending {
            p.settle_htlc(&h).expect("settle htlc");
        }
        assert_eq!(p.number, 10);
        assert!(p.htlcs.is_empty());
    }
}

#[test]
fn refuses_to_release_the_current_secret_before_the_next_state_is_validated() {
    let mut p = pair(true);
    p.advance().unwrap();
    // Holder #1 is the latest validated: its secret must not leave.
    let req = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 1,
    };
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, ReleaseCommitmentSecret(req) => ReleaseCommitmentSecret),
            RuleId::RevokeNextValidated,
        )
    });
    // Releasing #0 again (already revoked) gives the same secret.
    let again = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 0,
    };
    let s1 =
        call!(p.alice.signer, ReleaseCommitmentSecret(again.clone()) => ReleaseCommitmentSecret)
            .unwrap();
    let s2 =
        call!(p.alice.signer, ReleaseCommitmentSecret(again) => ReleaseCommitmentSecret).unwrap();
    assert_eq!(s1, s2);
}

#[test]
fn refuses_to_sign_a_revoked_holder_commitment() {
    let mut p = pair(true);
    p.advance().unwrap();
    let req = pb::SignHolderCommitmentRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 0,
    };
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, SignHolderCommitment(req) => Signature),
            RuleId::CommitmentHolderNotRevoked,
        )
    });
    let ok = pb::SignHolderCommitmentRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 1,
    };
    call!(p.alice.signer, SignHolderCommitment(ok) => Signature)
        .expect("latest holder commitment can be signed");
    // Having signed #1 for broadcast, its secret must never be released.
    p.htlcs.clear();
    let (req, _) = p.holder_request(true, 2).unwrap();
    call!(p.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment).unwrap();
    let rel = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 1,
    };
    assert_refused(
        call!(p.alice.signer, ReleaseCommitmentSecret(rel) => ReleaseCommitmentSecret),
        RuleId::CommitmentHolderNotRevoked,
    );
}

#[test]
fn refuses_rewound_commitment_numbers_and_skipped_ones_as_a_rollback() {
    let mut p = pair(true);
    p.advance().unwrap();
    p.advance().unwrap();
    for (n, rule) in [
        (p.number - 1, RuleId::CommitmentNumberSequence),
        (p.number + 2, RuleId::StateRollbackDetected),
    ] {
        let mut req = lnpd_signer_core::testing::next_counterparty_request(&mut p).unwrap();
        if let Some(c) = req.commitment.as_mut() {
            c.commitment_number = n;
        }
        unchanged(&mut p, |p| {
            assert_refused(
                call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
                rule,
            )
        });
    }
    // A holder commitment that skips ahead, or goes back, is refused too,
    // even when the peer signs it (in a fresh pair: the skip above froze
    // Alice's channel).
    for (n, rules) in [
        (
            -1i64,
            &[
                RuleId::CommitmentNumberSequence,
                RuleId::CommitmentHolderNotRevoked,
            ][..],
        ),
        (2, &[RuleId::StateRollbackDetected][..]),
    ] {
        let mut p = pair(true);
        p.advance().unwrap();
        p.advance().unwrap();
        let peer = lnpd_signer_core::testing::Colluder::new(2);
        let data = p
            .commitment_data(true, (p.number as i64 + n) as u64)
            .unwrap();
        let bad = peer.validation_request(&mut p, true, data).unwrap();
        let res = unchanged(
            &mut p,
            |p| call!(p.alice.signer, ValidateHolderCommitment(bad) => ValidateHolderCommitment),
        );
        let err = res.unwrap_err();
        assert!(err.rule.is_some_and(|r| rules.contains(&r)), "{err}");
    }
}

#[test]
fn refuses_a_new_counterparty_state_before_the_peer_revoked_the_one_before() {
    let mut p = pair(true);
    p.advance().unwrap();
    // Alice signs Bob's #2 (fine: #0 revoked), Bob does not revoke #1, Alice is asked for #3.
    let req = lnpd_signer_core::testing::next_counterparty_request(&mut p).unwrap();
    call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment).unwrap();
    let mut req3 = lnpd_signer_core::testing::next_counterparty_request(&mut p).unwrap();
    if let Some(c) = req3.commitment.as_mut() {
        c.commitment_number = 3;
    }
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, SignCounterpartyCommitment(req3) => SignCounterpartyCommitment),
            RuleId::CommitmentPreviousRevoked,
        )
    });
}

#[test]
fn refuses_a_holder_commitment_with_a_bad_counterparty_signature() {
    let mut p = pair(false);
    let (mut req, _) = p.holder_request(true, 1).unwrap();
    if let Some(c) = req.commitment.as_mut() {
        c.to_broadcaster_value_sat -= 1000; // not what the peer signed
        c.to_countersignatory_value_sat += 1000;
        c.transaction = p.built_transaction(true, c);
    }
    let err = unchanged(
        &mut p,
        |p| call!(p.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
}

#[test]
fn refuses_a_wrong_revocation_secret() {
    let mut p = pair(true);
    // Alice signed Bob's #1; a made-up secret for Bob's #0 is refused.
    let req = lnpd_signer_core::testing::next_counterparty_request(&mut p).unwrap();
    call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment).unwrap();
    let bad = pb::ValidateCounterpartyRevocationRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 0,
        secret: vec![7u8; 32],
    };
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, ValidateCounterpartyRevocation(bad) => ValidateCounterpartyRevocation),
            RuleId::RevokeSecretValid,
        )
    });
}

#[test]
fn refuses_changed_parameters_and_keys_id_reuse() {
    let mut p = pair(true);
    let mut setup = p.alice.setup.clone();
    setup.channel_value_sat += 1;
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, SetupChannel(setup) => SetupChannel),
            RuleId::ChannelParamsImmutable,
        )
    });
    let mut other = p.alice.setup.clone();
    other.funding_outpoint = Some(pb::OutPoint {
        txid: vec![0x22; 32],
        vout: 1,
    });
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, SetupChannel(other) => SetupChannel),
            RuleId::ChannelKeysIdUnique,
        )
    });
    // The identical set-up again is a harmless retry.
    let same = p.alice.setup.clone();
    call!(p.alice.signer, SetupChannel(same) => SetupChannel).unwrap();
}

#[test]
fn a_failed_write_changes_nothing_and_the_request_can_be_retried() {
    let seed = Seed::new(vec![9u8; 32]).unwrap();
    let mut store = MemoryStore::default();
    store.fail_next_commit = true;
    let mut s = Signer::new(
        &seed,
        bitcoin::Network::Regtest,
        PolicyConfig::default(),
        store,
        test_entropy(9),
    )
    .unwrap();
    let before = s.state_digest();
    let err =
        call!(s, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
            .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(before, s.state_digest());
    call!(s, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId).unwrap();
    assert_ne!(before, s.state_digest());
}

#[test]
fn malformed_fields_get_clear_errors() {
    let mut p = pair(true);
    let cases: Vec<request::Body> = vec![
        request::Body::Ecdh(pb::EcdhRequest {
            recipient: 0,
            other_key: vec![2; 10],
            tweak: None,
        }),
        request::Body::Ecdh(pb::EcdhRequest {
            recipient: 0,
            other_key: vec![9; 33],
            tweak: None,
        }),
        request::Body::GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest {
            channel_keys_id: vec![1; 31],
            commitment_number: 0,
        }),
        request::Body::GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest {
            channel_keys_id: vec![1; 32],
            commitment_number: 1 << 48,
        }),
        request::Body::ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: vec![5; 32],
            commitment_number: 0,
        }),
        request::Body::SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
            channel_keys_id: p.alice.keys_id.clone(),
            commitment: None,
            ..Default::default()
        }),
        request::Body::SignPsbt(pb::SignPsbtRequest {
            psbt: vec![1, 2, 3],
        }),
        request::Body::SignInvoice(pb::SignInvoiceRequest {
            recipient: 0,
            hrp: "lnbcrt".into(),
            data_u5: vec![40],
        }),
    ];
    for body in cases {
        let before = p.alice.signer.state_digest();
        let err = p
            .alice
            .signer
            .handle(body.clone())
            .expect_err("malformed request must be refused");
        assert!(
            matches!(err.kind, ErrorKind::Invalid | ErrorKind::NotFound),
            "{body:?}: {err}"
        );
        assert!(!err.message.is_empty());
        assert_eq!(before, p.alice.signer.state_digest());
    }
    let _ = WireKind::Invalid;
}

#[test]
fn an_inbound_channels_early_commitment_is_checked_at_set_up() {
    // Bob (inbound) is asked to validate his first commitment before he has
    // the channel's parameters; a forged one must make the set-up fail.
    let mut alice = memory_signer(1, PolicyConfig::default());
    let mut bob = memory_signer(2, PolicyConfig::default());
    let a_id =
        call!(alice, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
            .unwrap()
            .channel_keys_id;
    let b_id =
        call!(bob, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
            .unwrap()
            .channel_keys_id;
    let a_keys = call!(alice, GetChannelPublicKeys(pb::GetChannelPublicKeysRequest { channel_keys_id: a_id }) => ChannelPublicKeys).unwrap();
    let point = call!(bob, GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest { channel_keys_id: b_id.clone(), commitment_number: 0 }) => GetPerCommitmentPoint).unwrap();
    let parked = call!(bob, ValidateHolderCommitment(pb::ValidateHolderCommitmentRequest {
        channel_keys_id: b_id.clone(),
        commitment: Some(pb::CommitmentData {
            commitment_number: 0,
            feerate_per_kw: 1000,
            to_broadcaster_value_sat: 0,
            to_countersignatory_value_sat: 998_216,
            htlcs: vec![],
            per_commitment_point: point.per_commitment_point,
            transaction: vec![],
        }),
        counterparty_signature: vec![1; 64], // not Alice's signature
        htlc_signatures: vec![],
        outbound_htlc_preimages: vec![],
        release_previous: false,
    }) => ValidateHolderCommitment)
    .unwrap();
    assert!(parked.parked);
    let before = bob.state_digest();
    let setup = pb::SetupChannelRequest {
        channel_keys_id: b_id,
        is_outbound: false,
        channel_value_sat: 1_000_000,
        funding_outpoint: Some(pb::OutPoint {
            txid: vec![0x11; 32],
            vout: 0,
        }),
        channel_type: pb::ChannelType::AnchorsZeroFeeHtlcTx as i32,
        holder_selected_contest_delay: 144,
        counterparty_selected_contest_delay: 144,
        holder_dust_limit_sat: 546,
        counterparty_dust_limit_sat: 546,
        counterparty_keys: Some(a_keys),
        ..Default::default()
    };
    let err = call!(bob, SetupChannel(setup) => SetupChannel).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert_eq!(
        before,
        bob.state_digest(),
        "a failed set-up must not record the channel"
    );
    // Nothing can be signed for a channel that was never set up.
    let req = pb::SignHolderCommitmentRequest {
        channel_keys_id: vec![0; 32],
        commitment_number: 0,
    };
    assert!(call!(bob, SignHolderCommitment(req) => Signature).is_err());
}

#[test]
fn refuses_out_of_order_revocations_and_keeps_every_older_secret() {
    // Two identical channels (same seeds, same deterministic ids): the second
    // runs ahead so the test holds Bob's later secrets, as a cheating peer would.
    // Alice pushed Bob a balance at open: his commitments have a to_local.
    let pushed = || {
        ChannelPair::open(
            Box::new(memory_signer(
                1,
                PolicyConfig {
                    allow_push: true,
                    ..Default::default()
                },
            )),
            Box::new(memory_signer(2, PolicyConfig::default())),
            PairOptions {
                push_msat: 100_000_000,
                ..Default::default()
            },
        )
        .expect("channel opens")
    };
    let mut p = pushed();
    let mut ahead = pushed();
    for _ in 0..3 {
        ahead.advance().unwrap();
    }
    let bob_secret = |ahead: &mut ChannelPair, n: u64| {
        call!(ahead.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest { channel_keys_id: ahead.bob.keys_id.clone(), commitment_number: n }) => ReleaseCommitmentSecret).unwrap().secret
    };
    p.advance().unwrap(); // Bob's #0 revoked; Alice signed Bob's #1
    let req = lnpd_signer_core::testing::next_counterparty_request(&mut p).unwrap();
    call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment).unwrap(); // Bob's #2
                                                                                                   // Revoking #2 before #1 would overwrite what #1 is derived from: refused.
    let skip = pb::ValidateCounterpartyRevocationRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 2,
        secret: bob_secret(&mut ahead, 2),
    };
    unchanged(&mut p, |p| {
        assert_refused(
            call!(p.alice.signer, ValidateCounterpartyRevocation(skip) => ValidateCounterpartyRevocation),
            RuleId::RevokeSecretValid,
        )
    });
    // In order it is accepted, and a justice signature for #0 is still possible.
    let one = pb::ValidateCounterpartyRevocationRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 1,
        secret: bob_secret(&mut ahead, 1),
    };
    call!(p.alice.signer, ValidateCounterpartyRevocation(one) => ValidateCounterpartyRevocation)
        .unwrap();
    // Bob's #0 (revoked): its to_local is Alice's to take.
    let zero = p.commitment_data(false, 0).unwrap();
    let zero_tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&zero.transaction).unwrap();
    let vout = zero_tx
        .output
        .iter()
        .position(|o| o.value.to_sat() == 100_000)
        .expect("Bob's to_local") as u32;
    let ours = call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script)
        .unwrap()
        .script_pubkey;
    let tx = pb::UnsignedTx {
        version: 2,
        lock_time: 0,
        inputs: vec![pb::TxIn {
            previous_output: Some(pb::OutPoint {
                txid: bitcoin::hashes::Hash::to_byte_array(zero_tx.compute_txid()).to_vec(),
                vout,
            }),
            sequence: 0xffff_fffd,
        }],
        outputs: vec![pb::TxOut {
            value_sat: 99_000,
            script_pubkey: ours,
        }],
    };
    let justice = pb::SignJusticeRevokedOutputRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        tx: Some(tx),
        input_index: 0,
        amount_sat: 100_000,
        per_commitment_secret: bob_secret(&mut ahead, 0),
        previous_txs: vec![zero.transaction],
        ..Default::default()
    };
    call!(p.alice.signer, SignJusticeRevokedOutput(justice) => Signature)
        .expect("the secret of #0 is still known");
}

#[test]
fn never_releases_a_secret_at_or_above_a_commitment_signed_for_broadcast() {
    let mut p = pair(true);
    p.advance().unwrap();
    let sign = |p: &mut ChannelPair, n: u64| call!(p.alice.signer, SignHolderCommitment(pb::SignHolderCommitmentRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: n }) => Signature);
    let release = |p: &mut ChannelPair, n: u64| call!(p.alice.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: n }) => ReleaseCommitmentSecret);
    sign(&mut p, 1).unwrap();
    let (req, _) = p.holder_request(true, 2).unwrap();
    call!(p.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment).unwrap();
    sign(&mut p, 2).unwrap();
    // #1 was signed for broadcast first; signing #2 later must not make #1's
    // secret (revoking it) releasable.
    assert_refused(release(&mut p, 1), RuleId::CommitmentHolderNotRevoked);
    release(&mut p, 0).expect("#0 was revoked before");
}

#[test]
fn refuses_to_push_value_out_of_a_channel_we_fund_unless_allowed() {
    let push = PairOptions {
        push_msat: 5_000_000,
        ..Default::default()
    };
    let refused = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        push.clone(),
    );
    assert_refused(refused.map(|_| ()), RuleId::OnchainNoPush);
    let allowed = PolicyConfig {
        allow_push: true,
        ..Default::default()
    };
    ChannelPair::open(
        Box::new(memory_signer(1, allowed)),
        Box::new(memory_signer(2, PolicyConfig::default())),
        push,
    )
    .expect("allowed by configuration");
}

#[test]
fn validation_can_revoke_the_previous_state_in_the_same_write() {
    let mut p = pair(true);
    p.advance().unwrap();
    // Holder #2 validated with release_previous: #1's secret comes back,
    // the same one ReleaseCommitmentSecret gives, and #1 is revoked.
    let (mut req, _) = p.holder_request(true, 2).unwrap();
    req.release_previous = true;
    let r =
        call!(p.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment).unwrap();
    let release = |p: &mut ChannelPair, n: u64| call!(p.alice.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: n }) => ReleaseCommitmentSecret);
    assert_eq!(r.previous_secret, release(&mut p, 1).unwrap().secret);
    call!(p.bob.signer, ValidateCounterpartyRevocation(pb::ValidateCounterpartyRevocationRequest { channel_keys_id: p.bob.keys_id.clone(), commitment_number: 1, secret: r.previous_secret.clone() }) => ValidateCounterpartyRevocation)
        .expect("the peer accepts the secret");
    let point = call!(p.alice.signer, GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: 4 }) => GetPerCommitmentPoint).unwrap();
    assert_eq!(r.upcoming_per_commitment_point, point.per_commitment_point);
    assert_refused(
        call!(p.alice.signer, SignHolderCommitment(pb::SignHolderCommitmentRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: 1 }) => Signature),
        RuleId::CommitmentHolderNotRevoked,
    );
    // #2 signed for broadcast: validating #3 with release_previous keeps #2.
    call!(p.alice.signer, SignHolderCommitment(pb::SignHolderCommitmentRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: 2 }) => Signature).unwrap();
    let (mut req, _) = p.holder_request(true, 3).unwrap();
    req.release_previous = true;
    let r =
        call!(p.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment).unwrap();
    assert!(
        r.previous_secret.is_empty(),
        "no secret of a state signed for broadcast"
    );
    assert_refused(release(&mut p, 2), RuleId::CommitmentHolderNotRevoked);
    // The reply may carry a secret: its Debug never shows it.
    assert_eq!(
        format!("{r:?}"),
        "ValidateHolderCommitmentReply { <redacted> }"
    );
}

/// Alice's signer kept by the test too, to break her store on purpose.
fn pair_with_shared_alice() -> (ChannelPair, lnpd_signer_core::testing::SharedSigner) {
    pair_with_policy(PolicyConfig::default())
}

#[test]
fn a_batch_applies_in_order_with_one_write() {
    let (mut p, _alice) = pair_with_shared_alice();
    p.advance().unwrap();
    let (revocation, next) = p.revocation_then_next().unwrap();
    // Alone, the signature is refused: Bob has not revoked #1 yet.
    unchanged(&mut p, |p| {
        assert_refused(
            p.alice.signer.handle(next.clone()),
            RuleId::CommitmentPreviousRevoked,
        )
    });
    // In one batch after the revocation, it goes through.
    let ping = request::Body::Ping(pb::PingRequest { nonce: vec![7] });
    let not_batchable = request::Body::NewChannelKeysId(pb::NewChannelKeysIdRequest::default());
    let results = p
        .alice
        .signer
        .handle_batch(vec![revocation, next, ping, not_batchable])
        .unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(
            results[1],
            Ok(request_reply::Body::SignCounterpartyCommitment(_))
        ),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Ok(request_reply::Body::Ping(r)) if r.nonce == vec![7]),
        "{:?}",
        results[2]
    );
    assert_eq!(results[3].as_ref().unwrap_err().kind, ErrorKind::Invalid);
}

#[test]
fn a_batch_whose_write_fails_leaves_no_trace() {
    let (mut p, alice) = pair_with_shared_alice();
    p.advance().unwrap();
    let (revocation, next) = p.revocation_then_next().unwrap();
    let before = alice.borrow().state_digest();
    alice.borrow_mut().store_mut().fail_next_commit = true;
    let results = p
        .alice
        .signer
        .handle_batch(vec![revocation.clone(), next.clone()])
        .unwrap();
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.kind == ErrorKind::Unavailable)));
    assert_eq!(
        before,
        alice.borrow().state_digest(),
        "nothing of the batch stayed"
    );
    // The same batch again, with a working store, goes through.
    let results = p.alice.signer.handle_batch(vec![revocation, next]).unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_ne!(before, alice.borrow().state_digest());
}

#[test]
fn a_batch_holds_at_most_sixteen_requests() {
    let mut p = pair(true);
    let ping = request::Body::Ping(pb::PingRequest { nonce: vec![1] });
    let results = p.alice.signer.handle_batch(vec![ping; 17]).unwrap();
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.kind == ErrorKind::Invalid)));
}

fn pair_with_policy(
    policy: PolicyConfig,
) -> (ChannelPair, lnpd_signer_core::testing::SharedSigner) {
    let alice = std::rc::Rc::new(std::cell::RefCell::new(memory_signer(1, policy)));
    let p = ChannelPair::open(
        Box::new(alice.clone()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("channel opens");
    (p, alice)
}

/// Alice pays an HTLC and it is settled; a refusal changes nothing.
fn try_add(p: &mut ChannelPair, amount_msat: u64, tag: u8) -> Result<(), SignerError> {
    let h = p.offer(amount_msat, tag)?;
    p.settle_htlc(&h)
}

#[test]
fn payment_controls_cap_single_payments_and_the_rolling_total() {
    let (mut p, alice) = pair_with_policy(PolicyConfig {
        max_payment_sat: Some(30_000),
        velocity_limit_sat: Some(50_000),
        velocity_window_secs: 3600,
        ..Default::default()
    });
    alice.borrow_mut().set_time(1_000_000);
    try_add(&mut p, 25_000_000, 1).expect("under both limits");
    assert_refused(try_add(&mut p, 31_000_000, 2), RuleId::PaymentMax);
    // 25k + 26k within the hour is above 50k.
    assert_refused(try_add(&mut p, 26_000_000, 3), RuleId::PaymentVelocity);
    // An hour later the window has moved on.
    alice.borrow_mut().set_time(1_000_000 + 3601);
    try_add(&mut p, 26_000_000, 4).expect("the window moved");
}

#[test]
fn merchant_mode_never_sends() {
    let (mut p, _alice) = pair_with_policy(PolicyConfig {
        merchant_no_sends: true,
        ..Default::default()
    });
    assert_refused(try_add(&mut p, 10_000_000, 1), RuleId::MerchantNoSends);
    p.advance().expect("an update that sends nothing");
}

/// Alice, balancing her routing, with two channels sharing her signer: one
/// with Bob, one with Carol.
fn routing_node() -> (ChannelPair, ChannelPair) {
    let alice = std::rc::Rc::new(std::cell::RefCell::new(memory_signer(
        1,
        PolicyConfig {
            routing_balanced: true,
            ..Default::default()
        },
    )));
    let open = |peer: u8| {
        ChannelPair::open(
            Box::new(alice.clone()),
            Box::new(memory_signer(peer, PolicyConfig::default())),
            PairOptions::default(),
        )
        .expect("channel opens")
    };
    (open(2), open(3))
}

#[test]
fn forwards_must_be_covered_by_an_incoming_htlc() {
    // Alice's signer has two channels: Bob pays Carol through Alice.
    let (mut with_bob, mut with_carol) = routing_node();
    // Bob gets a balance (Alice pays him), then offers Alice 50k sat for hash 9.
    try_add(&mut with_bob, 200_000_000, 1).unwrap();
    with_bob.add_htlc_from_bob(50_000_000, 9).unwrap();
    // Until the channel with Bob is proven funded, his HTLC covers nothing.
    assert_refused(with_carol.offer(49_000_000, 9), RuleId::RoutingBalanced);
    let mut chain = lnpd_signer_core::testing::TestChain::default();
    with_bob.prove_funding(&mut chain, 3).unwrap();
    // Forwarding more than came in is refused; as much or less goes out.
    assert_refused(with_carol.offer(60_000_000, 9), RuleId::RoutingBalanced);
    with_carol.offer(30_000_000, 9).expect("a covered forward");
    // What is left of the incoming HTLC covers what is left, once.
    assert_refused(with_carol.offer(30_000_000, 9), RuleId::RoutingBalanced);
    with_carol
        .offer(20_000_000, 9)
        .expect("the rest of the cover");
}

#[test]
fn an_incoming_htlc_close_to_expiry_covers_nothing() {
    let (mut with_bob, mut with_carol) = routing_node();
    try_add(&mut with_bob, 200_000_000, 1).unwrap();
    let incoming = with_bob.add_htlc_from_bob(50_000_000, 9).unwrap();
    let mut chain = lnpd_signer_core::testing::TestChain::default();
    with_bob.prove_funding(&mut chain, 3).unwrap();
    // The chain reaches ten blocks before the incoming HTLC expires: no
    // time left to claim it if the forward is paid.
    let to = incoming.cltv_expiry - 10 - chain.height();
    chain.mine_empty(to as usize);
    chain.feed(with_bob.alice.signer.as_mut()).unwrap();
    assert_refused(with_carol.offer(30_000_000, 9), RuleId::RoutingBalanced);
}

#[test]
fn a_funding_older_than_the_window_is_proven_with_the_headers_after_it() {
    let mut p = pair(true);
    let mut chain = lnpd_signer_core::testing::TestChain::default();
    chain.mine(core::slice::from_ref(&p.funding));
    chain.mine_empty(300);
    chain.feed(p.alice.signer.as_mut()).unwrap();
    let txid = p.funding.compute_txid();
    let mut req = pb::ProveFundingRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        funding_transaction: bitcoin::consensus::serialize(&p.funding),
        merkle_block: chain.merkle_block(txid).unwrap(),
        later_headers: vec![],
    };
    // The block left the signer's window of headers.
    let err = call!(p.alice.signer, ProveFunding(req.clone()) => ProveFunding).unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition, "{err}");
    // With the headers from it to the window, each with its work.
    let window_first = chain.height() - 143;
    let later: Vec<Vec<u8>> = chain.headers[2..window_first as usize]
        .iter()
        .map(bitcoin::consensus::serialize)
        .collect();
    let mut forged = later.clone();
    let mut h: bitcoin::block::Header = bitcoin::consensus::deserialize(&forged[5]).unwrap();
    while h.validate_pow(h.target()).is_ok() {
        h.nonce += 1;
    }
    forged[5] = bitcoin::consensus::serialize(&h);
    req.later_headers = forged;
    let err = call!(p.alice.signer, ProveFunding(req.clone()) => ProveFunding).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    req.later_headers = later;
    let proven = call!(p.alice.signer, ProveFunding(req) => ProveFunding).unwrap();
    assert_eq!(proven.height, 1);
    assert_eq!(proven.confirmations, chain.height());
}
