//! BOLT 3 Appendix C (option_static_remotekey): from the spec's inputs the
//! signer rebuilds each commitment transaction and reproduces the spec's
//! signatures exactly — the commitment signature and every HTLC
//! transaction signature.
//!
//! The signer plays the spec's *remote* side, signing *local*'s commitment
//! #42 as a counterparty commitment, with the spec's published keys.

use bitcoin::consensus::deserialize;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{ecdsa::Signature, PublicKey, Secp256k1, SecretKey};
use bitcoin::Transaction;
use lnpd_proto::signer as pb;
use lnpd_signer::call;
use lnpd_signer::commitment::{commitment_fee_sat, htlc_tx_fee_sat};
use lnpd_signer::keys::ChannelSecrets;
use lnpd_signer::policy::{RuleId, RuleMode};
use lnpd_signer::testing::memory_signer;
use lnpd_signer::{ChannelKeysId, PolicyConfig};
use serde_json::Value;

const VECTORS: &str = include_str!("data/bolt3_commitment_vectors.json");

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// The spec prints private keys as 32 bytes plus a 0x01 marker.
fn secret(v: &Value) -> SecretKey {
    SecretKey::from_slice(&hexv(v)[..32]).expect("secret key")
}

fn der_to_compact(v: &Value) -> Vec<u8> {
    Signature::from_der(&hexv(v))
        .expect("DER signature")
        .serialize_compact()
        .to_vec()
}

fn policy() -> PolicyConfig {
    let mut p = PolicyConfig {
        min_feerate_per_kw: 0,
        max_feerate_per_kw: u32::MAX,
        ..Default::default()
    };
    // The vectors start at commitment #42 with no history, and one case has a
    // fee above the funder's balance: state rules are not what they test.
    for r in [
        RuleId::CommitmentNumberSequence,
        RuleId::CommitmentPreviousRevoked,
        RuleId::CommitmentBalanceConserved,
    ] {
        p.modes.insert(r, RuleMode::Warn);
    }
    p
}

