//! The fund-safety invariants (docs/threat-model.md) against a compromised
//! node colluding with the peer: one test per attack class, each over gRPC
//! with mutual TLS to a real `lnpd-signer`. Every refusal must name its
//! rule (in the reply and the daemon's log) and leave the signer's whole
//! durable state byte-identical; the peer is the test itself, holding its
//! keys and countersigning whatever it likes.

use std::io::Read;
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{Amount, ScriptBuf, Transaction, TxOut};
use lnpd_proto::signer as pb;
use lnpd_signer_core::testing::{
    memory_signer, ChannelPair, Colluder, PairOptions, SignerHandle, TestChain, TestHtlc,
};
use lnpd_signer_core::{call, PolicyConfig, RuleId};
use lnpd_tests::hostile::*;
use lnpd_tests::SignerProcess;

/// Another channel of Alice's daemon, with the peer `tag` (Alice funds).
fn another(alice: &SignerProcess, tag: u8) -> ChannelPair {
    ChannelPair::open(
        Box::new(alice.client().expect("mTLS client")),
        Box::new(memory_signer(tag, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("channel opens")
}

/// Feeds Alice's daemon the test chain and proves `p`'s funding to it.
fn proven(p: &mut ChannelPair, chain: &mut TestChain) {
    let r = p.prove_funding(chain, 3).expect("funding proven");
    assert!(r.confirmations >= 3, "{r:?}");
}

#[test]
fn the_wallet_never_funds_a_channel_the_peer_funds() {
    let mut alice = SignerProcess::init_restored("inv-inbound", MNEMONIC).expect("init");
    alice.start().expect("starts");
    // The peer "funds" this channel: every commitment gives it everything.
    let inbound = ChannelPair::open(
        Box::new(memory_signer(5, PolicyConfig::default())),
        Box::new(alice.client().unwrap()),
        PairOptions {
            value_sat: 150_000,
            ..Default::default()
        },
    )
    .unwrap();
    let mut alice_handle = alice.client().unwrap();
    let psbt = wallet_psbt(vec![inbound.funding_output()], Version::TWO, None);
    attack(
        &alice,
        RuleId::OnchainFundingOutboundOnly,
        || call!(alice_handle, SignPsbt(psbt) => SignPsbt),
    );
}

#[test]
fn a_channel_is_funded_once_at_its_recorded_outpoint() {
    let mut alice = SignerProcess::init_restored("inv-funding", MNEMONIC).expect("init");
    alice.start().expect("starts");
    let mut p = ChannelPair::prepare(
        Box::new(alice.client().unwrap()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions {
            value_sat: 150_000,
            ..Default::default()
        },
    )
    .unwrap();
    // The funding transaction the node built from a wallet coin: its txid is
    // the channel's outpoint.
    let change = TxOut {
        value: Amount::from_sat(49_000),
        script_pubkey: wallet_script(1, 0),
    };
    let honest = wallet_psbt(vec![p.funding_output(), change], Version::TWO, None);
    let tx = bitcoin::Psbt::deserialize(&honest.psbt)
        .unwrap()
        .unsigned_tx;
    p.set_funding(tx, 0);
    p.exchange_first_commitments().unwrap();
    call!(p.alice.signer, SignPsbt(honest.clone()) => SignPsbt).expect("the funding is signed");
    call!(p.alice.signer, SignPsbt(honest) => SignPsbt).expect("the same funding again");
    // Another transaction funding the same channel.
    let change = TxOut {
        value: Amount::from_sat(48_000),
        script_pubkey: wallet_script(1, 0),
    };
    let again = wallet_psbt(vec![p.funding_output(), change], Version::TWO, None);
    attack(
        &alice,
        RuleId::OnchainFundingOutpoint,
        || call!(p.alice.signer, SignPsbt(again) => SignPsbt),
    );
    // The 2-of-2 twice in one transaction.
    let more = holding(
        TxOut {
            value: Amount::from_sat(200_000),
            script_pubkey: stranger(),
        },
        0,
    );
    let twice = wallet_psbt(
        vec![p.funding_output(), p.funding_output()],
        Version::TWO,
        Some(more),
    );
    attack(
        &alice,
        RuleId::OnchainFundingOutpoint,
        || call!(p.alice.signer, SignPsbt(twice) => SignPsbt),
    );
    still_usable(&mut p);
}

#[test]
fn sweeps_take_no_amount_on_trust() {
    let (alice, mut p) = attacked("inv-sweep-amounts");
    let wallet =
        call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script)
            .unwrap()
            .script_pubkey;
    let honest = sweep_request(&p, ScriptBuf::from_bytes(wallet), None);
    // Understating an input's amount (two such requests, understating
    // different inputs, would combine into one transaction burning the
    // difference in fees).
    let mut understated = honest.clone();
    if let Some(o) = understated.descriptors[0].output.as_mut() {
        o.value_sat = 60_000;
    }
    attack(
        &alice,
        RuleId::SweepInputProven,
        || call!(p.alice.signer, SpendSpendableOutputs(understated) => SpendSpendableOutputs),
    );
    let mut unproven = honest.clone();
    unproven.descriptors[0].previous_tx.clear();
    attack(
        &alice,
        RuleId::SweepInputProven,
        || call!(p.alice.signer, SpendSpendableOutputs(unproven) => SpendSpendableOutputs),
    );
    call!(p.alice.signer, SpendSpendableOutputs(honest) => SpendSpendableOutputs)
        .expect("the proven sweep");
    still_usable(&mut p);
}

/// Alice's next holder commitment with an HTLC she offers that only the
/// peer's signature puts there (no counterparty commitment carries it).
fn holder_only_htlc(
    p: &mut ChannelPair,
    amount_msat: u64,
    cltv_expiry: u32,
) -> pb::ValidateHolderCommitmentRequest {
    let h = TestHtlc {
        offered_by_alice: true,
        amount_msat,
        cltv_expiry,
        preimage: [0x77; 32],
    };
    p.alice_msat -= amount_msat;
    p.htlcs.push(h);
    let data = p.commitment_data(true, p.number + 1).unwrap();
    p.htlcs.pop();
    p.alice_msat += amount_msat;
    Colluder::new(2)
        .validation_request(p, true, data)
        .expect("the peer countersigns")
}

#[test]
fn htlcs_only_in_our_own_commitments_meet_the_payment_controls() {
    let (alice, mut p) = attacked_with("inv-holder-htlc", "max_payment_sat = 100000\n");
    let above = holder_only_htlc(&mut p, 400_000_000, 500);
    attack(
        &alice,
        RuleId::PaymentMax,
        || call!(p.alice.signer, ValidateHolderCommitment(above) => ValidateHolderCommitment),
    );
    let far = holder_only_htlc(&mut p, 50_000_000, 500_000);
    attack(
        &alice,
        RuleId::CommitmentHtlcCltvRange,
        || call!(p.alice.signer, ValidateHolderCommitment(far) => ValidateHolderCommitment),
    );
    still_usable(&mut p);
}

#[test]
fn a_forward_needs_an_incoming_htlc_on_a_channel_funded_on_chain() {
    let mut alice = SignerProcess::init_restored("inv-forward-funded", MNEMONIC).expect("init");
    let toml = alice.data_dir().join("signer.toml");
    let config =
        std::fs::read_to_string(&toml).unwrap() + "max_payment_sat = 10000\nallow_push = true\n";
    std::fs::write(&toml, config).unwrap();
    alice.start().expect("starts");
    // Alice pushed Bob a balance at open; he offers her 50k sat for hash 9.
    let mut with_bob = ChannelPair::open(
        Box::new(alice.client().unwrap()),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions {
            push_msat: 200_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    let mut with_carol = another(&alice, 3);
    with_bob.add_htlc_from_bob(50_000_000, 9).unwrap();
    // The channel with Bob was never proven funded: "forwarding" its HTLC
    // is a payment of Alice's own, above the limit.
    attack(&alice, RuleId::PaymentMax, || {
        with_carol.offer(40_000_000, 9)
    });
    let mut chain = TestChain::default();
    proven(&mut with_bob, &mut chain);
    with_carol
        .offer(40_000_000, 9)
        .expect("a forward covered by a funded, irrevocable incoming HTLC");
}

#[test]
fn an_incoming_htlc_covers_outgoing_value_once() {
    let (alice, mut with_bob) = attacked_with("inv-forward-once", "routing_balanced = true\n");
    let mut with_carol = another(&alice, 3);
    let h = with_bob.add_htlc(200_000_000, 1).unwrap();
    with_bob.settle_htlc(&h).unwrap();
    with_bob.add_htlc_from_bob(50_000_000, 9).unwrap();
    let mut chain = TestChain::default();
    proven(&mut with_bob, &mut chain);
    with_carol.offer(30_000_000, 9).expect("a covered forward");
    attack(&alice, RuleId::RoutingBalanced, || {
        with_carol.offer(30_000_000, 9)
    });
    with_carol
        .offer(20_000_000, 9)
        .expect("what is left of the cover");
}

/// A BOLT 11 invoice for the test HTLC tag `tag`, signed by `payee`.
fn invoice(tag: u8, amount_msat: u64, payee: &SecretKey) -> String {
    use lightning_invoice::{Currency, InvoiceBuilder};
    let s = Secp256k1::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    InvoiceBuilder::new(Currency::Regtest)
        .description("invariant test".into())
        .payment_hash(sha256::Hash::hash(&[tag; 32]))
        .payment_secret(lightning::types::payment::PaymentSecret([1; 32]))
        .duration_since_epoch(now)
        .min_final_cltv_expiry_delta(18)
        .amount_milli_satoshis(amount_msat)
        .expiry_time(Duration::from_secs(3600))
        .build_signed(|m| s.sign_ecdsa_recoverable(m, payee))
        .unwrap()
        .to_string()
}

#[test]
fn an_invoice_pays_once() {
    let (alice, mut p) = attacked_with("inv-invoice-once", "payment_invoiced = true\n");
    let payee = SecretKey::from_slice(&[4; 32]).unwrap();
    let bolt11 = invoice(5, 20_000_000, &payee);
    call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11: bolt11.clone(), amount_msat: 0 }) => ShowInvoice)
        .expect("a valid invoice");
    let h = p.offer(20_000_000, 5).expect("the invoice paid");
    p.settle_htlc(&h).unwrap();
    // The same invoice again: in a new HTLC, or shown anew first.
    attack(&alice, RuleId::InvoicePaidOnce, || p.offer(20_000_000, 5));
    attack(
        &alice,
        RuleId::InvoicePaidOnce,
        || call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11, amount_msat: 0 }) => ShowInvoice),
    );
    // An invoice without an amount: the node names it; paid once, shown
    // again with a larger one, it is refused.
    let open_amount = invoice_without_amount(6, &payee);
    call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11: open_amount.clone(), amount_msat: 10_000_000 }) => ShowInvoice)
        .expect("an amount-less invoice with the node's amount");
    let h = p.offer(10_000_000, 6).expect("paid");
    p.settle_htlc(&h).unwrap();
    attack(
        &alice,
        RuleId::InvoicePaidOnce,
        || call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11: open_amount, amount_msat: 50_000_000 }) => ShowInvoice),
    );
    still_usable_with_invoice(&mut p, &payee);
}

