//! The signing operations besides commitments, each checked against keys
//! and scripts derived independently in the test: wallet PSBTs, sweeps of
//! spendable outputs, invoices, messages, gossip, announcements, closing,
//! second-stage HTLC, justice and anchor spends.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, CompressedPublicKey, Network, OutPoint, Psbt,
    ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use lnpd_proto::signer as pb;
use lnpd_signer_core::call;
use lnpd_signer_core::testing::{memory_signer, ChannelPair, PairOptions};
use lnpd_signer_core::{ErrorKind, PolicyConfig, RuleId};

fn secp() -> Secp256k1<bitcoin::secp256k1::All> {
    Secp256k1::new()
}

/// The wallet key at m/84'/1'/0'/chain/index of the test signer with seed `[tag; 32]`.
fn wallet_key(
    tag: u8,
    chain: u32,
    index: u32,
) -> (SecretKey, bitcoin::bip32::Fingerprint, DerivationPath) {
    let s = secp();
    let master = Xpriv::new_master(Network::Regtest, &[tag; 32]).unwrap();
    let path = DerivationPath::from_str(&format!("m/84'/1'/0'/{chain}/{index}")).unwrap();
    (
        master.derive_priv(&s, &path).unwrap().private_key,
        master.fingerprint(&s),
        path,
    )
}

fn wpkh(pk: &PublicKey) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(*pk).wpubkey_hash())
}

fn sig(bytes: &[u8]) -> Signature {
    Signature::from_compact(bytes).expect("64-byte signature")
}

fn unsigned(inputs: Vec<(OutPoint, u32)>, outputs: Vec<TxOut>, lock_time: u32) -> pb::UnsignedTx {
    pb::UnsignedTx {
        version: 2,
        lock_time,
        inputs: inputs
            .into_iter()
            .map(|(o, seq)| pb::TxIn {
                previous_output: Some(pb::OutPoint {
                    txid: o.txid.to_byte_array().to_vec(),
                    vout: o.vout,
                }),
                sequence: seq,
            })
            .collect(),
        outputs: outputs
            .into_iter()
            .map(|o| pb::TxOut {
                value_sat: o.value.to_sat(),
                script_pubkey: o.script_pubkey.to_bytes(),
            })
            .collect(),
    }
}

/// A transaction (spending nothing real) whose output `vout` is `out`: the
/// proof a sweep request carries of the amount it spends.
fn holding(out: TxOut, vout: u32, tag: u8) -> Transaction {
    let filler = TxOut {
        value: Amount::from_sat(1_000),
        script_pubkey: ScriptBuf::new_op_return([tag]),
    };
    let mut output = vec![filler; vout as usize];
    output.push(out);
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([tag; 32]),
                vout: 0,
            },
            ..Default::default()
        }],
        output,
    }
}

fn to_tx(u: &pb::UnsignedTx) -> Transaction {
    Transaction {
        version: Version(u.version),
        lock_time: LockTime::from_consensus(u.lock_time),
        input: u
            .inputs
            .iter()
            .map(|i| {
                let o = i.previous_output.as_ref().unwrap();
                TxIn {
                    previous_output: OutPoint {
                        txid: Txid::from_slice(&o.txid).unwrap(),
                        vout: o.vout,
                    },
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence(i.sequence),
                    witness: Witness::new(),
                }
            })
            .collect(),
        output: u
            .outputs
            .iter()
            .map(|o| TxOut {
                value: Amount::from_sat(o.value_sat),
                script_pubkey: ScriptBuf::from_bytes(o.script_pubkey.clone()),
            })
            .collect(),
    }
}