#[test]
fn reproduces_bolt3_static_remotekey_commitments_and_signatures() {
    let v: Value = serde_json::from_str(VECTORS).expect("vectors parse");
    let common = &v["common"];
    let internal = &common["internal_from_html_comment"];
    let secp = Secp256k1::new();
    let pk = |s: &SecretKey| PublicKey::from_secret_key(&secp, s).serialize().to_vec();

    let cases: Vec<&Value> = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["appendix"] == "C" && c["channel_type"] == "option_static_remotekey")
        .collect();
    assert_eq!(cases.len(), 16, "all static_remotekey cases of Appendix C");

    let mut funding_txid = hexv(&common["funding_tx_id"]);
    funding_txid.reverse(); // displayed big-endian; the wire is internal order
    let local_payment_base = secret(&internal["local_payment_basepoint_secret"]);
    let local_keys = pb::ChannelPublicKeys {
        funding_pubkey: hexv(&common["local_funding_pubkey"]),
        revocation_basepoint: pk(&SecretKey::from_slice(&[0x77; 32]).unwrap()), // unused on local's commitment
        payment_point: pk(&local_payment_base),
        delayed_payment_basepoint: pk(&secret(&internal["local_delayed_payment_basepoint_secret"])),
        htlc_basepoint: pk(&local_payment_base), // equal to the payment basepoint in the vectors
    };
    assert_eq!(
        local_keys.payment_point,
        hexv(&common["local_payment_basepoint"])
    );
    let point = hexv(&internal["local_per_commitment_point"]);
    let dust = common["local_dust_limit_satoshi"].as_u64().unwrap();
    let value_sat = common["funding_amount_satoshi"].as_u64().unwrap();
    let htlc_table: Vec<&Value> = v["htlcs"].as_array().unwrap().iter().collect();

    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut signer = memory_signer(3, policy());
        let id = ChannelKeysId([0x42; 32]);
        signer.set_channel_secrets_for_tests(
            id,
            ChannelSecrets {
                funding_key: secret(&internal["remote_funding_privkey"]),
                revocation_base_key: secret(&internal["remote_revocation_basepoint_secret"]),
                payment_key: secret(&internal["remote_payment_basepoint_secret"]),
                delayed_payment_base_key: SecretKey::from_slice(&[0x55; 32]).unwrap(),
                htlc_base_key: secret(&internal["remote_payment_basepoint_secret"]),
                commitment_seed: [0x66; 32],
            },
        );
        let setup = pb::SetupChannelRequest {
            channel_keys_id: id.0.to_vec(),
            is_outbound: false, // local funds
            channel_value_sat: value_sat,
            push_msat: 0,
            funding_outpoint: Some(pb::OutPoint {
                txid: funding_txid.clone(),
                vout: common["funding_output_index"].as_u64().unwrap() as u32,
            }),
            channel_type: pb::ChannelType::StaticRemoteKey as i32,
            holder_selected_contest_delay: common["local_delay"].as_u64().unwrap() as u32,
            counterparty_selected_contest_delay: 144,
            holder_dust_limit_sat: dust,
            counterparty_dust_limit_sat: dust,
            counterparty_keys: Some(local_keys.clone()),
            counterparty_shutdown_script: vec![],
            holder_shutdown_script: vec![],
        };
        call!(signer, SetupChannel(setup) => SetupChannel)
            .unwrap_or_else(|e| panic!("{name}: setup: {e}"));

        // Trim as BOLT 3 says, from local's (the broadcaster's) point of view.
        let feerate = case["local_feerate_per_kw"].as_u64().unwrap() as u32;
        let mut htlcs = Vec::new();
        for hid in case["htlcs_used"].as_array().unwrap() {
            let h = htlc_table
                .iter()
                .find(|h| h["id"] == *hid)
                .expect("htlc in table");
            let offered = h["direction"] == "offered";
            let amount_msat = h["amount_msat"].as_u64().unwrap();
            if amount_msat / 1000 < dust + htlc_tx_fee_sat(feerate, offered, false) {
                continue;
            }
            let preimage = hexv(&h["payment_preimage"]);
            htlcs.push(pb::Htlc {
                direction: if offered {
                    pb::HtlcDirection::Offered
                } else {
                    pb::HtlcDirection::Received
                } as i32,
                amount_msat,
                cltv_expiry: h["expiry"].as_u64().unwrap() as u32,
                payment_hash: sha256::Hash::hash(&preimage).to_byte_array().to_vec(),
            });
        }
        assert_eq!(
            htlcs.len() as u64,
            case["num_htlcs"].as_u64().unwrap(),
            "{name}: untrimmed HTLCs"
        );
        let fee = commitment_fee_sat(feerate, htlcs.len(), false);
        let trim = |v: u64| if v < dust { 0 } else { v };
        let to_local = trim((case["to_local_msat"].as_u64().unwrap() / 1000).saturating_sub(fee));
        let to_remote = trim(case["to_remote_msat"].as_u64().unwrap() / 1000);

        let reply =
            call!(signer, SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
            channel_keys_id: id.0.to_vec(),
            commitment: Some(pb::CommitmentData {
                commitment_number: common["commitment_number"].as_u64().unwrap(),
                feerate_per_kw: feerate,
                to_broadcaster_value_sat: to_local,
                to_countersignatory_value_sat: to_remote,
                htlcs,
                per_commitment_point: point.clone(),
                // The spec's transaction stands for the one the node built.
                transaction: hexv(&case["output_commit_tx"]),
            }),
            ..Default::default()
        }) => SignCounterpartyCommitment)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        // The spec's commitment transaction carries exactly this signature:
        // same transaction, same deterministic signature.
        assert_eq!(
            reply.signature,
            der_to_compact(&case["remote_signature"]),
            "{name}: commitment signature"
        );
        let tx: Transaction = deserialize(&hexv(&case["output_commit_tx"])).expect("spec tx");
        assert_eq!(
            tx.input[0].previous_output.txid.to_byte_array().to_vec(),
            funding_txid
        );

        let mut expected: Vec<&Value> =
            case["htlc_output_txs"].as_array().unwrap().iter().collect();
        expected.sort_by_key(|h| h["htlc_output_index"].as_u64());
        let expected: Vec<Vec<u8>> = expected
            .iter()
            .map(|h| der_to_compact(&h["remote_htlc_signature"]))
            .collect();
        assert_eq!(reply.htlc_signatures, expected, "{name}: HTLC signatures");
    }
}
