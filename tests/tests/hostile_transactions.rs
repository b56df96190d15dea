//! The hostile-node suite, continued: attacks on channel set-up, funding,
//! the shape of commitment and HTLC transactions, revocation after a close,
//! closes with HTLCs pending and sweep fees. As in `hostile_node.rs`, a
//! compromised node speaks `signer.proto` to a real `lnpd-signer` over mTLS;
//! each attack is refused with its rule id (reply and daemon log), and
//! honest requests still work afterwards.

use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::transaction::Version;
use bitcoin::{Amount, ScriptBuf, Transaction, TxOut};
use lightning::ln::chan_utils::{
    get_revokeable_redeemscript, make_funding_redeemscript, TxCreationKeys,
};
use lnpd_proto::signer as pb;
use lnpd_signer_core::testing::{
    memory_signer, next_counterparty_request, ChannelPair, PairOptions,
};
use lnpd_signer_core::{call, PolicyConfig, RuleId};
use lnpd_tests::hostile::*;
use lnpd_tests::SignerProcess;

/// Keys for a second channel between Alice's daemon and a new in-process
/// Bob; nothing set up yet.
fn fresh(alice: &SignerProcess, opts: PairOptions) -> ChannelPair {
    ChannelPair::prepare(
        Box::new(alice.client().expect("mTLS client")),
        Box::new(memory_signer(7, PolicyConfig::default())),
        opts,
    )
    .expect("channel keys")
}

/// Alice's set-up request for `q`, changed by `change`.
fn setup(
    q: &mut ChannelPair,
    change: impl FnOnce(&mut pb::SetupChannelRequest),
) -> Result<pb::SetupChannelReply, lnpd_signer_core::SignerError> {
    let mut s = q.alice.setup.clone();
    change(&mut s);
    call!(q.alice.signer, SetupChannel(s) => SetupChannel)
}

#[test]
fn refuses_unsafe_channel_set_ups() {
    let (alice, _) = attacked("hostile-setup");
    let mut q = fresh(&alice, PairOptions::default());
    refused(
        &alice,
        setup(&mut q, |s| s.channel_type = 7),
        RuleId::ChannelTypeSafe,
    );
    refused(
        &alice,
        setup(&mut q, |s| s.holder_selected_contest_delay = 5_000),
        RuleId::ChannelToSelfDelayRange,
    );
    refused(
        &alice,
        setup(&mut q, |s| s.counterparty_selected_contest_delay = 2),
        RuleId::ChannelToSelfDelayRange,
    );
    refused(
        &alice,
        setup(&mut q, |s| s.channel_value_sat = 500_000_000),
        RuleId::ChannelValueMax,
    );
    refused(
        &alice,
        setup(&mut q, |s| s.counterparty_dust_limit_sat = 100),
        RuleId::ChannelDustLimitRange,
    );
    refused(
        &alice,
        setup(&mut q, |s| s.push_msat = 100_000_000),
        RuleId::OnchainNoPush,
    );
    // None of it stuck: the honest set-up of the same channel goes through.
    q.exchange_first_commitments()
        .expect("honest set-up after the attacks");
    still_usable(&mut q);
}