/// A BOLT 11 invoice without an amount for the test HTLC tag `tag`.
fn invoice_without_amount(tag: u8, payee: &SecretKey) -> String {
    use lightning_invoice::{Currency, InvoiceBuilder};
    let s = Secp256k1::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    InvoiceBuilder::new(Currency::Regtest)
        .description("any amount".into())
        .payment_hash(sha256::Hash::hash(&[tag; 32]))
        .payment_secret(lightning::types::payment::PaymentSecret([1; 32]))
        .duration_since_epoch(now)
        .min_final_cltv_expiry_delta(18)
        .expiry_time(Duration::from_secs(3600))
        .build_signed(|m| s.sign_ecdsa_recoverable(m, payee))
        .unwrap()
        .to_string()
}

fn still_usable_with_invoice(p: &mut ChannelPair, payee: &SecretKey) {
    let bolt11 = invoice(0xb3, 5_000_000, payee);
    call!(p.alice.signer, ShowInvoice(pb::ShowInvoiceRequest { bolt11, amount_msat: 0 }) => ShowInvoice)
        .unwrap();
    let h = p.add_htlc(5_000_000, 0xb3).expect("honest payment");
    p.settle_htlc(&h).expect("settled");
}

#[test]
fn justice_and_htlc_claims_bring_the_value_home() {
    let (alice, mut p) = attacked("inv-justice");
    // Bob gets a balance: his commitments carry a to_local.
    let h = p.add_htlc(300_000_000, 4).unwrap();
    p.settle_htlc(&h).unwrap();
    let revoked_number = p.number;
    let revoked = p.commitment_data(false, revoked_number).unwrap();
    p.advance().unwrap();
    let secret = call!(p.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: p.bob.keys_id.clone(), commitment_number: revoked_number,
    }) => ReleaseCommitmentSecret)
    .unwrap()
    .secret;
    let revoked_tx: Transaction = bitcoin::consensus::deserialize(&revoked.transaction).unwrap();
    let (vout, value) = revoked_tx
        .output
        .iter()
        .enumerate()
        .find(|(_, o)| o.value.to_sat() == 300_000)
        .map(|(i, o)| (i as u32, o.value.to_sat()))
        .expect("Bob's to_local");
    let wallet =
        call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script)
            .unwrap()
            .script_pubkey;
    let justice = |out_sat: u64, secret: Vec<u8>| pb::SignJusticeRevokedOutputRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        tx: Some(pb::UnsignedTx {
            version: 2,
            lock_time: 0,
            inputs: vec![pb::TxIn {
                previous_output: Some(pb::OutPoint {
                    txid: revoked_tx.compute_txid().to_byte_array().to_vec(),
                    vout,
                }),
                sequence: 0xffff_fffd,
            }],
            outputs: vec![pb::TxOut {
                value_sat: out_sat,
                script_pubkey: wallet.clone(),
            }],
        }),
        input_index: 0,
        amount_sat: value,
        per_commitment_secret: secret,
        previous_txs: vec![revoked.transaction.clone()],
        ..Default::default()
    };
    // Home, but nearly all of it burnt in fees.
    let burn = justice(1_000, secret.clone());
    attack(
        &alice,
        RuleId::SweepFeeRange,
        || call!(p.alice.signer, SignJusticeRevokedOutput(burn) => Signature),
    );
    // Any secret but the one the peer revealed for that commitment.
    let forged = justice(value - 2_000, vec![0x42; 32]);
    attack(
        &alice,
        RuleId::SweepJusticeSecret,
        || call!(p.alice.signer, SignJusticeRevokedOutput(forged) => Signature),
    );
    call!(p.alice.signer, SignJusticeRevokedOutput(justice(value - 2_000, secret)) => Signature)
        .expect("honest justice");

    // An HTLC Bob offers Alice on his latest commitment, claimed with its
    // preimage, nearly all of it burnt in fees.
    let incoming = p.add_htlc_from_bob(90_000_000, 8).unwrap();
    let theirs = p.commitment_data(false, p.number).unwrap();
    let theirs_tx: Transaction = bitcoin::consensus::deserialize(&theirs.transaction).unwrap();
    let htlc_vout = theirs_tx
        .output
        .iter()
        .position(|o| o.value.to_sat() == 90_000)
        .expect("the HTLC output") as u32;
    let claim = |out_sat: u64| pb::SignCounterpartyHtlcSweepRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        tx: Some(pb::UnsignedTx {
            version: 2,
            lock_time: 0,
            inputs: vec![pb::TxIn {
                previous_output: Some(pb::OutPoint {
                    txid: theirs_tx.compute_txid().to_byte_array().to_vec(),
                    vout: htlc_vout,
                }),
                sequence: 1,
            }],
            outputs: vec![pb::TxOut {
                value_sat: out_sat,
                script_pubkey: wallet.clone(),
            }],
        }),
        input_index: 0,
        amount_sat: 90_000,
        per_commitment_point: theirs.per_commitment_point.clone(),
        htlc: Some(pb::Htlc {
            direction: pb::HtlcDirection::Offered as i32,
            amount_msat: incoming.amount_msat,
            cltv_expiry: incoming.cltv_expiry,
            payment_hash: incoming.payment_hash().to_vec(),
        }),
        previous_txs: vec![],
    };
    let burn = claim(1_000);
    attack(
        &alice,
        RuleId::SweepFeeRange,
        || call!(p.alice.signer, SignCounterpartyHtlcSweep(burn) => Signature),
    );
    call!(p.alice.signer, SignCounterpartyHtlcSweep(claim(88_000)) => Signature)
        .expect("an honest claim");
}

