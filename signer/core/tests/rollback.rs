//! Anti-rollback: a signer reopened on an older copy of its state refuses to
//! sign from it (`state-rollback-detected`), whether the evidence is the
//! node's counter or a channel ahead of its record, and writes nothing.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::rc::Rc;

use lnpd_proto::signer as pb;
use lnpd_signer_core::call;
use lnpd_signer_core::policy::RuleId;
use lnpd_signer_core::store::{MemoryStore, Store};
use lnpd_signer_core::testing::{
    memory_signer, next_counterparty_request, test_entropy, ChannelPair, PairOptions, SharedSigner,
};
use lnpd_signer_core::{PolicyConfig, Seed, Signer, SignerError};

/// Alice's signer reopened on `store` (same seed and entropy as `memory_signer(1, ..)`).
fn reopen(store: MemoryStore) -> Signer<MemoryStore> {
    Signer::new(
        &Seed::new(vec![1; 32]).unwrap(),
        bitcoin::Network::Regtest,
        PolicyConfig::default(),
        store,
        test_entropy(1),
    )
    .unwrap()
}

/// A channel that moved on after a copy of Alice's state was taken: the
/// pair, Alice's signer, the old copy and the latest.
fn advanced_after_copy() -> (ChannelPair, SharedSigner, MemoryStore, MemoryStore) {
    let alice = Rc::new(RefCell::new(memory_signer(1, PolicyConfig::default())));
    let mut p = ChannelPair::open(
        Box::new(alice.clone()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    p.advance().unwrap();
    let old = alice.borrow().store().clone();
    p.advance().unwrap();
    p.advance().unwrap();
    let latest = alice.borrow().store().clone();
    assert!(latest.load().unwrap().counter > old.load().unwrap().counter);
    (p, alice, old, latest)
}

fn info(seen: u64) -> pb::InfoRequest {
    pb::InfoRequest {
        protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
        seen_state_counter: seen,
    }
}

fn rule_of<T: std::fmt::Debug>(r: Result<T, SignerError>) -> Option<RuleId> {
    r.unwrap_err().rule
}

#[test]
fn a_channel_ahead_of_an_older_state_is_refused_and_frozen_without_a_write() {
    let (mut p, alice, old, latest) = advanced_after_copy();
    *alice.borrow_mut() = reopen(old.clone());
    let before = old.load().unwrap();

    // The node presents the channel where it is: beyond the old record.
    let req = next_counterparty_request(&mut p).unwrap();
    let refused =
        call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment);
    assert_eq!(rule_of(refused), Some(RuleId::StateRollbackDetected));
    // The holder commitment of the old record is not signed for broadcast
    // either (it may be revoked), nor its secret released.
    let force_close = pb::SignHolderCommitmentRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 1,
    };
    assert_eq!(
        rule_of(call!(p.alice.signer, SignHolderCommitment(force_close) => Signature)),
        Some(RuleId::StateRollbackDetected)
    );
    let release = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 0,
    };
    assert_eq!(
        rule_of(call!(p.alice.signer, ReleaseCommitmentSecret(release) => ReleaseCommitmentSecret)),
        Some(RuleId::StateRollbackDetected)
    );
    // Public data still answers (LDK needs points on reconnection).
    let point = pb::GetPerCommitmentPointRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: 5,
    };
    call!(p.alice.signer, GetPerCommitmentPoint(point) => GetPerCommitmentPoint).unwrap();
    assert_eq!(
        alice.borrow().store().load().unwrap(),
        before,
        "nothing written"
    );

    // The latest state restored: the channel goes on.
    *alice.borrow_mut() = reopen(latest);
    p.advance().unwrap();
}

