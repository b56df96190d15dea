//! The hostile-node suite's common parts: Alice's signer as a real
//! `lnpd-signer` daemon (known seed, reached over gRPC with mutual TLS)
//! under attack, Bob's in-process as the honest peer.

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::DerivationPath;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, CompressedPublicKey, Network, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Witness,
};
use lnpd_proto::signer as pb;
use lnpd_signer_core::keys::KeyRing;
use lnpd_signer_core::testing::{memory_signer, ChannelPair, PairOptions};
use lnpd_signer_core::{PolicyConfig, RuleId, Seed, SignerError};

use crate::{SignerProcess, TempDir};
use lnpd_signer::store_redb::RedbStore;
use lnpd_signer_core::store::{Snapshot, Store};

/// The seed of Alice's signer.
pub const MNEMONIC: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art";

/// Alice's signer as a daemon (known seed), Bob's in-process, one channel.
pub fn attacked(tag: &str) -> (SignerProcess, ChannelPair) {
    attacked_with(tag, "")
}

/// The refusal names `rule`, and so does the daemon's log.
pub fn refused<T: std::fmt::Debug>(alice: &SignerProcess, r: Result<T, SignerError>, rule: RuleId) {
    match r {
        Err(e) => assert_eq!(e.rule, Some(rule), "refused for another reason: {e}"),
        Ok(v) => panic!("attack on {} was signed: {v:?}", rule.as_str()),
    }
    assert!(
        alice.log().contains(rule.as_str()),
        "the daemon's log names {}",
        rule.as_str()
    );
}

/// The signer daemon's whole durable state, read from a copy of its store
/// (the daemon holds the file; a request answered is already in it).
pub fn state_of(alice: &SignerProcess) -> Snapshot {
    let dir = TempDir::new("state-copy");
    let copy = dir.path.join("state.redb");
    std::fs::copy(alice.data_dir().join("state.redb"), &copy).expect("copy of state.redb");
    RedbStore::open(&copy)
        .expect("the copy opens")
        .load()
        .expect("the copy loads")
}

/// An attack: refused with `rule` (in the reply and the daemon's log), and
/// the signer's whole state byte-identical before and after.
pub fn attack<T: std::fmt::Debug>(
    alice: &SignerProcess,
    rule: RuleId,
    f: impl FnOnce() -> Result<T, SignerError>,
) {
    let before = state_of(alice);
    refused(alice, f(), rule);
    assert!(
        before == state_of(alice),
        "the refused request ({}) changed the signer's state",
        rule.as_str()
    );
}

/// Honest use goes on: a payment each way, added and settled.
pub fn still_usable(p: &mut ChannelPair) {
    let h = p
        .add_htlc(5_000_000, 0xa1)
        .expect("honest HTLC after the attack");
    p.settle_htlc(&h)
        .expect("honest settlement after the attack");
}

/// An address nobody in the test owns.
pub fn stranger() -> ScriptBuf {
    let pk =
        PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[3; 32]).unwrap());
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(pk).wpubkey_hash())
}

/// Like [`attacked`], with `[policy]` lines added to the daemon's config.
pub fn attacked_with(tag: &str, policy: &str) -> (SignerProcess, ChannelPair) {
    let mut alice = SignerProcess::init_restored(tag, MNEMONIC).expect("signer init");
    let toml = alice.data_dir().join("signer.toml");
    let mut config = std::fs::read_to_string(&toml).expect("signer.toml");
    config.push_str(policy);
    std::fs::write(&toml, config).unwrap();
    alice.start().expect("signer starts");
    let pair = ChannelPair::open(
        Box::new(alice.client().expect("mTLS client")),
        Box::new(memory_signer(2, PolicyConfig::default())),
        PairOptions::default(),
    )
    .expect("channel opens");
    (alice, pair)
}

/// Runs `lnpd-signer <args> --data-dir <alice's>` (the operator's side).
pub fn operator(alice: &SignerProcess, args: &[&str]) -> String {
    let out = std::process::Command::new(crate::signer_bin())
        .args(args)
        .arg("--data-dir")
        .arg(alice.data_dir())
        .output()
        .expect("lnpd-signer runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lnpd-signer {args:?}: {text}");
    text
}