#[test]
fn channels_are_set_up_only_with_keys_ids_the_signer_issued() {
    let (alice, mut p) = attacked("inv-keys-ids");
    let mut forged = p.alice.setup.clone();
    forged.channel_keys_id = vec![0x33; 32];
    forged.funding_outpoint = Some(pb::OutPoint {
        txid: vec![0x34; 32],
        vout: 0,
    });
    attack(
        &alice,
        RuleId::ChannelKeysIdIssued,
        || call!(p.alice.signer, SetupChannel(forged) => SetupChannel),
    );
    // The same seed restored onto empty state: the old channel's id (with
    // its keys and released secrets) is not taken as new.
    let mut restored = SignerProcess::init_restored("inv-keys-ids-restored", MNEMONIC).unwrap();
    restored.start().unwrap();
    let mut old = p.alice.setup.clone();
    old.funding_outpoint = Some(pb::OutPoint {
        txid: vec![0x35; 32],
        vout: 1,
    });
    let mut client = restored.client().unwrap();
    attack(
        &restored,
        RuleId::ChannelKeysIdIssued,
        || call!(client, SetupChannel(old) => SetupChannel),
    );
    // One channel per funding outpoint.
    let id = call!(p.alice.signer, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
        .unwrap()
        .channel_keys_id;
    let mut same_outpoint = p.alice.setup.clone();
    same_outpoint.channel_keys_id = id;
    attack(
        &alice,
        RuleId::ChannelFundingUnique,
        || call!(p.alice.signer, SetupChannel(same_outpoint) => SetupChannel),
    );
    still_usable(&mut p);
}

#[test]
fn resources_the_node_asks_for_are_capped() {
    let (alice, mut p) = attacked_with(
        "inv-resources",
        "max_pending_channels = 20\nmax_wallet_scripts = 8\n",
    );
    // Keys ids issued but never set up: the oldest go.
    for _ in 0..60 {
        call!(p.alice.signer, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
            .unwrap();
    }
    let records = state_of(&alice).channels.len();
    assert!(records <= 21, "{records} channel records after 60 ids");
    // A first commitment parked before set-up is small: no junk kept.
    let id = call!(p.alice.signer, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
        .unwrap()
        .channel_keys_id;
    let mut first = p.commitment_data(true, 0).unwrap();
    first.transaction = vec![0u8; 1_000_000];
    let junk = pb::ValidateHolderCommitmentRequest {
        channel_keys_id: id,
        commitment: Some(first),
        counterparty_signature: vec![1; 64],
        ..Default::default()
    };
    attack(
        &alice,
        RuleId::ResourceLimit,
        || call!(p.alice.signer, ValidateHolderCommitment(junk) => ValidateHolderCommitment),
    );
    // Wallet scripts handed out.
    let mut handed = 0;
    let refused_after = loop {
        match call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script) {
            Ok(_) => handed += 1,
            Err(e) => break e,
        }
        assert!(handed < 100, "wallet scripts without end");
    };
    assert_eq!(refused_after.rule, Some(RuleId::ResourceLimit));
    attack(
        &alice,
        RuleId::ResourceLimit,
        || call!(p.alice.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script),
    );
    still_usable(&mut p);
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn idle_connections_are_capped_and_dropped() {
    let (alice, mut p) = attacked_with(
        "inv-idle",
        "\n[server]\nhandshake_timeout_secs = 2\nmax_connections = 64\nmax_connections_per_ip = 48\n",
    );
    let pid = alice.pid().expect("running");
    let before = open_fds(pid);
    let addr = alice.addr.clone().unwrap();
    // 300 connections that never send a TLS handshake.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(pid);
    assert!(
        during <= before + 48 + 4,
        "the signer holds {during} descriptors (was {before}) with 300 idle connections"
    );
    // The node's own connection (opened before) goes on working.
    still_usable(&mut p);
    // The idle ones are dropped once the handshake timeout passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    for mut s in idle {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "every idle connection is closed");
    assert!(open_fds(pid) <= before + 4, "descriptors freed");
    // A new client connects as usual.
    let mut fresh = alice.client().unwrap();
    call!(fresh, Ping(pb::PingRequest { nonce: vec![1] }) => Ping).expect("a new connection");
}

#[test]
fn an_incoming_htlc_whose_forward_was_paid_is_never_failed_back() {
    let (alice, mut with_bob) = attacked("inv-incoming-claimed");
    let mut with_carol = another(&alice, 3);
    let h = with_bob.add_htlc(200_000_000, 1).unwrap();
    with_bob.settle_htlc(&h).unwrap();
    let incoming = with_bob.add_htlc_from_bob(50_000_000, 9).unwrap();
    let mut chain = TestChain::default();
    proven(&mut with_bob, &mut chain);
    // Alice forwards it to Carol. While the forward is in flight, the
    // incoming HTLC cannot go back to Bob (Carol could still be paid).
    let out = with_carol.offer(49_000_000, 9).expect("a covered forward");
    attack(&alice, RuleId::RoutingIncomingClaimed, || {
        with_bob.fail_htlc(&incoming)
    });
    with_bob.htlcs.push(incoming.clone());
    with_bob.bob_msat -= incoming.amount_msat;
    // Carol is paid (she shows the preimage).
    with_carol.settle_htlc(&out).expect("Carol is paid");
    // The incoming HTLC, whose preimage Alice now knows, failed back to Bob.
    attack(&alice, RuleId::RoutingIncomingClaimed, || {
        with_bob.fail_htlc(&incoming)
    });
}

/// An unsigned invoice of `currency` as LDK hands it over: human-readable
/// part and data (5-bit values).
fn unsigned_invoice(currency: lightning_invoice::Currency) -> (String, Vec<u8>) {
    let raw = lightning_invoice::InvoiceBuilder::new(currency)
        .description("coffee".into())
        .payment_hash(sha256::Hash::hash(&[1; 32]))
        .payment_secret(lightning::types::payment::PaymentSecret([2; 32]))
        .duration_since_epoch(Duration::from_secs(1_700_000_000))
        .min_final_cltv_expiry_delta(144)
        .amount_milli_satoshis(100_000)
        .build_raw()
        .unwrap();
    let (hrp, data) = raw.to_raw();
    (hrp, data.iter().map(|v| v.to_u8()).collect())
}

#[test]
fn the_node_key_signs_only_what_it_is_shown_to_be() {
    let (alice, mut p) = attacked("inv-node-key");
    // An invoice of another network, and data that is no invoice at all.
    let (hrp, data) = unsigned_invoice(lightning_invoice::Currency::Bitcoin);
    let mainnet = pb::SignInvoiceRequest {
        recipient: 0,
        hrp,
        data_u5: data,
    };
    attack(
        &alice,
        RuleId::InvoiceSignFormat,
        || call!(p.alice.signer, SignInvoice(mainnet) => RecoverableSignature),
    );
    let (hrp, _) = unsigned_invoice(lightning_invoice::Currency::Regtest);
    let junk = pb::SignInvoiceRequest {
        recipient: 0,
        hrp,
        data_u5: (0..52u8).map(|i| i % 32).collect(),
    };
    attack(
        &alice,
        RuleId::InvoiceSignFormat,
        || call!(p.alice.signer, SignInvoice(junk) => RecoverableSignature),
    );

    // A channel announcement pairing our node with a key of no channel of ours.
    use lightning::routing::gossip::NodeId;
    use lightning::util::ser::Writeable;
    let node = call!(p.alice.signer, GetNodeId(pb::GetNodeIdRequest { recipient: 0 }) => GetNodeId)
        .unwrap()
        .node_id;
    let node = NodeId::from_slice(&node).unwrap();
    let foreign = NodeId::from_slice(&p.bob.pubkeys.funding_pubkey).unwrap();
    let ours = NodeId::from_slice(&p.alice.pubkeys.funding_pubkey).unwrap();
    let announcement = |bitcoin_key_1: NodeId| lightning::ln::msgs::UnsignedChannelAnnouncement {
        features: lightning::types::features::ChannelFeatures::empty(),
        chain_hash: bitcoin::constants::ChainHash::REGTEST,
        short_channel_id: 42,
        node_id_1: node,
        node_id_2: NodeId::from_slice(&p.bob.pubkeys.payment_point).unwrap(),
        bitcoin_key_1,
        bitcoin_key_2: foreign,
        excess_data: vec![],
    };
    let stolen = pb::SignGossipRequest {
        kind: pb::GossipKind::ChannelAnnouncement as i32,
        unsigned_message: announcement(foreign).encode(),
    };
    attack(
        &alice,
        RuleId::GossipAnnouncementKeys,
        || call!(p.alice.signer, SignGossip(stolen) => Signature),
    );
    let honest = pb::SignGossipRequest {
        kind: pb::GossipKind::ChannelAnnouncement as i32,
        unsigned_message: announcement(ours).encode(),
    };
    call!(p.alice.signer, SignGossip(honest) => Signature).expect("our own channel's announcement");
    still_usable(&mut p);
}