#[test]
fn signs_wallet_psbt_inputs_and_only_those() {
    let s = secp();
    let mut signer = memory_signer(5, PolicyConfig::default());
    let (key, fp, path) = wallet_key(5, 0, 3);
    let pk = PublicKey::from_secret_key(&s, &key);
    let (change_key, _, _) = wallet_key(5, 1, 0);
    let change = wpkh(&PublicKey::from_secret_key(&s, &change_key));
    let foreign_pk = PublicKey::from_secret_key(&s, &SecretKey::from_slice(&[9; 32]).unwrap());
    // The previous transaction: pays our key (vout 0) and a stranger (vout 1).
    let prev_tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![
            TxOut {
                value: Amount::from_sat(50_000),
                script_pubkey: wpkh(&pk),
            },
            TxOut {
                value: Amount::from_sat(10_000),
                script_pubkey: wpkh(&foreign_pk),
            },
        ],
    };
    let prev_txid = prev_tx.compute_txid();
    let psbt_for = |outputs: Vec<TxOut>| {
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![
                TxIn {
                    previous_output: OutPoint {
                        txid: prev_txid,
                        vout: 0,
                    },
                    ..Default::default()
                },
                TxIn {
                    previous_output: OutPoint {
                        txid: prev_txid,
                        vout: 1,
                    },
                    ..Default::default()
                },
            ],
            output: outputs,
        };
        let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
        for (i, input) in psbt.inputs.iter_mut().enumerate() {
            input.non_witness_utxo = Some(prev_tx.clone());
            input.witness_utxo = Some(prev_tx.output[i].clone());
        }
        psbt.inputs[0]
            .bip32_derivation
            .insert(pk, (fp, path.clone()));
        psbt
    };
    // Consolidation into our own change: signed, our input only.
    let psbt = psbt_for(vec![TxOut {
        value: Amount::from_sat(59_000),
        script_pubkey: change.clone(),
    }]);
    let reply = call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: psbt.serialize() }) => SignPsbt)
        .unwrap();
    assert_eq!(reply.signed_inputs, vec![0]);
    let signed = Psbt::deserialize(&reply.psbt).unwrap();
    let partial = signed.inputs[0]
        .partial_sigs
        .get(&bitcoin::PublicKey::new(pk))
        .expect("signature for our input");
    let h = SighashCache::new(&psbt.unsigned_tx)
        .p2wpkh_signature_hash(
            0,
            &wpkh(&pk),
            Amount::from_sat(50_000),
            EcdsaSighashType::All,
        )
        .unwrap();
    s.verify_ecdsa(
        &Message::from_digest(h.to_byte_array()),
        &partial.signature,
        &pk,
    )
    .expect("valid wallet signature");
    assert!(signed.inputs[1].partial_sigs.is_empty());

    // Paying a stranger: refused (no allow-list entry).
    let away = psbt_for(vec![TxOut {
        value: Amount::from_sat(59_000),
        script_pubkey: wpkh(&foreign_pk),
    }]);
    let err = call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: away.serialize() }) => SignPsbt)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::OnchainOutputsKnown));

    // Burning most of it in fees: refused.
    let burn = psbt_for(vec![TxOut {
        value: Amount::from_sat(1_000),
        script_pubkey: change.clone(),
    }]);
    let err = call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: burn.serialize() }) => SignPsbt)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::OnchainFeeRange));

    // Amounts must be proven by the previous transaction.
    let mut unproven = psbt_for(vec![TxOut {
        value: Amount::from_sat(59_000),
        script_pubkey: change.clone(),
    }]);
    unproven.inputs[0].non_witness_utxo = None;
    let err =
        call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: unproven.serialize() }) => SignPsbt)
            .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);

    // A key origin that does not match the spent output is refused.
    let mut bad = psbt_for(vec![TxOut {
        value: Amount::from_sat(59_000),
        script_pubkey: change,
    }]);
    bad.inputs[0].bip32_derivation.clear();
    bad.inputs[0]
        .bip32_derivation
        .insert(foreign_pk, (fp, path.clone()));
    let err = call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: bad.serialize() }) => SignPsbt)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);

    // Change far along the internal chain (the node's own counter) is the
    // wallet's when the PSBT proves its key origin; a zero-value OP_RETURN
    // pays nobody.
    let (far_key, _, far_path) = wallet_key(5, 1, 5_000);
    let far_pk = PublicKey::from_secret_key(&s, &far_key);
    let mut far = psbt_for(vec![
        TxOut {
            value: Amount::from_sat(59_000),
            script_pubkey: wpkh(&far_pk),
        },
        TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::new_op_return([]),
        },
    ]);
    let err = call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: far.serialize() }) => SignPsbt)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::OnchainOutputsKnown));
    far.outputs[0]
        .bip32_derivation
        .insert(far_pk, (fp, far_path));
    call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: far.serialize() }) => SignPsbt)
        .expect("change with its key origin proven");
    // A key origin that is not the output's key proves nothing.
    let mut lying = psbt_for(vec![TxOut {
        value: Amount::from_sat(59_000),
        script_pubkey: wpkh(&foreign_pk),
    }]);
    lying.outputs[0]
        .bip32_derivation
        .insert(foreign_pk, (fp, wallet_key(5, 1, 7).2));
    let err = call!(signer, SignPsbt(pb::SignPsbtRequest { psbt: lying.serialize() }) => SignPsbt)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::OnchainOutputsKnown));
}