#[test]
fn a_node_that_saw_a_later_state_stops_every_signature() {
    let (mut p, alice, old, latest) = advanced_after_copy();
    let seen = latest.load().unwrap().counter;
    *alice.borrow_mut() = reopen(old.clone());
    let before = old.load().unwrap();

    // The same counter is fine (a node that saw exactly this state).
    let ok = call!(p.alice.signer, Info(info(before.counter)) => Info).unwrap();
    assert!(ok.rollback.is_empty(), "{}", ok.rollback);
    let r = call!(p.alice.signer, Info(info(seen)) => Info).unwrap();
    assert!(r.rollback.contains(&format!("#{seen}")), "{}", r.rollback);
    assert_eq!(r.state_counter, before.counter);
    // Nothing is signed, even what needs no channel state.
    let ecdh = pb::EcdhRequest {
        recipient: 0,
        other_key: bitcoin::secp256k1::PublicKey::from_secret_key(
            &bitcoin::secp256k1::Secp256k1::new(),
            &bitcoin::secp256k1::SecretKey::from_slice(&[3; 32]).unwrap(),
        )
        .serialize()
        .to_vec(),
        tweak: None,
    };
    assert_eq!(
        rule_of(call!(p.alice.signer, Ecdh(ecdh) => Ecdh)),
        Some(RuleId::StateRollbackDetected)
    );
    let keys_id = call!(p.alice.signer, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId);
    assert_eq!(rule_of(keys_id), Some(RuleId::StateRollbackDetected));
    // A node saying a lower number later does not lift it.
    let again = call!(p.alice.signer, Info(info(0)) => Info).unwrap();
    assert!(!again.rollback.is_empty());
    assert_eq!(
        alice.borrow().store().load().unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn an_operator_may_accept_an_older_state_and_the_moved_channels_stay_refused() {
    let (mut p, alice, old, latest) = advanced_after_copy();
    let seen = latest.load().unwrap().counter;
    *alice.borrow_mut() = reopen(old);
    let _ = call!(p.alice.signer, Info(info(seen)) => Info).unwrap();
    alice.borrow_mut().accept_older_state(seen).unwrap();
    assert!(alice.borrow().state_counter() > seen);
    assert!(alice.borrow().rollback().is_none());
    let r = call!(p.alice.signer, Info(info(seen)) => Info).unwrap();
    assert!(r.rollback.is_empty(), "{}", r.rollback);
    // The channel that moved on is still refused from its numbers.
    let req = next_counterparty_request(&mut p).unwrap();
    assert_eq!(
        rule_of(
            call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment)
        ),
        Some(RuleId::StateRollbackDetected)
    );
}

#[test]
fn every_write_raises_the_counter_once_and_a_refusal_leaves_it() {
    let (mut p, alice, _old, _latest) = advanced_after_copy();
    let before = alice.borrow().state_counter();
    assert_eq!(alice.borrow().store().load().unwrap().counter, before);
    // A rewound number is refused by the sequence rule (not a rollback),
    // and the channel stays usable.
    let mut req = next_counterparty_request(&mut p).unwrap();
    if let Some(c) = req.commitment.as_mut() {
        c.commitment_number = p.number - 1;
    }
    assert_eq!(
        rule_of(
            call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment)
        ),
        Some(RuleId::CommitmentNumberSequence)
    );
    assert_eq!(alice.borrow().state_counter(), before);
    p.advance().unwrap();
    let after = alice.borrow().state_counter();
    assert!(after > before);
    assert_eq!(alice.borrow().store().load().unwrap().counter, after);
}

/// The operator's acceptance of an older state is bounded: it covers the
/// node's first greeting only, a counter that cannot be passed
/// (`u64::MAX`, a lying node) is refused with nothing written, and a
/// failed write accepts nothing.
#[test]
fn accepting_an_older_state_is_one_greeting_and_never_half_done() {
    let (mut p, alice, old, latest) = advanced_after_copy();
    let seen = latest.load().unwrap().counter;

    // A node claiming the highest counter there is: nothing to move past.
    *alice.borrow_mut() = reopen(old.clone());
    alice.borrow_mut().accept_older_states();
    let before = alice.borrow().store().load().unwrap();
    let r = call!(p.alice.signer, Info(info(u64::MAX)) => Info).unwrap();
    assert!(!r.rollback.is_empty(), "accepted a counter past the end");
    assert_eq!(alice.borrow().store().load().unwrap(), before, "written");

    // The write that would accept fails: still refused, nothing changed.
    *alice.borrow_mut() = reopen(old.clone());
    alice.borrow_mut().accept_older_states();
    alice.borrow_mut().store_mut().fail_next_commit = true;
    let r = call!(p.alice.signer, Info(info(seen)) => Info).unwrap();
    assert!(!r.rollback.is_empty(), "accepted without a write");
    assert_eq!(alice.borrow().state_counter(), before.counter);
    assert_eq!(alice.borrow().store().load().unwrap(), before, "written");

    // Accepted at the first greeting; a later, higher claim is refused.
    *alice.borrow_mut() = reopen(old);
    alice.borrow_mut().accept_older_states();
    let r = call!(p.alice.signer, Info(info(seen)) => Info).unwrap();
    assert!(r.rollback.is_empty(), "{}", r.rollback);
    let after = alice.borrow().state_counter();
    assert!(after > seen);
    let r = call!(p.alice.signer, Info(info(after + 10)) => Info).unwrap();
    assert!(
        !r.rollback.is_empty(),
        "the acceptance outlived the greeting"
    );
}