/// A channel the peer funds with a push to us: the signer takes the push
/// from our first commitment, which the peer signed, not from the node (which
/// claims none); the peer's first commitment, which we sign, must give us as
/// much, to the satoshi.
#[test]
fn a_push_to_us_is_what_the_peer_signed() {
    let mut bob = SignerProcess::init_restored("hostile-push-in", MNEMONIC).expect("init");
    bob.start().expect("signer starts");
    let funder_policy = PolicyConfig {
        allow_push: true,
        ..PolicyConfig::default()
    };
    let push_msat = 150_000_500;
    let mut q = ChannelPair::prepare(
        Box::new(memory_signer(7, funder_policy)),
        Box::new(bob.client().expect("mTLS client")),
        PairOptions {
            push_msat,
            ..PairOptions::default()
        },
    )
    .expect("channel keys");
    // The node does not know the push (LDK does not tell it the signer).
    q.bob.setup.push_msat = 0;
    let a_setup = q.alice.setup.clone();
    call!(q.alice.signer, SetupChannel(a_setup) => SetupChannel).expect("Alice set up");
    // Bob validates his first commitment (the peer's signature on the
    // push), parked until his set-up, as LDK does for inbound channels.
    let bob_first = q.commitment_data(false, 0).unwrap();
    let sig = call!(q.alice.signer, SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
        channel_keys_id: q.alice.keys_id.clone(), commitment: Some(bob_first.clone()), ..Default::default()
    }) => SignCounterpartyCommitment)
    .unwrap();
    call!(q.bob.signer, ValidateHolderCommitment(pb::ValidateHolderCommitmentRequest {
        channel_keys_id: q.bob.keys_id.clone(), commitment: Some(bob_first),
        counterparty_signature: sig.signature, htlc_signatures: sig.htlc_signatures,
        ..Default::default()
    }) => ValidateHolderCommitment)
    .expect("parked");
    let b_setup = q.bob.setup.clone();
    call!(q.bob.signer, SetupChannel(b_setup) => SetupChannel)
        .expect("Bob set up: the push he was given is his first commitment's");

    // The peer's first commitment, shorting us one satoshi of the push.
    let honest = q
        .commitment_data(true, 0)
        .expect("Alice's first commitment");
    let mut short = honest.clone();
    short.to_broadcaster_value_sat += 1;
    short.to_countersignatory_value_sat -= 1;
    let bob_id = q.bob.keys_id.clone();
    attack(&bob, RuleId::CommitmentFirstNoHtlcs, || {
        call!(q.bob.signer, SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
            channel_keys_id: bob_id.clone(), commitment: Some(short), ..Default::default()
        }) => SignCounterpartyCommitment)
    });
    // The honest one is signed, and Alice validates it: the channel is open.
    let (req, _) = q
        .holder_request(true, 0)
        .expect("the peer's first commitment giving us the push is signed");
    call!(q.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment)
        .expect("Alice validates");
    still_usable(&mut q);
}

/// The funding output of `q` for `value_sat`.
fn funding_output(q: &ChannelPair, value_sat: u64) -> TxOut {
    let key = |k: &[u8]| bitcoin::PublicKey::new(PublicKey::from_slice(k).unwrap());
    let script = make_funding_redeemscript(
        &key(&q.alice.pubkeys.funding_pubkey).inner,
        &key(&q.bob.pubkeys.funding_pubkey).inner,
    );
    TxOut {
        value: Amount::from_sat(value_sat),
        script_pubkey: script.to_p2wsh(),
    }
}

/// A funding transaction for `q` from Alice's wallet, with change.
fn funding(q: &ChannelPair, value_sat: u64, foreign: Option<Transaction>) -> pb::SignPsbtRequest {
    let change = TxOut {
        value: Amount::from_sat(200_000 - value_sat - 2_000),
        script_pubkey: wallet_script(1, 0),
    };
    wallet_psbt(
        vec![funding_output(q, value_sat), change],
        Version::TWO,
        foreign,
    )
}

/// The transaction a PSBT request carries.
fn unsigned(r: &pb::SignPsbtRequest) -> Transaction {
    bitcoin::Psbt::deserialize(&r.psbt).unwrap().unsigned_tx
}