#[test]
fn the_wallet_pays_fees_within_its_budget() {
    let s = secp();
    let mut signer = memory_signer(
        5,
        PolicyConfig {
            onchain_fee_budget_sat: Some(5_000),
            ..Default::default()
        },
    );
    signer.set_time(1_000_000);
    let (key, fp, path) = wallet_key(5, 0, 3);
    let pk = PublicKey::from_secret_key(&s, &key);
    let spend = |tag: u8| {
        let prev = holding(
            TxOut {
                value: Amount::from_sat(50_000),
                script_pubkey: wpkh(&pk),
            },
            0,
            tag,
        );
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: prev.compute_txid(),
                    vout: 0,
                },
                ..Default::default()
            }],
            output: vec![TxOut {
                value: Amount::from_sat(47_000),
                script_pubkey: wpkh(&pk),
            }],
        };
        let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
        psbt.inputs[0].non_witness_utxo = Some(prev.clone());
        psbt.inputs[0].witness_utxo = Some(prev.output[0].clone());
        psbt.inputs[0]
            .bip32_derivation
            .insert(pk, (fp, path.clone()));
        pb::SignPsbtRequest {
            psbt: psbt.serialize(),
        }
    };
    // 3 000 sat of fees each: the second is within the 5 000 sat budget, not.
    call!(signer, SignPsbt(spend(1)) => SignPsbt).expect("within the budget");
    let err = call!(signer, SignPsbt(spend(2)) => SignPsbt).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::OnchainFeeRange), "{err}");
    // A window later, the budget is back.
    signer.set_time(1_000_000 + 86_401);
    call!(signer, SignPsbt(spend(3)) => SignPsbt).expect("a new window");
}

#[test]
fn wallet_descriptor_matches_the_keys() {
    let s = secp();
    let mut signer = memory_signer(5, PolicyConfig::default());
    let d = call!(signer, GetWalletDescriptor(pb::GetWalletDescriptorRequest {}) => GetWalletDescriptor).unwrap();
    let (key, fp, _) = wallet_key(5, 0, 0);
    assert!(d
        .external_descriptor
        .starts_with(&format!("wpkh([{fp}/84h/1h/0h]tpub")));
    assert!(d.external_descriptor.contains("/0/*)#") && d.internal_descriptor.contains("/1/*)#"));
    let account = bitcoin::bip32::Xpub::from_str(&d.account_xpub).unwrap();
    let child = account
        .derive_pub(&s, &DerivationPath::from_str("m/0/0").unwrap())
        .unwrap();
    assert_eq!(child.public_key, PublicKey::from_secret_key(&s, &key));
}

