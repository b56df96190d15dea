//! A compromised node against a real `lnpd-signer` process: the test speaks
//! `signer.proto` over gRPC with mutual TLS (not through LDK), sends one
//! attack per rule, sees it refused with that rule's id (in the reply and in
//! the daemon's log), and then shows the channel still works with honest
//! requests. Alice's signer is the daemon under attack; Bob's, in-process,
//! only plays the honest peer's countersignatures.

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{Amount, Network, ScriptBuf, TxOut};
use lnpd_proto::signer as pb;
use lnpd_signer_core::testing::{
    memory_signer, next_counterparty_request, ChannelPair, PairOptions,
};
use lnpd_signer_core::{call, PolicyConfig, RuleId, SignerError};
use lnpd_tests::hostile::*;

#[test]
fn refuses_the_current_secret_before_the_next_state_is_validated() {
    let (alice, mut p) = attacked("hostile-secret");
    p.advance().unwrap();
    let req = pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: p.number,
    };
    refused(
        &alice,
        call!(p.alice.signer, ReleaseCommitmentSecret(req) => ReleaseCommitmentSecret),
        RuleId::RevokeNextValidated,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_to_sign_a_holder_commitment_it_revoked() {
    let (alice, mut p) = attacked("hostile-revoked");
    p.advance().unwrap();
    let req = pb::SignHolderCommitmentRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: p.number - 1,
    };
    refused(
        &alice,
        call!(p.alice.signer, SignHolderCommitment(req) => Signature),
        RuleId::CommitmentHolderNotRevoked,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_rewound_commitment_numbers_and_freezes_a_channel_shown_ahead() {
    let (mut alice, mut p) = attacked("hostile-numbers");
    p.advance().unwrap();
    p.advance().unwrap();
    let mut req = next_counterparty_request(&mut p).unwrap();
    if let Some(c) = req.commitment.as_mut() {
        c.commitment_number = p.number - 1;
    }
    attack(
        &alice,
        RuleId::CommitmentNumberSequence,
        || call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
    );
    still_usable(&mut p);
    // A number ahead of the record says the signer's state is older than
    // what it signed: refused, and the channel with it ...
    let mut req = next_counterparty_request(&mut p).unwrap();
    if let Some(c) = req.commitment.as_mut() {
        c.commitment_number = p.number + 2;
    }
    attack(
        &alice,
        RuleId::StateRollbackDetected,
        || call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
    );
    let honest = next_counterparty_request(&mut p).unwrap();
    attack(
        &alice,
        RuleId::StateRollbackDetected,
        || call!(p.alice.signer, SignCounterpartyCommitment(honest) => SignCounterpartyCommitment),
    );
    // ... until the operator restarts the signer (here on its latest state).
    alice.kill9();
    alice.start().unwrap();
    p.alice.signer = Box::new(alice.client().unwrap());
    still_usable(&mut p);
}

#[test]
fn refuses_a_commitment_that_moves_our_balance_to_the_peer_without_an_htlc() {
    let (alice, mut p) = attacked("hostile-balance");
    p.advance().unwrap();
    let mut req = next_counterparty_request(&mut p).unwrap();
    if let Some(c) = req.commitment.as_mut() {
        c.to_countersignatory_value_sat -= 100_000;
        c.to_broadcaster_value_sat += 100_000;
        c.transaction = p.built_transaction(false, c);
    }
    refused(
        &alice,
        call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
        RuleId::CommitmentBalanceConserved,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_to_take_our_htlc_as_paid_without_its_preimage() {
    let (alice, mut p) = attacked("hostile-preimage");
    let h = p.add_htlc(40_000_000, 7).unwrap();
    // The peer claims our HTLC: it leaves the commitment and its value goes
    // to the peer, but the node shows no preimage.
    p.htlcs.retain(|x| x != &h);
    p.bob_msat += h.amount_msat;
    let req = next_counterparty_request(&mut p).unwrap();
    assert!(req.outbound_htlc_preimages.is_empty());
    refused(
        &alice,
        call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
        RuleId::CommitmentSettledPreimage,
    );
    // With the preimage, the same update is signed, and the channel goes on.
    p.settled.push(h.preimage);
    p.advance().expect("settlement with the preimage");
    still_usable(&mut p);
}

#[test]
fn refuses_a_feerate_far_above_the_limit() {
    let (alice, mut p) = attacked("hostile-feerate");
    let mut req = next_counterparty_request(&mut p).unwrap();
    if let Some(c) = req.commitment.as_mut() {
        c.feerate_per_kw = PolicyConfig::default().max_feerate_per_kw * 10;
    }
    refused(
        &alice,
        call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
        RuleId::CommitmentFeeRange,
    );
    still_usable(&mut p);
}

/// Alice's next update with `n` new HTLCs she offers, of `msat` each, her
/// balance moved into them as an honest node would: the request, and the
/// pair's bookkeeping put back.
fn with_new_htlcs(p: &mut ChannelPair, n: u8, msat: u64) -> pb::SignCounterpartyCommitmentRequest {
    for i in 0..n {
        p.alice_msat -= msat;
        p.htlcs.push(lnpd_signer_core::testing::TestHtlc {
            offered_by_alice: true,
            amount_msat: msat,
            cltv_expiry: 500,
            preimage: [0x60 + i; 32],
        });
    }
    let req = next_counterparty_request(p).unwrap();
    for _ in 0..n {
        p.htlcs.pop();
        p.alice_msat += msat;
    }
    req
}

#[test]
fn refuses_more_htlcs_than_the_limit() {
    let (alice, mut p) = attacked_with("hostile-htlcs", "max_htlcs = 5\n");
    let req = with_new_htlcs(&mut p, 6, 2_000_000);
    attack(
        &alice,
        RuleId::CommitmentHtlcCountMax,
        || call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
    );
    still_usable(&mut p);
}

#[test]
fn refuses_more_value_in_flight_than_the_limit() {
    let (alice, mut p) = attacked_with("hostile-inflight", "max_htlc_inflight_sat = 100000\n");
    let req = with_new_htlcs(&mut p, 2, 60_000_000);
    attack(
        &alice,
        RuleId::CommitmentHtlcInflightMax,
        || call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment),
    );
    still_usable(&mut p);
}

#[test]
fn refuses_a_to_local_delay_other_than_negotiated() {
    let (alice, mut p) = attacked("hostile-delay");
    let mut setup = p.alice.setup.clone();
    setup.counterparty_selected_contest_delay += 100;
    refused(
        &alice,
        call!(p.alice.signer, SetupChannel(setup) => SetupChannel),
        RuleId::ChannelParamsImmutable,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_to_reuse_a_channel_keys_id() {
    let (alice, mut p) = attacked("hostile-keys-id");
    // A second channel under the first one's keys id, with other parameters.
    let mut setup = p.alice.setup.clone();
    setup.funding_outpoint = Some(pb::OutPoint {
        txid: vec![9; 32],
        vout: 0,
    });
    refused(
        &alice,
        call!(p.alice.signer, SetupChannel(setup) => SetupChannel),
        RuleId::ChannelKeysIdUnique,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_a_close_to_an_unknown_address_or_short_of_our_balance() {
    let (alice, mut p) = attacked("hostile-close");
    p.advance().unwrap();
    let ours = call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script)
        .unwrap()
        .script_pubkey;
    let honest = pb::SignClosingTransactionRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        to_holder_value_sat: p.alice_msat / 1000 - 1000,
        to_counterparty_value_sat: p.bob_msat / 1000,
        to_holder_script: ours,
        to_counterparty_script: stranger().to_bytes(),
        lock_time: 0,
    };
    let mut elsewhere = honest.clone();
    elsewhere.to_holder_script = stranger().to_bytes();
    refused(
        &alice,
        call!(p.alice.signer, SignClosingTransaction(elsewhere) => Signature),
        RuleId::CloseDestinationAllowed,
    );
    // Less than our balance, the rest to the peer (the fee as honest).
    let mut short = honest.clone();
    short.to_holder_value_sat -= 100_000;
    short.to_counterparty_value_sat += 100_000;
    attack(
        &alice,
        RuleId::CloseValueMatches,
        || call!(p.alice.signer, SignClosingTransaction(short) => Signature),
    );
    // Our balance burnt in fees: far above the on-chain feerate limit.
    let mut burnt = honest.clone();
    burnt.to_holder_value_sat -= 100_000;
    attack(
        &alice,
        RuleId::CloseFeeRange,
        || call!(p.alice.signer, SignClosingTransaction(burnt) => Signature),
    );
    // Locked far in the future.
    let mut locked = honest.clone();
    locked.lock_time = 400_000;
    attack(
        &alice,
        RuleId::CloseLocktimeRange,
        || call!(p.alice.signer, SignClosingTransaction(locked) => Signature),
    );
    still_usable(&mut p);
}

#[test]
fn refuses_a_sweep_to_an_unknown_address() {
    let (alice, mut p) = attacked("hostile-sweep");
    let req = sweep_request(&p, stranger(), None);
    refused(
        &alice,
        call!(p.alice.signer, SpendSpendableOutputs(req) => SpendSpendableOutputs),
        RuleId::SweepDestinationAllowed,
    );
    still_usable(&mut p);
}

/// Feeds Alice's signer `n` more regtest headers; returns the new height.
fn feed_headers(p: &mut ChannelPair, n: usize) -> u32 {
    let tip = call!(p.alice.signer, UpdateChain(pb::UpdateChainRequest::default()) => UpdateChain)
        .unwrap();
    let last = if tip.height == 0 {
        bitcoin::constants::genesis_block(Network::Regtest).header
    } else {
        *HEADERS.lock().unwrap().last().unwrap()
    };
    let new = lnpd_signer_core::chain::mine_regtest(&last, n, 1);
    HEADERS.lock().unwrap().extend(new.iter().copied());
    let req = pb::UpdateChainRequest {
        first_height: tip.height + 1,
        headers: new.iter().map(bitcoin::consensus::serialize).collect(),
    };
    call!(p.alice.signer, UpdateChain(req) => UpdateChain)
        .unwrap()
        .height
}

/// The headers mined so far by [`feed_headers`] (one test uses it).
static HEADERS: std::sync::Mutex<Vec<bitcoin::block::Header>> = std::sync::Mutex::new(Vec::new());

#[test]
fn bounds_htlc_expiries_and_sweep_locktimes_by_the_checked_chain_height() {
    let (alice, mut p) = attacked_with(
        "hostile-height",
        "max_htlc_cltv_window = 144\nmax_sweep_locktime_ahead = 6\n",
    );
    assert_eq!(feed_headers(&mut p, 100), 100);
    // Offered HTLCs expire at 500 + tag: too far past height 100.
    refused(
        &alice,
        p.offer(1_000_000, 1),
        RuleId::CommitmentHtlcCltvRange,
    );
    // Headers without their proof of work do not move the height.
    let mut forged = lnpd_signer_core::chain::mine_regtest(&HEADERS.lock().unwrap()[99], 300, 2);
    for h in forged.iter_mut() {
        while h.validate_pow(h.target()).is_ok() {
            h.nonce += 1;
        }
    }
    let lie = call!(p.alice.signer, UpdateChain(pb::UpdateChainRequest {
        first_height: 101,
        headers: forged.iter().map(bitcoin::consensus::serialize).collect(),
    }) => UpdateChain);
    assert!(
        matches!(&lie, Err(e) if e.message.contains("proof of work")),
        "{lie:?}"
    );
    refused(
        &alice,
        p.offer(1_000_000, 1),
        RuleId::CommitmentHtlcCltvRange,
    );
    // Real blocks do.
    assert_eq!(feed_headers(&mut p, 300), 400);
    let h = p.offer(1_000_000, 1).expect("an expiry 101 blocks ahead");
    p.settle_htlc(&h).unwrap();

    let wallet = call!(p.alice.signer, GetDestinationScript(pb::GetDestinationScriptRequest {
        channel_keys_id: p.alice.keys_id.clone(),
    }) => Script)
    .unwrap();
    let wallet = ScriptBuf::from_bytes(wallet.script_pubkey);
    let req = sweep_request(&p, wallet.clone(), Some(420));
    refused(
        &alice,
        call!(p.alice.signer, SpendSpendableOutputs(req) => SpendSpendableOutputs),
        RuleId::SweepLocktimeRange,
    );
    let req = sweep_request(&p, wallet, Some(405));
    call!(p.alice.signer, SpendSpendableOutputs(req) => SpendSpendableOutputs)
        .expect("a sweep locked to a near height");
    // still_usable's HTLC expires at 661.
    assert_eq!(feed_headers(&mut p, 200), 600);
    still_usable(&mut p);
}

#[test]
fn refuses_a_wallet_spend_with_an_unknown_output_or_fee() {
    let (alice, mut p) = attacked("hostile-onchain");
    // All of it to a stranger (what a funding transaction with an unknown
    // output, or a withdrawal the operator never allowed, looks like).
    let theft = wallet_psbt(
        vec![TxOut {
            value: Amount::from_sat(199_000),
            script_pubkey: stranger(),
        }],
        Version::TWO,
        None,
    );
    refused(
        &alice,
        call!(p.alice.signer, SignPsbt(theft) => SignPsbt),
        RuleId::OnchainOutputsKnown,
    );
    // To our own wallet, but nearly all of it burnt in fees.
    let burn = wallet_psbt(
        vec![TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: wallet_script(1, 0),
        }],
        Version::TWO,
        None,
    );
    refused(
        &alice,
        call!(p.alice.signer, SignPsbt(burn) => SignPsbt),
        RuleId::OnchainFeeRange,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_a_new_state_before_the_peer_revoked_the_one_before() {
    let (alice, mut p) = attacked("hostile-unrevoked");
    p.advance().unwrap();
    // Alice signs Bob's #2; Bob does not revoke #1; Alice is asked for #3.
    let two = next_counterparty_request(&mut p).unwrap();
    let sig = call!(p.alice.signer, SignCounterpartyCommitment(two.clone()) => SignCounterpartyCommitment)
        .unwrap();
    let mut three = next_counterparty_request(&mut p).unwrap();
    three.commitment = Some(p.commitment_data(false, p.number + 2).unwrap());
    attack(
        &alice,
        RuleId::CommitmentPreviousRevoked,
        || call!(p.alice.signer, SignCounterpartyCommitment(three) => SignCounterpartyCommitment),
    );
    // Bob revokes #1 after all: the round completes and the channel goes on.
    p.complete_advance(two, sig).unwrap();
    still_usable(&mut p);
}

#[test]
fn refuses_a_forged_revocation_secret() {
    let (alice, mut p) = attacked("hostile-forged-secret");
    p.advance().unwrap();
    let (revocation, _) = p.revocation_then_next().unwrap();
    let pb::request::Body::ValidateCounterpartyRevocation(mut r) = revocation else {
        unreachable!()
    };
    r.secret = vec![0x42; 32];
    refused(
        &alice,
        call!(p.alice.signer, ValidateCounterpartyRevocation(r) => ValidateCounterpartyRevocation),
        RuleId::RevokeSecretValid,
    );
}

#[test]
fn a_batch_cannot_smuggle_other_requests() {
    let (_alice, mut p) = attacked("hostile-batch");
    let smuggled = pb::request::Body::NewChannelKeysId(pb::NewChannelKeysIdRequest::default());
    let results = p.alice.signer.handle_batch(vec![smuggled]).unwrap();
    assert!(
        results[0].is_err(),
        "a non-batchable request ran in a batch"
    );
    still_usable(&mut p);
}

#[test]
fn refuses_a_payment_above_the_single_payment_limit() {
    let (alice, mut p) = attacked_with("hostile-max", "max_payment_sat = 30000\n");
    refused(&alice, p.offer(31_000_000, 1), RuleId::PaymentMax);
    p.offer(29_000_000, 2).expect("a payment under the limit");
}

#[test]
fn refuses_payments_beyond_the_rolling_limit() {
    let (alice, mut p) = attacked_with(
        "hostile-velocity",
        "velocity_limit_sat = 50000\nvelocity_window_secs = 3600\n",
    );
    p.offer(30_000_000, 1).expect("first payment");
    refused(&alice, p.offer(30_000_000, 2), RuleId::PaymentVelocity);
    p.offer(15_000_000, 3).expect("what is left of the limit");
}

#[test]
fn refuses_any_payment_in_merchant_mode() {
    let (alice, mut p) = attacked_with("hostile-merchant", "merchant_no_sends = true\n");
    refused(&alice, p.offer(1_000_000, 1), RuleId::MerchantNoSends);
    p.advance().expect("updates that send nothing go on");
}

#[test]
fn refuses_to_forward_more_than_came_in() {
    let (alice, mut with_bob) = attacked_with("hostile-routing", "routing_balanced = true\n");
    let mut with_carol = ChannelPair::open(
        Box::new(alice.client().expect("mTLS client")),
        Box::new(memory_signer(3, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("second channel");
    // Bob gets a balance, then offers Alice 50k sat for hash 9.
    let h = with_bob.add_htlc(200_000_000, 1).unwrap();
    with_bob.settle_htlc(&h).unwrap();
    with_bob.add_htlc_from_bob(50_000_000, 9).unwrap();
    // The incoming HTLC covers forwards once its channel is proven funded.
    let mut chain = lnpd_signer_core::testing::TestChain::default();
    with_bob
        .prove_funding(&mut chain, 3)
        .expect("funding proven");
    refused(
        &alice,
        with_carol.offer(60_000_000, 9),
        RuleId::RoutingBalanced,
    );
    with_carol.offer(49_000_000, 9).expect("a covered forward");
}

/// A BOLT 11 invoice for the HTLC test tag `tag`, signed by `payee_key`.
fn invoice(tag: u8, amount_msat: u64, payee_key: &SecretKey, expiry_secs: u64) -> String {
    use bitcoin::hashes::{sha256, Hash};
    use lightning_invoice::{Currency, InvoiceBuilder};
    let s = Secp256k1::new();
    let hash = sha256::Hash::hash(&[tag; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    InvoiceBuilder::new(Currency::Regtest)
        .description("hostile test".into())
        .payment_hash(hash)
        .payment_secret(lightning::types::payment::PaymentSecret([1; 32]))
        .duration_since_epoch(now)
        .min_final_cltv_expiry_delta(18)
        .amount_milli_satoshis(amount_msat)
        .expiry_time(std::time::Duration::from_secs(expiry_secs))
        .build_signed(|m| s.sign_ecdsa_recoverable(m, payee_key))
        .unwrap()
        .to_string()
}

fn show(p: &mut ChannelPair, bolt11: String) -> Result<pb::ShowInvoiceReply, SignerError> {
    call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11, amount_msat: 0 }) => ShowInvoice)
}

#[test]
fn pays_only_invoices_it_was_shown_for_their_amount() {
    let (alice, mut p) = attacked_with("hostile-invoiced", "payment_invoiced = true\n");
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    // No invoice shown for this payment hash.
    refused(&alice, p.offer(20_000_000, 5), RuleId::PaymentInvoiced);
    show(&mut p, invoice(5, 20_000_000, &payee, 3600)).expect("a valid invoice");
    p.offer(20_000_000, 5).expect("the invoice's amount");
    // More than the invoice asks (beyond the routing-fee allowance).
    show(&mut p, invoice(6, 10_000_000, &payee, 3600)).unwrap();
    refused(&alice, p.offer(30_000_000, 6), RuleId::PaymentInvoiced);
    // Garbage is not an invoice.
    let err = show(&mut p, "lnbcrt1garbage".into()).unwrap_err();
    assert_eq!(err.kind, lnpd_signer_core::ErrorKind::Invalid, "{err}");
    still_usable_invoiced(&mut p, &payee);
}

/// Honest use under `payment-invoiced`: show, then pay.
fn still_usable_invoiced(p: &mut ChannelPair, payee: &SecretKey) {
    show(p, invoice(0xb2, 5_000_000, payee, 3600)).unwrap();
    let h = p.add_htlc(5_000_000, 0xb2).expect("honest payment");
    p.settle_htlc(&h).expect("settled");
}

#[test]
fn pays_only_allowed_payees() {
    let (alice, mut p) = attacked_with("hostile-payees", "payee_allowlist = true\n");
    let stranger = SecretKey::from_slice(&[4; 32]).unwrap();
    refused(
        &alice,
        show(&mut p, invoice(7, 1_000_000, &stranger, 3600)),
        RuleId::PaymentPayeeAllowlist,
    );
    // Without an invoice the payee is unknown: refused when the HTLC comes.
    refused(&alice, p.offer(1_000_000, 7), RuleId::PaymentPayeeAllowlist);
    p.advance().expect("updates that pay nobody go on");
}

#[test]
fn refuses_an_invoice_beyond_the_limits_before_any_htlc() {
    let (alice, mut p) = attacked_with("hostile-early", "max_payment_sat = 30000\n");
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    refused(
        &alice,
        show(&mut p, invoice(8, 40_000_000, &payee, 3600)),
        RuleId::PaymentMax,
    );
    still_usable(&mut p);
}

#[test]
fn refuses_a_holder_commitment_that_moves_our_balance_away() {
    let (alice, mut p) = attacked("hostile-holder-balance");
    p.advance().unwrap();
    // The peer countersigns a commitment of ours that gives it 100k sat of
    // our balance without an HTLC.
    p.alice_msat -= 100_000_000;
    p.bob_msat += 100_000_000;
    let (mut req, _) = p.holder_request(true, p.number + 1).unwrap();
    req.release_previous = true;
    refused(
        &alice,
        call!(p.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment),
        RuleId::CommitmentBalanceConserved,
    );
    // Nothing moved: the last good commitment can still go on chain.
    let latest = pb::SignHolderCommitmentRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        commitment_number: p.number,
    };
    call!(p.alice.signer, SignHolderCommitment(latest) => Signature)
        .expect("the last validated commitment is still ours to broadcast");
}

#[test]
fn a_payment_above_the_threshold_waits_for_the_operator() {
    let (alice, mut p) = attacked_with(
        "hostile-approval",
        "approval_above_sat = 10000\napproval_timeout_secs = 600\n",
    );
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    // A node that skips showing the invoice gets nothing signed.
    refused(&alice, p.offer(20_000_000, 0x31), RuleId::PaymentApproval);
    // Shown, it waits; the HTLC is still refused while nobody approved.
    let waiting = show(&mut p, invoice(0x31, 20_000_000, &payee, 3600)).unwrap();
    assert!(waiting.awaiting_approval);
    let id = waiting.approval_id.clone();
    assert_eq!(id.len(), 16);
    refused(&alice, p.offer(20_000_000, 0x31), RuleId::PaymentApproval);
    let listed = operator(&alice, &["pending"]);
    assert!(
        listed.contains(&id) && listed.contains("20000 sat"),
        "{listed}"
    );
    assert!(
        show(&mut p, invoice(0x31, 20_000_000, &payee, 3600))
            .unwrap()
            .awaiting_approval
    );
    // The operator approves; the next showing applies it.
    assert!(operator(&alice, &["approve", &id]).contains("approved"));
    let approved = show(&mut p, invoice(0x31, 20_000_000, &payee, 3600)).unwrap();
    assert!(!approved.awaiting_approval);
    assert!(operator(&alice, &["log"]).contains("approved"));
    assert!(operator(&alice, &["pending"]).contains("no payment waits"));
    let h = p.offer(20_000_000, 0x31).expect("the approved payment");
    p.settle_htlc(&h).expect("settled");
    // Below the threshold nothing waits.
    assert!(
        !show(&mut p, invoice(0x32, 5_000_000, &payee, 3600))
            .unwrap()
            .awaiting_approval
    );
    still_usable(&mut p);
}

#[test]
fn a_denied_or_unanswered_payment_is_refused() {
    let (alice, mut p) = attacked_with(
        "hostile-approval-deny",
        "approval_above_sat = 10000\napproval_timeout_secs = 1\n",
    );
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    let bolt11 = invoice(0x33, 20_000_000, &payee, 3600);
    let id = show(&mut p, bolt11.clone()).unwrap().approval_id;
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let late = show(&mut p, bolt11.clone());
    assert!(
        matches!(&late, Err(e) if e.message.contains("not approved within")),
        "{late:?}"
    );
    refused(&alice, late, RuleId::PaymentApproval);
    // Shown again, it is a new request; this time the operator says no.
    let again = show(&mut p, bolt11.clone()).unwrap();
    assert!(again.awaiting_approval);
    assert_eq!(again.approval_id, id);
    assert!(operator(&alice, &["deny", &id]).contains("denied"));
    let denied = show(&mut p, bolt11);
    assert!(
        matches!(&denied, Err(e) if e.message.contains("denied by the operator")),
        "{denied:?}"
    );
    refused(&alice, p.offer(20_000_000, 0x33), RuleId::PaymentApproval);
    // An unknown id is an error the operator sees.
    let out = std::process::Command::new(lnpd_tests::signer_bin())
        .args(["approve", "0000000000", "--data-dir"])
        .arg(alice.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no payment waits"));
    still_usable(&mut p);
}

/// A BOLT 11 invoice without an amount (the payer names it).
fn invoice_without_amount(tag: u8, payee_key: &SecretKey) -> String {
    use bitcoin::hashes::{sha256, Hash};
    use lightning_invoice::{Currency, InvoiceBuilder};
    let s = Secp256k1::new();
    InvoiceBuilder::new(Currency::Regtest)
        .description("hostile test".into())
        .payment_hash(sha256::Hash::hash(&[tag; 32]))
        .payment_secret(lightning::types::payment::PaymentSecret([1; 32]))
        .duration_since_epoch(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap(),
        )
        .min_final_cltv_expiry_delta(18)
        .build_signed(|m| s.sign_ecdsa_recoverable(m, payee_key))
        .unwrap()
        .to_string()
}

#[test]
fn an_approval_covers_only_the_payment_the_operator_saw() {
    let (alice, mut p) = attacked_with(
        "hostile-approval-swap",
        "approval_above_sat = 10000\napproval_timeout_secs = 600\n",
    );
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    let bolt11 = invoice_without_amount(0x41, &payee);
    let show_for = |p: &mut ChannelPair, amount_msat: u64| call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11: bolt11.clone(), amount_msat }) => ShowInvoice);
    let id = show_for(&mut p, 20_000_000).unwrap().approval_id;
    assert!(operator(&alice, &["pending"]).contains("20000 sat"));
    operator(&alice, &["approve", &id]);
    // Before the answer is applied, the node names a far larger amount.
    let swapped = show_for(&mut p, 400_000_000).unwrap();
    assert!(
        swapped.awaiting_approval,
        "an answer for 20 000 sat does not cover 400 000"
    );
    assert!(operator(&alice, &["pending"]).contains("400000 sat"));
    refused(&alice, p.offer(400_000_000, 0x41), RuleId::PaymentApproval);
    still_usable(&mut p);
}

#[test]
fn splitting_a_payment_does_not_avoid_approval() {
    let (alice, mut p) = attacked_with(
        "hostile-approval-split",
        "approval_above_sat = 10000\napproval_timeout_secs = 600\n",
    );
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    // Shown and waiting: none of its parts is signed, however small.
    assert!(
        show(&mut p, invoice(0x42, 20_000_000, &payee, 3600))
            .unwrap()
            .awaiting_approval
    );
    refused(&alice, p.offer(5_000_000, 0x42), RuleId::PaymentApproval);
    // Never shown: parts under the threshold add up over it.
    p.offer(6_000_000, 0x43)
        .expect("one part under the threshold");
    refused(&alice, p.offer(6_000_000, 0x43), RuleId::PaymentApproval);
    still_usable(&mut p);
}

#[test]
fn a_second_htlc_just_like_the_first_counts_as_a_payment_too() {
    let (alice, mut p) = attacked_with(
        "hostile-duplicate",
        "velocity_limit_sat = 50000\nvelocity_window_secs = 3600\n",
    );
    p.offer(30_000_000, 5).expect("first payment");
    // Same hash, amount and expiry: still 30 000 sat more out of the channel.
    refused(&alice, p.offer(30_000_000, 5), RuleId::PaymentVelocity);
    still_usable(&mut p);
}