#[test]
fn refuses_unsafe_funding_transactions() {
    let (alice, _) = attacked("hostile-funding");
    let opts = PairOptions {
        value_sat: 150_000,
        ..PairOptions::default()
    };
    let mut q = fresh(&alice, opts.clone());
    // The channel's outpoint is the honest funding transaction's.
    let honest = funding(&q, 150_000, None);
    q.set_funding(unsigned(&honest), 0);
    setup(&mut q, |_| {}).expect("Alice sets the channel up");
    // Before the peer countersigned the first commitment, funding could
    // lock the funds in a channel only the peer can close.
    refused(
        &alice,
        call!(q.alice.signer, SignPsbt(funding(&q, 150_000, None)) => SignPsbt),
        RuleId::OnchainInitialCommitmentFirst,
    );
    q.exchange_first_commitments().expect("first commitments");
    refused(
        &alice,
        call!(q.alice.signer, SignPsbt(funding(&q, 149_000, None)) => SignPsbt),
        RuleId::OnchainFundingOutputMatches,
    );
    // Part of it to a stranger, beside the funding output.
    let outputs = vec![
        TxOut {
            value: Amount::from_sat(40_000),
            script_pubkey: stranger(),
        },
        funding_output(&q, 150_000),
    ];
    let smuggled = wallet_psbt(outputs, Version::TWO, None);
    refused(
        &alice,
        call!(q.alice.signer, SignPsbt(smuggled) => SignPsbt),
        RuleId::OnchainOutputsKnown,
    );
    // A non-segwit input makes the funding txid malleable (the first
    // commitment spends that txid).
    let legacy = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![bitcoin::TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(10_000),
            script_pubkey: ScriptBuf::new_p2pkh(&bitcoin::PubkeyHash::from_byte_array([5; 20])),
        }],
    };
    // (A channel of its own, whose outpoint is that transaction's.)
    let mut r = fresh(&alice, opts);
    let with_legacy = funding(&r, 150_000, Some(legacy));
    r.set_funding(unsigned(&with_legacy), 0);
    r.exchange_first_commitments().expect("first commitments");
    refused(
        &alice,
        call!(r.alice.signer, SignPsbt(with_legacy) => SignPsbt),
        RuleId::OnchainFundingSegwitInputs,
    );
    // Not version 2.
    let v1 = wallet_psbt(
        vec![TxOut {
            value: Amount::from_sat(199_000),
            script_pubkey: wallet_script(1, 0),
        }],
        Version::ONE,
        None,
    );
    refused(
        &alice,
        call!(q.alice.signer, SignPsbt(v1) => SignPsbt),
        RuleId::OnchainFormatStandard,
    );
    call!(q.alice.signer, SignPsbt(honest) => SignPsbt).expect("the honest funding transaction");
    still_usable(&mut q);
}

#[test]
fn refuses_a_first_commitment_that_does_not_pay_the_funder() {
    let (alice, _) = attacked("hostile-first");
    let mut q = fresh(&alice, PairOptions::default());
    setup(&mut q, |_| {}).unwrap();
    // Bob's first commitment, with 10 000 sat of Alice's moved to Bob.
    let mut data = q.commitment_data(false, 0).unwrap();
    data.to_broadcaster_value_sat += 10_000;
    data.to_countersignatory_value_sat -= 10_000;
    data.transaction = q.built_transaction(false, &data);
    refused(
        &alice,
        call!(q.alice.signer, SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
            channel_keys_id: q.alice.keys_id.clone(),
            commitment: Some(data),
            ..Default::default()
        }) => SignCounterpartyCommitment),
        RuleId::CommitmentFirstNoHtlcs,
    );
    q.exchange_first_commitments()
        .expect("honest first commitments");
    still_usable(&mut q);
}

/// Alice's request to sign Bob's next commitment, the node's transaction
/// changed by `tamper` (given the commitment's keys).
fn tampered(
    p: &mut ChannelPair,
    tamper: impl FnOnce(&mut Transaction, &TxCreationKeys, &pb::CommitmentData),
) -> pb::SignCounterpartyCommitmentRequest {
    let mut req = next_counterparty_request(p).unwrap();
    let c = req.commitment.as_mut().unwrap();
    let (_, rebuilt) = lnpd_signer_core::testing::rebuild_as(&p.bob, c).unwrap();
    let mut tx: Transaction = deserialize(&c.transaction).unwrap();
    tamper(&mut tx, rebuilt.tx.trust().keys(), c);
    c.transaction = serialize(&tx);
    req
}

/// Sends `req` and expects `rule`; then the honest request goes through.
fn refused_then_honest(
    alice: &SignerProcess,
    p: &mut ChannelPair,
    req: pb::SignCounterpartyCommitmentRequest,
    rule: RuleId,
) {
    refused(
        alice,
        call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
        rule,
    );
    still_usable(p);
}

/// A channel where both sides have a main output (Alice paid Bob 200k sat).
fn attacked_with_balances(tag: &str) -> (SignerProcess, ChannelPair) {
    let (alice, mut p) = attacked(tag);
    let h = p.add_htlc(200_000_000, 1).unwrap();
    p.settle_htlc(&h).unwrap();
    (alice, p)
}