#[test]
fn sweeps_our_outputs_into_the_wallet_with_valid_signatures() {
    let s = secp();
    let mut p = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions {
            anchors: false,
            ..Default::default()
        },
    )
    .unwrap();
    // to_remote on a static_remote_key channel is P2WPKH of our payment point.
    let payment_point = PublicKey::from_slice(&p.alice.pubkeys.payment_point).unwrap();
    let (change_key, _, _) = wallet_key(1, 1, 0);
    let change = wpkh(&PublicKey::from_secret_key(&s, &change_key));
    let prev = holding(
        TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: wpkh(&payment_point),
        },
        1,
        7,
    );
    let out = OutPoint {
        txid: prev.compute_txid(),
        vout: 1,
    };
    let req = pb::SpendSpendableOutputsRequest {
        descriptors: vec![pb::SpendableOutput {
            outpoint: Some(pb::OutPoint {
                txid: out.txid.to_byte_array().to_vec(),
                vout: 1,
            }),
            output: Some(pb::TxOut {
                value_sat: 100_000,
                script_pubkey: wpkh(&payment_point).to_bytes(),
            }),
            previous_tx: bitcoin::consensus::serialize(&prev),
            kind: Some(pb::spendable_output::Kind::StaticPayment(
                pb::StaticPaymentOutput {
                    channel_keys_id: p.alice.keys_id.clone(),
                },
            )),
        }],
        outputs: vec![],
        change_script: change.to_bytes(),
        feerate_sat_per_kw: 2000,
        lock_time: None,
    };
    let reply =
        call!(p.alice.signer, SpendSpendableOutputs(req.clone()) => SpendSpendableOutputs).unwrap();
    let tx: Transaction = bitcoin::consensus::deserialize(&reply.transaction).unwrap();
    assert_eq!(tx.output.len(), 1);
    assert_eq!(tx.output[0].script_pubkey, change);
    let fee = 100_000 - tx.output[0].value.to_sat();
    let at_rate = tx.weight().to_wu() * 2000 / 1000;
    assert!(
        fee >= at_rate && fee <= at_rate + 10,
        "fee {fee} pays the feerate ({at_rate} sat for the signed weight)"
    );
    let w: Vec<&[u8]> = tx.input[0].witness.iter().collect();
    assert_eq!(w[1], payment_point.serialize());
    let h = SighashCache::new(&tx)
        .p2wpkh_signature_hash(
            0,
            &wpkh(&payment_point),
            Amount::from_sat(100_000),
            EcdsaSighashType::All,
        )
        .unwrap();
    let der = &w[0][..w[0].len() - 1];
    s.verify_ecdsa(
        &Message::from_digest(h.to_byte_array()),
        &Signature::from_der(der).unwrap(),
        &payment_point,
    )
    .expect("valid sweep signature");

    // A feerate far above the limit would burn the output in fees.
    let mut greedy = req.clone();
    greedy.feerate_sat_per_kw = 200_000;
    let err =
        call!(p.alice.signer, SpendSpendableOutputs(greedy) => SpendSpendableOutputs).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepFeeRange));

    // Paying anywhere but the wallet is refused.
    let mut away = req.clone();
    away.change_script = wpkh(&PublicKey::from_secret_key(
        &s,
        &SecretKey::from_slice(&[3; 32]).unwrap(),
    ))
    .to_bytes();
    let err =
        call!(p.alice.signer, SpendSpendableOutputs(away) => SpendSpendableOutputs).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepDestinationAllowed));

    // Without the transaction that holds it, an amount is not taken on trust.
    let mut unproven = req.clone();
    unproven.descriptors[0].previous_tx.clear();
    let err = call!(p.alice.signer, SpendSpendableOutputs(unproven) => SpendSpendableOutputs)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepInputProven));
    // An amount other than the transaction's is refused.
    let mut understated = req.clone();
    if let Some(o) = understated.descriptors[0].output.as_mut() {
        o.value_sat = 50_000;
    }
    let err = call!(p.alice.signer, SpendSpendableOutputs(understated) => SpendSpendableOutputs)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepInputProven));
    // Another transaction than the one the outpoint names, too.
    let mut other = req;
    other.descriptors[0].previous_tx = bitcoin::consensus::serialize(&holding(
        TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: wpkh(&payment_point),
        },
        1,
        8,
    ));
    let err =
        call!(p.alice.signer, SpendSpendableOutputs(other) => SpendSpendableOutputs).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepInputProven));
}

