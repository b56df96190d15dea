//! The operator's allow-list, edited with `lnpd-signer allowlist` while the
//! daemon runs: a withdrawal to an address is refused until the address is
//! allowed, and refused again once it is removed.

use std::process::Command;
use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{
    absolute::LockTime, transaction::Version, Address, Amount, CompressedPublicKey, Network,
    OutPoint, Psbt, ScriptBuf, Transaction, TxIn, TxOut,
};
use lnpd_proto::signer::{self as pb, reply, request};
use lnpd_tests::{signer_bin, SignerProcess};

fn allowlist(signer: &SignerProcess, args: &[&str]) -> std::process::Output {
    Command::new(signer_bin())
        .arg("allowlist")
        .arg("--data-dir")
        .arg(signer.data_dir())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn withdrawals_go_only_to_allow_listed_addresses() {
    let s = Secp256k1::new();
    let mut signer = SignerProcess::init("allowlist").unwrap();
    signer.start().unwrap();
    let mut client = signer.client().unwrap();
    let Ok(reply::Body::GetWalletDescriptor(d)) = client.call(request::Body::GetWalletDescriptor(
        pb::GetWalletDescriptorRequest {},
    )) else {
        panic!("no descriptor")
    };
    // wpkh([fingerprint/84h/1h/0h]tpub.../0/*)#checksum
    let desc = &d.external_descriptor;
    let fp =
        Fingerprint::from_str(&desc[desc.find('[').unwrap() + 1..desc.find('/').unwrap()]).unwrap();
    let xpub = Xpub::from_str(&d.account_xpub).unwrap();
    let pk = xpub
        .derive_pub(&s, &DerivationPath::from_str("m/0/5").unwrap())
        .unwrap()
        .public_key;
    let ours = ScriptBuf::new_p2wpkh(&CompressedPublicKey(pk).wpubkey_hash());

    let prev = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(50_000),
            script_pubkey: ours,
        }],
    };
    let stranger = Address::p2wpkh(
        &CompressedPublicKey(PublicKey::from_secret_key(
            &s,
            &SecretKey::from_slice(&[3; 32]).unwrap(),
        )),
        Network::Regtest,
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
            value: Amount::from_sat(49_000),
            script_pubkey: stranger.script_pubkey(),
        }],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs[0].non_witness_utxo = Some(prev.clone());
    psbt.inputs[0].witness_utxo = Some(prev.output[0].clone());
    psbt.inputs[0].bip32_derivation.insert(
        pk,
        (fp, DerivationPath::from_str("m/84'/1'/0'/0/5").unwrap()),
    );
    let mut sign = || {
        client.call(request::Body::SignPsbt(pb::SignPsbtRequest {
            psbt: psbt.serialize(),
        }))
    };

    let refused = sign().unwrap_err();
    assert_eq!(
        refused.rule.map(|r| r.as_str()),
        Some("onchain-outputs-known"),
        "{refused:?}"
    );

    let out = allowlist(&signer, &["add", &stranger.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match sign() {
        Ok(reply::Body::SignPsbt(r)) => assert_eq!(r.signed_inputs, vec![0]),
        other => panic!("an allow-listed withdrawal is signed: {other:?}"),
    }
    let list = allowlist(&signer, &["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&stranger.to_string()));

    assert!(allowlist(&signer, &["remove", &stranger.to_string()])
        .status
        .success());
    // The daemon notices the file change (its modification time may need a tick to differ).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let refused = sign().unwrap_err();
    assert_eq!(
        refused.rule.map(|r| r.as_str()),
        Some("onchain-outputs-known")
    );

    let bad = allowlist(&signer, &["add", "bc1qnotanaddress"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a regtest address"));
}