fn output_index(tx: &Transaction, value_sat: u64) -> usize {
    tx.output
        .iter()
        .position(|o| o.value.to_sat() == value_sat)
        .expect("output of that value")
}

#[test]
fn refuses_a_commitment_spending_another_output() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-input");
    let req = tampered(&mut p, |tx, _, _| tx.input[0].previous_output.vout ^= 1);
    refused_then_honest(&alice, &mut p, req, RuleId::CommitmentInputFunding);
}

#[test]
fn refuses_a_commitment_with_another_locktime() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-format");
    let req = tampered(&mut p, |tx, _, _| {
        tx.lock_time = LockTime::from_consensus(tx.lock_time.to_consensus_u32() ^ 1)
    });
    refused_then_honest(&alice, &mut p, req, RuleId::CommitmentFormat);
}

#[test]
fn refuses_a_to_local_output_with_another_delay() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-delay");
    let delay = p.alice.setup.holder_selected_contest_delay as u16;
    let req = tampered(&mut p, |tx, keys, c| {
        let i = output_index(tx, c.to_broadcaster_value_sat);
        tx.output[i].script_pubkey = get_revokeable_redeemscript(
            &keys.revocation_key,
            delay - 100,
            &keys.broadcaster_delayed_payment_key,
        )
        .to_p2wsh();
    });
    refused_then_honest(&alice, &mut p, req, RuleId::CommitmentToSelfDelay);
}

#[test]
fn refuses_an_output_to_keys_not_derived_from_the_channel() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-keys");
    // Our to_remote output on Bob's commitment, paid to someone else.
    let req = tampered(&mut p, |tx, _, c| {
        let i = output_index(tx, c.to_countersignatory_value_sat);
        tx.output[i].script_pubkey = stranger();
    });
    refused_then_honest(&alice, &mut p, req, RuleId::CommitmentKeys);
}

#[test]
fn refuses_an_anchor_with_the_wrong_key() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-anchor");
    let req = tampered(&mut p, |tx, _, _| {
        let i = output_index(tx, 330);
        tx.output[i].script_pubkey = stranger();
    });
    refused_then_honest(&alice, &mut p, req, RuleId::CommitmentAnchors);
}

#[test]
fn refuses_an_output_the_state_does_not_have() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-outputs");
    let req = tampered(&mut p, |tx, _, _| {
        tx.output.push(TxOut {
            value: Amount::from_sat(50_000),
            script_pubkey: stranger(),
        })
    });
    refused_then_honest(&alice, &mut p, req, RuleId::CommitmentOutputsRecognized);
}

#[test]
fn refuses_dust_that_is_not_trimmed() {
    let (alice, mut p) = attacked_with_balances("hostile-commit-dust");
    // An output below the dust limit in the node's transaction.
    let req = tampered(&mut p, |tx, _, _| {
        tx.output.push(TxOut {
            value: Amount::from_sat(100),
            script_pubkey: stranger(),
        })
    });
    refused(
        &alice,
        call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
        RuleId::CommitmentDustTrimmed,
    );
    // An HTLC of 100 sat presented as a non-dust output.
    refused(&alice, p.offer(100_000, 3), RuleId::CommitmentDustTrimmed);
    still_usable(&mut p);
}

/// Alice's HTLC-timeout transaction for her latest commitment's HTLC, with
/// its output changed by `change`.
fn htlc_timeout(
    p: &mut ChannelPair,
    change: impl FnOnce(&mut pb::UnsignedTx, &TxCreationKeys),
) -> pb::SignHolderHtlcTransactionRequest {
    let data = p.commitment_data(true, p.number).unwrap();
    let (_, rebuilt) = lnpd_signer_core::testing::rebuild_as(&p.alice, &data).unwrap();
    let trusted = rebuilt.tx.trust();
    let htlc = rebuilt.tx.nondust_htlcs()[0].clone();
    let vout = htlc.transaction_output_index.unwrap();
    let keys = trusted.keys();
    let mut tx = pb::UnsignedTx {
        version: 2,
        lock_time: htlc.cltv_expiry,
        inputs: vec![pb::TxIn {
            previous_output: Some(pb::OutPoint {
                txid: trusted.txid().to_byte_array().to_vec(),
                vout,
            }),
            sequence: 1,
        }],
        outputs: vec![pb::TxOut {
            value_sat: htlc.amount_msat / 1000,
            script_pubkey: get_revokeable_redeemscript(
                &keys.revocation_key,
                p.alice.setup.counterparty_selected_contest_delay as u16,
                &keys.broadcaster_delayed_payment_key,
            )
            .to_p2wsh()
            .to_bytes(),
        }],
    };
    change(&mut tx, keys);
    pb::SignHolderHtlcTransactionRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: p.number,
        htlc_output_index: vout,
        tx: Some(tx),
        input_index: 0,
        preimage: vec![],
        previous_txs: vec![],
    }
}