#[test]
fn node_key_signatures_verify_against_the_node_id() {
    let s = secp();
    let mut signer = memory_signer(4, PolicyConfig::default());
    let node_id = signer.node_id();

    // BOLT 11: a recoverable signature over SHA256(hrp || data) recovers the node id.
    let (hrp, data) = unsigned_invoice(lightning_invoice::Currency::Regtest);
    let r = call!(signer, SignInvoice(pb::SignInvoiceRequest { recipient: 0, hrp: hrp.clone(), data_u5: data.clone() }) => RecoverableSignature).unwrap();
    let rec = bitcoin::secp256k1::ecdsa::RecoverableSignature::from_compact(
        &r.signature,
        bitcoin::secp256k1::ecdsa::RecoveryId::from_i32(r.recovery_id).unwrap(),
    )
    .unwrap();
    let hash = lnpd_signer_invoice_hash(&hrp, &data);
    assert_eq!(
        s.recover_ecdsa(&Message::from_digest(hash), &rec).unwrap(),
        node_id
    );

    // Only this network's invoices, and only data that is an invoice: the
    // node key signs digests of other messages too.
    let (main_hrp, main_data) = unsigned_invoice(lightning_invoice::Currency::Bitcoin);
    let err = call!(signer, SignInvoice(pb::SignInvoiceRequest { recipient: 0, hrp: main_hrp, data_u5: main_data }) => RecoverableSignature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::InvoiceSignFormat));
    let junk: Vec<u8> = (0..52u8).map(|i| i % 32).collect();
    let err = call!(signer, SignInvoice(pb::SignInvoiceRequest { recipient: 0, hrp: hrp.clone(), data_u5: junk }) => RecoverableSignature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::InvoiceSignFormat));

    // sign_message: LDK's verifier accepts it for our node id.
    let m = call!(signer, SignMessage(pb::SignMessageRequest { message: b"hello".to_vec() }) => SignMessage).unwrap();
    assert!(lightning::util::message_signing::verify(
        b"hello",
        &m.signature,
        &node_id
    ));

    // ECDH: the same shared secret from the other side.
    let other = SecretKey::from_slice(&[8; 32]).unwrap();
    let e = call!(signer, Ecdh(pb::EcdhRequest { recipient: 0, other_key: PublicKey::from_secret_key(&s, &other).serialize().to_vec(), tweak: None }) => Ecdh).unwrap();
    assert_eq!(
        e.shared_secret,
        bitcoin::secp256k1::ecdh::SharedSecret::new(&node_id, &other)
            .secret_bytes()
            .to_vec()
    );

    // Phantom recipients are refused rather than answered with the node key.
    assert!(call!(signer, GetNodeId(pb::GetNodeIdRequest { recipient: 1 }) => GetNodeId).is_err());

    // Gossip: a node_announcement for another node is refused.
    let mut ann = vec![0u8, 0, 0, 0, 0, 1]; // features len 0, timestamp
    ann.extend_from_slice(&PublicKey::from_secret_key(&s, &other).serialize());
    ann.extend_from_slice(&[0u8; 3 + 32 + 2]);
    let err = call!(signer, SignGossip(pb::SignGossipRequest { kind: pb::GossipKind::NodeAnnouncement as i32, unsigned_message: ann.clone() }) => Signature).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    ann[6..39].copy_from_slice(&node_id.serialize());
    let g = call!(signer, SignGossip(pb::SignGossipRequest { kind: pb::GossipKind::NodeAnnouncement as i32, unsigned_message: ann.clone() }) => Signature).unwrap();
    let digest = Message::from_digest(sha256d::Hash::hash(&ann).to_byte_array());
    s.verify_ecdsa(&digest, &sig(&g.signature), &node_id)
        .expect("valid gossip signature");
}

/// BOLT 11's signed hash, computed here independently of the signer.
/// An unsigned invoice of `currency`, as LDK hands it to the signer:
/// its human-readable part and its data part (5-bit values).
fn unsigned_invoice(currency: lightning_invoice::Currency) -> (String, Vec<u8>) {
    let raw = lightning_invoice::InvoiceBuilder::new(currency)
        .description("coffee".into())
        .payment_hash(sha256::Hash::hash(&[1; 32]))
        .payment_secret(lightning_invoice::PaymentSecret([2; 32]))
        .duration_since_epoch(std::time::Duration::from_secs(1_700_000_000))
        .min_final_cltv_expiry_delta(144)
        .amount_milli_satoshis(100_000)
        .build_raw()
        .unwrap();
    let (hrp, data) = raw.to_raw();
    (hrp, data.iter().map(|v| v.to_u8()).collect())
}

fn lnpd_signer_invoice_hash(hrp: &str, data: &[u8]) -> [u8; 32] {
    let mut bits: Vec<bool> = data
        .iter()
        .flat_map(|v| (0..5).rev().map(move |i| v >> i & 1 == 1))
        .collect();
    while !bits.len().is_multiple_of(8) {
        bits.push(false);
    }
    let mut pre = hrp.as_bytes().to_vec();
    pre.extend(
        bits.chunks(8)
            .map(|c| c.iter().fold(0u8, |a, b| a << 1 | *b as u8)),
    );
    sha256::Hash::hash(&pre).to_byte_array()
}