/// The keys of Alice's signer (same seed), for wallet scripts and PSBTs.
pub fn wallet_keys() -> KeyRing {
    let seed = bip39::Mnemonic::parse_normalized(MNEMONIC)
        .unwrap()
        .to_seed("");
    KeyRing::from_seed(
        &Seed::new(seed.to_vec()).unwrap(),
        Network::Regtest,
        &Secp256k1::new(),
    )
    .unwrap()
}

/// Alice's wallet script at `index` of `chain` (0 receive, 1 change).
pub fn wallet_script(chain: u32, index: u32) -> ScriptBuf {
    let s = Secp256k1::new();
    let key = wallet_keys().wallet_key(&s, chain, index).unwrap();
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(PublicKey::from_secret_key(&s, &key)).wpubkey_hash())
}

/// A PSBT of transaction `version` spending 200 000 sat of Alice's wallet
/// (m/84'/1'/0'/0/0) to `outputs`, after `foreign`'s first output if given
/// (an input the signer does not own).
pub fn wallet_psbt(
    outputs: Vec<TxOut>,
    version: Version,
    foreign: Option<Transaction>,
) -> pb::SignPsbtRequest {
    let s = Secp256k1::new();
    let keys = wallet_keys();
    let key = keys.wallet_key(&s, 0, 0).unwrap();
    let pk = CompressedPublicKey(PublicKey::from_secret_key(&s, &key));
    let ours = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(200_000),
            script_pubkey: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()),
        }],
    };
    let prevs: Vec<Transaction> = std::iter::once(ours).chain(foreign).collect();
    let tx = Transaction {
        version,
        lock_time: LockTime::ZERO,
        input: prevs
            .iter()
            .map(|prev| TxIn {
                previous_output: OutPoint {
                    txid: prev.compute_txid(),
                    vout: 0,
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs,
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    for (input, prev) in psbt.inputs.iter_mut().zip(&prevs) {
        input.non_witness_utxo = Some(prev.clone());
    }
    psbt.inputs[0].witness_utxo = Some(prevs[0].output[0].clone());
    psbt.inputs[0].bip32_derivation.insert(
        pk.0,
        (
            keys.master_fingerprint(),
            DerivationPath::from_str("m/84'/1'/0'/0/0").unwrap(),
        ),
    );
    pb::SignPsbtRequest {
        psbt: psbt.serialize(),
    }
}

/// A sweep of Alice's to_remote output on a (made-up) commitment.
pub fn sweep_request(
    p: &ChannelPair,
    change: ScriptBuf,
    lock_time: Option<u32>,
) -> pb::SpendSpendableOutputsRequest {
    let payment_point = PublicKey::from_slice(&p.alice.pubkeys.payment_point).unwrap();
    // Anchors: to_remote is P2WSH(<payment key> CHECKSIGVERIFY 1 CSV).
    let script =
        lightning::ln::chan_utils::get_to_countersigner_keyed_anchor_redeemscript(&payment_point)
            .to_p2wsh();
    let prev = holding(
        TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: script.clone(),
        },
        1,
    );
    pb::SpendSpendableOutputsRequest {
        descriptors: vec![pb::SpendableOutput {
            outpoint: Some(pb::OutPoint {
                txid: bitcoin::hashes::Hash::to_byte_array(prev.compute_txid()).to_vec(),
                vout: 1,
            }),
            output: Some(pb::TxOut {
                value_sat: 100_000,
                script_pubkey: script.to_bytes(),
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
        lock_time,
    }
}

/// A made-up transaction whose output `vout` is `out` (the ones before it
/// pay nobody): what a request sends to prove an amount.
pub fn holding(out: TxOut, vout: u32) -> Transaction {
    let filler = TxOut {
        value: Amount::from_sat(1_000),
        script_pubkey: ScriptBuf::new_op_return([vout as u8]),
    };
    let mut output = vec![filler; vout as usize];
    output.push(out);
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: bitcoin::Txid::from_byte_array([0x5a; 32]),
                vout,
            },
            ..Default::default()
        }],
        output,
    }
}