#[test]
fn refuses_htlc_transactions_unlike_bolt3() {
    let (alice, mut p) = attacked("hostile-htlc-tx");
    let h = p.add_htlc(30_000_000, 9).unwrap();
    let send = |p: &mut ChannelPair, req: pb::SignHolderHtlcTransactionRequest| call!(p.alice.signer, SignHolderHtlcTransaction(req) => Signature);
    let req = htlc_timeout(&mut p, |tx, _| tx.lock_time += 1);
    refused(&alice, send(&mut p, req), RuleId::HtlcFormat);
    let req = htlc_timeout(&mut p, |tx, keys| {
        tx.outputs[0].script_pubkey = get_revokeable_redeemscript(
            &keys.revocation_key,
            10,
            &keys.broadcaster_delayed_payment_key,
        )
        .to_p2wsh()
        .to_bytes()
    });
    refused(&alice, send(&mut p, req), RuleId::HtlcKeys);
    let req = htlc_timeout(&mut p, |tx, _| tx.outputs[0].value_sat -= 5_000);
    refused(&alice, send(&mut p, req), RuleId::HtlcFeeRange);
    let req = htlc_timeout(&mut p, |_, _| {});
    send(&mut p, req).expect("the BOLT 3 HTLC-timeout transaction");
    p.settle_htlc(&h).unwrap();
    still_usable(&mut p);
}

/// Alice's HTLC-timeout transaction with a wallet input for its fee (what
/// LDK builds on an anchor channel), as a PSBT for the wallet's signature:
/// the HTLC input and its output first (SIGHASH_SINGLE pairs them), then
/// the wallet coin and change.
fn htlc_fee_psbt(p: &mut ChannelPair, redirect: Option<ScriptBuf>) -> pb::SignPsbtRequest {
    let htlc = htlc_timeout(p, |_, _| {});
    let tx = htlc.tx.expect("HTLC transaction");
    let htlc_in = tx.inputs[0].previous_output.clone().unwrap();
    let second_stage = TxOut {
        value: Amount::from_sat(tx.outputs[0].value_sat),
        script_pubkey: redirect
            .unwrap_or_else(|| ScriptBuf::from_bytes(tx.outputs[0].script_pubkey.clone())),
    };
    let change = TxOut {
        value: Amount::from_sat(200_000 - 3_000),
        script_pubkey: wallet_script(1, 0),
    };
    let req = wallet_psbt(vec![change], Version::TWO, None);
    let mut psbt = bitcoin::Psbt::deserialize(&req.psbt).unwrap();
    psbt.unsigned_tx.lock_time = LockTime::from_consensus(tx.lock_time);
    psbt.unsigned_tx.input.insert(
        0,
        bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(
                bitcoin::Txid::from_slice(&htlc_in.txid).unwrap(),
                htlc_in.vout,
            ),
            sequence: bitcoin::Sequence(1),
            ..Default::default()
        },
    );
    psbt.inputs.insert(0, Default::default());
    psbt.unsigned_tx.output.insert(0, second_stage);
    psbt.outputs.insert(0, Default::default());
    pb::SignPsbtRequest {
        psbt: psbt.serialize(),
    }
}