#[test]
fn closing_signature_is_over_the_bolt3_closing_transaction_and_freezes_the_channel() {
    let s = secp();
    let mut p = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    let h = p.add_htlc(50_000_000, 1).unwrap();
    // Not while an HTLC is pending.
    let err = p.close(1000).unwrap_err();
    assert!(
        matches!(err.rule, Some(RuleId::CloseNoPendingHtlcs))
            || err.kind == ErrorKind::FailedPrecondition
    );
    p.settle_htlc(&h).unwrap();

    // Closing to a script that is not ours is refused.
    let stranger = wpkh(&PublicKey::from_secret_key(
        &s,
        &SecretKey::from_slice(&[3; 32]).unwrap(),
    ));
    let bad = pb::SignClosingTransactionRequest {
        channel_keys_id: p.alice.keys_id.clone(),
        to_holder_value_sat: p.alice_msat / 1000 - 1000,
        to_counterparty_value_sat: p.bob_msat / 1000,
        to_holder_script: stranger.to_bytes(),
        to_counterparty_script: stranger.to_bytes(),
        lock_time: 0,
    };
    let err = call!(p.alice.signer, SignClosingTransaction(bad.clone()) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::CloseDestinationAllowed));

    // Paying us less than our balance, the difference hidden in the fee we
    // pay as funder, is refused.
    let (own, _, _) = wallet_key(1, 0, 7);
    let mut short = bad.clone();
    short.to_holder_script = wpkh(&PublicKey::from_secret_key(&s, &own)).to_bytes();
    short.to_holder_value_sat -= 50_000;
    let err = call!(p.alice.signer, SignClosingTransaction(short) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::CloseFeeRange));
    // The fundee pays no fee: any shortfall is caught as such.
    let (bob_own, _, _) = wallet_key(2, 0, 7);
    let bob_short = pb::SignClosingTransactionRequest {
        channel_keys_id: p.bob.keys_id.clone(),
        to_holder_value_sat: p.bob_msat / 1000 - 5_000,
        to_counterparty_value_sat: p.alice_msat / 1000 - 1000,
        to_holder_script: wpkh(&PublicKey::from_secret_key(&s, &bob_own)).to_bytes(),
        to_counterparty_script: stranger.to_bytes(),
        lock_time: 0,
    };
    let err = call!(p.bob.signer, SignClosingTransaction(bob_short) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::CloseValueMatches));

    let (a, _b) = p.close(1000).unwrap();
    let _ = sig(&a);
    // After a mutual close, no new commitment is signed.
    let req = lnpd_signer_core::testing::next_counterparty_request(&mut p).unwrap();
    let err = call!(p.alice.signer, SignCounterpartyCommitment(req) => SignCounterpartyCommitment)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::CloseThenFrozen));
}