/// On an anchor channel the wallet pays the fee of our second-stage HTLC
/// transaction: the signer knows that transaction's HTLC input and output
/// from the commitment it signed for broadcast (no previous transaction
/// needed), and nothing else passes for it.
#[test]
fn the_wallet_pays_for_our_htlc_transaction_and_nothing_else() {
    let (alice, mut p) = attacked("hostile-htlc-fee");
    p.add_htlc(30_000_000, 9).unwrap();
    let sign = |p: &mut ChannelPair, req: pb::SignPsbtRequest| call!(p.alice.signer, SignPsbt(req) => SignPsbt);
    // Before a force close the HTLC's second stage is no output of ours.
    let req = htlc_fee_psbt(&mut p, None);
    attack(&alice, RuleId::OnchainOutputsKnown, || sign(&mut p, req));
    let latest = pb::SignHolderCommitmentRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: p.number,
    };
    call!(p.alice.signer, SignHolderCommitment(latest) => Signature).expect("force close");
    // The HTLC's value sent elsewhere than our delayed output.
    let req = htlc_fee_psbt(&mut p, Some(stranger()));
    attack(&alice, RuleId::OnchainOutputsKnown, || sign(&mut p, req));
    let req = htlc_fee_psbt(&mut p, None);
    let signed = sign(&mut p, req).expect("the fee inputs of our HTLC-timeout transaction");
    let psbt = bitcoin::Psbt::deserialize(&signed.psbt).unwrap();
    assert!(
        psbt.inputs[1].partial_sigs.len()
            + usize::from(psbt.inputs[1].final_script_witness.is_some())
            > 0,
        "the wallet input is signed"
    );
    assert!(
        psbt.inputs[0].partial_sigs.is_empty() && psbt.inputs[0].final_script_witness.is_none(),
        "the HTLC input is left to SignHolderHtlcTransaction"
    );
}

#[test]
fn refuses_a_close_with_htlcs_pending_and_anything_after_a_close() {
    let (alice, mut p) = attacked("hostile-close");
    let h = p.add_htlc(30_000_000, 4).unwrap();
    let shutdown =
        call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script)
            .unwrap()
            .script_pubkey;
    let close = |p: &ChannelPair| pb::SignClosingTransactionRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        to_holder_value_sat: p.alice_msat / 1000 - 2_000,
        to_counterparty_value_sat: p.bob_msat / 1000,
        to_holder_script: shutdown.clone(),
        to_counterparty_script: stranger().to_bytes(),
        lock_time: 0,
    };
    // The pending HTLC's 30 000 sat would vanish from both outputs.
    let req = close(&p);
    refused(
        &alice,
        call!(p.alice.signer, SignClosingTransaction(req) => Signature),
        RuleId::CloseNoPendingHtlcs,
    );
    p.settle_htlc(&h).unwrap();
    let req = close(&p);
    call!(p.alice.signer, SignClosingTransaction(req) => Signature)
        .expect("the honest close once nothing is pending");
    // After a mutual close: no new state, no revocation.
    let next = next_counterparty_request(&mut p).unwrap();
    refused(
        &alice,
        call!(p.alice.signer, SignCounterpartyCommitment(next) => SignCounterpartyCommitment),
        RuleId::CloseThenFrozen,
    );
    let revoke = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: p.number,
    };
    refused(
        &alice,
        call!(p.alice.signer, ReleaseCommitmentSecret(revoke) => ReleaseCommitmentSecret),
        RuleId::RevokeNotClosed,
    );
    // The close itself can still be asked again (a lost reply, say).
    let req = close(&p);
    call!(p.alice.signer, SignClosingTransaction(req) => Signature)
        .expect("the same close, signed again");
}

#[test]
fn refuses_a_sweep_burning_its_value_in_fees() {
    let (alice, mut p) = attacked("hostile-sweep-fee");
    let mut req = sweep_request(&p, wallet_script(1, 0), None);
    req.feerate_sat_per_kw = 200_000;
    refused(
        &alice,
        call!(p.alice.signer, SpendSpendableOutputs(req) => SpendSpendableOutputs),
        RuleId::SweepFeeRange,
    );
    let req = sweep_request(&p, wallet_script(1, 0), None);
    call!(p.alice.signer, SpendSpendableOutputs(req) => SpendSpendableOutputs)
        .expect("a sweep at a sane feerate");
    still_usable(&mut p);
}