#[test]
fn justice_signature_spends_a_revoked_to_local_with_the_revocation_key() {
    let s = secp();
    let mut p = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    // Bob gets a balance (a to_local on his commitments), then moves on.
    let h = p.add_htlc(200_000_000, 4).unwrap();
    p.settle_htlc(&h).unwrap();
    let revoked_number = p.number;
    let revoked = p.commitment_data(false, revoked_number).unwrap();
    p.advance().unwrap();
    // Bob's #revoked_number is revoked: Alice has its secret.
    let bob_secret = call!(p.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest { channel_keys_id: p.bob.keys_id.clone(), commitment_number: revoked_number }) => ReleaseCommitmentSecret).unwrap().secret;
    let revoked_tx: Transaction = bitcoin::consensus::deserialize(&revoked.transaction).unwrap();
    let per_commitment_key = SecretKey::from_slice(&bob_secret).unwrap();
    let point = PublicKey::from_secret_key(&s, &per_commitment_key);
    let rev_base = PublicKey::from_slice(&p.alice.pubkeys.revocation_basepoint).unwrap();
    let revocation = lightning::ln::channel_keys::RevocationKey::from_basepoint(
        &s,
        &lightning::ln::channel_keys::RevocationBasepoint::from(rev_base),
        &point,
    );
    let delayed = lightning::ln::channel_keys::DelayedPaymentKey::from_basepoint(
        &s,
        &lightning::ln::channel_keys::DelayedPaymentBasepoint::from(
            PublicKey::from_slice(&p.bob.pubkeys.delayed_payment_basepoint).unwrap(),
        ),
        &point,
    );
    let script = lightning::ln::chan_utils::get_revokeable_redeemscript(&revocation, 144, &delayed);
    let vout = revoked_tx
        .output
        .iter()
        .position(|o| o.script_pubkey == script.to_p2wsh())
        .expect("Bob's to_local on his revoked commitment") as u32;
    let value = revoked_tx.output[vout as usize].value.to_sat();
    let (dest_key, _, _) = wallet_key(1, 0, 1);
    let spend = |to: ScriptBuf, out_sat: u64| {
        unsigned(
            vec![(
                OutPoint {
                    txid: revoked_tx.compute_txid(),
                    vout,
                },
                0xffff_fffd,
            )],
            vec![TxOut {
                value: Amount::from_sat(out_sat),
                script_pubkey: to,
            }],
            0,
        )
    };
    let ours = wpkh(&PublicKey::from_secret_key(&s, &dest_key));
    let tx = spend(ours.clone(), value - 2_000);
    let keys_id = p.alice.keys_id.clone();
    let request = |tx: pb::UnsignedTx, secret: &[u8], proofs: Vec<Vec<u8>>| {
        pb::SignJusticeRevokedOutputRequest {
            channel_keys_id: keys_id.clone(),
            tx: Some(tx),
            input_index: 0,
            amount_sat: value,
            per_commitment_secret: secret.to_vec(),
            previous_txs: proofs,
            ..Default::default()
        }
    };
    let proof = vec![revoked.transaction.clone()];
    let r = call!(p.alice.signer, SignJusticeRevokedOutput(request(tx.clone(), &bob_secret, proof.clone())) => Signature).unwrap();
    let h = SighashCache::new(&to_tx(&tx))
        .p2wsh_signature_hash(0, &script, Amount::from_sat(value), EcdsaSighashType::All)
        .unwrap();
    s.verify_ecdsa(
        &Message::from_digest(h.to_byte_array()),
        &sig(&r.signature),
        &revocation.to_public_key(),
    )
    .expect("valid justice signature");

    // Justice paying anyone but us is refused.
    let stranger = wpkh(&PublicKey::from_secret_key(
        &s,
        &SecretKey::from_slice(&[3; 32]).unwrap(),
    ));
    let err = call!(p.alice.signer, SignJusticeRevokedOutput(request(spend(stranger, value - 2_000), &bob_secret, proof.clone())) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepDestinationAllowed));
    // So is one burning the value in fees.
    let err = call!(p.alice.signer, SignJusticeRevokedOutput(request(spend(ours.clone(), 1_000), &bob_secret, proof.clone())) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepFeeRange));
    // A secret the peer never revealed for that commitment is refused.
    let err = call!(p.alice.signer, SignJusticeRevokedOutput(request(tx.clone(), &[9; 32], proof)) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepJusticeSecret));
    // Without the revoked commitment, nothing is proven.
    let err = call!(p.alice.signer, SignJusticeRevokedOutput(request(tx, &bob_secret, vec![])) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepInputProven));
    // An unrevoked state cannot be punished: its secret is not known.
    let current = p.commitment_data(false, p.number).unwrap();
    let current_tx: Transaction = bitcoin::consensus::deserialize(&current.transaction).unwrap();
    let unrevoked = unsigned(
        vec![(
            OutPoint {
                txid: current_tx.compute_txid(),
                vout: 0,
            },
            0xffff_fffd,
        )],
        vec![TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: ours,
        }],
        0,
    );
    let err = call!(p.alice.signer, SignJusticeRevokedOutput(request(unrevoked, &bob_secret, vec![current.transaction.clone()])) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepJusticeSecret));
}

#[test]
fn holder_htlc_and_anchor_spends_are_signed_for_the_latest_commitment_only() {
    let s = secp();
    let mut p = ChannelPair::open(
        Box::new(memory_signer(1, PolicyConfig::default())),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .unwrap();
    p.add_htlc(30_000_000, 9).unwrap();
    // Rebuild Alice's latest commitment the way a node would see it.
    let data = p.commitment_data(true, p.number).unwrap();
    assert_eq!(p.alice.setup.counterparty_keys, Some(p.bob.pubkeys.clone()));
    let (_, rebuilt) = lnpd_signer_core::testing::rebuild_as(&p.alice, &data).unwrap();
    let trusted = rebuilt.tx.trust();
    let txid = trusted.txid();
    let htlc = rebuilt.tx.nondust_htlcs()[0].clone();
    let vout = htlc.transaction_output_index.unwrap();

    // HTLC-timeout: BOLT 3 form (anchors: sequence 1, locktime = expiry).
    let (dest_key, _, _) = wallet_key(1, 0, 2);
    let out = TxOut {
        value: Amount::from_sat(30_000),
        script_pubkey: lightning::ln::chan_utils::get_revokeable_redeemscript(
            &trusted.keys().revocation_key,
            144,
            &trusted.keys().broadcaster_delayed_payment_key,
        )
        .to_p2wsh(),
    };
    let tx = unsigned(
        vec![(OutPoint { txid, vout }, 1)],
        vec![out],
        htlc.cltv_expiry,
    );
    let r = call!(p.alice.signer, SignHolderHtlcTransaction(pb::SignHolderHtlcTransactionRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: p.number, htlc_output_index: vout, tx: Some(tx.clone()), input_index: 0, preimage: vec![], previous_txs: vec![] }) => Signature).unwrap();
    let script = lightning::ln::chan_utils::get_htlc_redeemscript(
        &htlc,
        trusted.channel_type_features(),
        trusted.keys(),
    );
    let h = SighashCache::new(&to_tx(&tx))
        .p2wsh_signature_hash(0, &script, Amount::from_sat(30_000), EcdsaSighashType::All)
        .unwrap();
    s.verify_ecdsa(
        &Message::from_digest(h.to_byte_array()),
        &sig(&r.signature),
        &trusted.keys().broadcaster_htlc_key.to_public_key(),
    )
    .expect("valid HTLC signature");

    // Spending some other output as if it were the HTLC is refused.
    let wrong = unsigned(
        vec![(
            OutPoint {
                txid,
                vout: vout + 1,
            },
            1,
        )],
        vec![TxOut {
            value: Amount::from_sat(30_000),
            script_pubkey: wpkh(&PublicKey::from_secret_key(&s, &dest_key)),
        }],
        htlc.cltv_expiry,
    );
    let err = call!(p.alice.signer, SignHolderHtlcTransaction(pb::SignHolderHtlcTransactionRequest { channel_keys_id: p.alice.keys_id.clone(), commitment_number: p.number, htlc_output_index: vout, tx: Some(wrong), input_index: 0, preimage: vec![], previous_txs: vec![] }) => Signature).unwrap_err();
    assert_eq!(err.rule, Some(RuleId::HtlcFormat));

    // Our anchor of the latest commitment.
    let funding = PublicKey::from_slice(&p.alice.pubkeys.funding_pubkey).unwrap();
    let anchor_script = lightning::ln::chan_utils::get_keyed_anchor_redeemscript(&funding);
    let anchor_vout = trusted
        .built_transaction()
        .transaction
        .output
        .iter()
        .position(|o| o.script_pubkey == anchor_script.to_p2wsh())
        .unwrap() as u32;
    // The child's fee comes from a wallet coin, proven by its transaction.
    let coin = holding(
        TxOut {
            value: Amount::from_sat(200_000),
            script_pubkey: wpkh(&PublicKey::from_secret_key(&s, &dest_key)),
        },
        0,
        6,
    );
    let child = |out_sat: u64| {
        unsigned(
            vec![
                (
                    OutPoint {
                        txid,
                        vout: anchor_vout,
                    },
                    0xffff_fffd,
                ),
                (
                    OutPoint {
                        txid: coin.compute_txid(),
                        vout: 0,
                    },
                    0xffff_fffd,
                ),
            ],
            vec![TxOut {
                value: Amount::from_sat(out_sat),
                script_pubkey: wpkh(&PublicKey::from_secret_key(&s, &dest_key)),
            }],
            0,
        )
    };
    let cpfp = child(195_000);
    let keys_id = p.alice.keys_id.clone();
    let anchor_request =
        |tx: pb::UnsignedTx, proofs: Vec<Vec<u8>>| pb::SignHolderAnchorInputRequest {
            channel_keys_id: keys_id.clone(),
            tx: Some(tx),
            input_index: 0,
            previous_txs: proofs,
        };
    let proof = vec![bitcoin::consensus::serialize(&coin)];
    let r = call!(p.alice.signer, SignHolderAnchorInput(anchor_request(cpfp.clone(), proof.clone())) => Signature).unwrap();
    let h = SighashCache::new(&to_tx(&cpfp))
        .p2wsh_signature_hash(
            0,
            &anchor_script,
            Amount::from_sat(330),
            EcdsaSighashType::All,
        )
        .unwrap();
    s.verify_ecdsa(
        &Message::from_digest(h.to_byte_array()),
        &sig(&r.signature),
        &funding,
    )
    .expect("valid anchor signature");
    // The wallet coin's amount must be proven, and the fee stays bounded by
    // the package's weight.
    let err =
        call!(p.alice.signer, SignHolderAnchorInput(anchor_request(cpfp, vec![])) => Signature)
            .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepInputProven));
    let err = call!(p.alice.signer, SignHolderAnchorInput(anchor_request(child(331), proof)) => Signature)
        .unwrap_err();
    assert_eq!(err.rule, Some(RuleId::SweepFeeRange));
}
