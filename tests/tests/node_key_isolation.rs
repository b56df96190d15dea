//! Key isolation: after a channel was opened and used, none of the signer's
//! secrets — BIP 39 seed, node secret, the base secrets and commitment seed
//! of every channel the run used, the per-commitment secrets of the states
//! not revoked yet (from the latest one the run reached on), wallet keys —
//! appears in the node's data directory or in the node process's memory.
//! (The three symmetric keys LDK keeps in the node are exempt; the secrets
//! of revoked states were handed to the peer, as the protocol requires.)
//!
//! The scan proves what it read: it fails unless it read the node's heap
//! and its anonymous writable memory, and it finds the node id, which the
//! node does hold.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;
use lnpd_signer_core::keys::KeyRing;
use lnpd_signer_core::{ChannelKeysId, CommitmentNumber, Seed};
use lnpd_tests::network::{pay, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::process::{SignerProcess, TempDir};

const MNEMONIC: &str = "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth title";

/// Every place in `haystack` where one of `needles` occurs, by needle name.
fn find_all(
    haystack: &[u8],
    needles: &HashMap<[u8; 8], (String, Vec<u8>)>,
    found: &mut Vec<String>,
) {
    if haystack.len() < 8 {
        return;
    }
    for i in 0..=haystack.len() - 8 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&haystack[i..i + 8]);
        if let Some((name, full)) = needles.get(&k) {
            if haystack[i..].starts_with(full) {
                found.push(name.clone());
            }
        }
    }
}

/// What a memory scan read.
#[derive(Debug, Default)]
struct Scanned {
    bytes: u64,
    heap_bytes: u64,
    anonymous_writable_bytes: u64,
    /// Readable writable regions that could not be read.
    unread: Vec<String>,
}

fn scan_process(pid: u32, needles: &HashMap<[u8; 8], (String, Vec<u8>)>) -> (Vec<String>, Scanned) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem =
        std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem (needs ptrace rights)");
    let mut found = Vec::new();
    let mut scanned = Scanned::default();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let writable = perms.as_bytes().get(1) == Some(&b'w');
        // No pathname: anonymous memory (the allocator's arenas, thread stacks).
        let anonymous = line.split_whitespace().count() == 5;
        let heap = line.ends_with("[heap]");
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            find_all(&buf, needles, &mut found);
            scanned.bytes += buf.len() as u64;
            if heap {
                scanned.heap_bytes += buf.len() as u64;
            }
            if anonymous && writable {
                scanned.anonymous_writable_bytes += buf.len() as u64;
            }
        } else if writable {
            scanned.unread.push(line.to_string());
        }
    }
    (found, scanned)
}

fn scan_dir(
    dir: &std::path::Path,
    needles: &HashMap<[u8; 8], (String, Vec<u8>)>,
    found: &mut Vec<String>,
) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            scan_dir(&p, needles, found);
        } else if let Ok(bytes) = std::fs::read(&p) {
            find_all(&bytes, needles, found);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signer_secret_reaches_the_node() {
    let chain = Chain::start().await.expect("bcoin");
    let signer = SignerProcess::init_restored("iso-a-signer", MNEMONIC).unwrap();
    let mut a = NodeProcess::start_with(signer, TempDir::new("iso-a"), "iso-a", &chain.bcoin)
        .expect("node a");
    let b = NodeProcess::start("iso-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");
    chain.open_channel(&a, &b, 500_000).await.expect("channel");
    for i in 0..3 {
        pay(&a, &b, 5_000_000, &format!("iso {i}")).unwrap_or_else(|e| panic!("{e}"));
    }

    // The signer's channel keys ids (its store is free once the daemon stops).
    a.signer.kill9();
    let info = std::process::Command::new(lnpd_tests::signer_bin())
        .args(["info", "--json", "--data-dir"])
        .arg(a.signer.data_dir())
        .arg("--passphrase-file")
        .arg(a.signer.passphrase_file())
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    // Every channel the signer knows, with the latest holder commitment the
    // run reached (the node has not been handed its secret, nor any later one).
    let parsed: serde_json::Value = serde_json::from_str(info.trim()).expect("info --json");
    let channels: Vec<(String, u64)> = parsed["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter(|c| !c["holder_commitment"].is_null())
        .map(|c| {
            (
                c["channel_keys_id"].as_str().unwrap().to_string(),
                c["holder_commitment"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!channels.is_empty(), "{info}");
    assert!(
        channels.iter().any(|(_, n)| *n >= 4),
        "the payments moved a channel several states on: {info}"
    );

    let secp = Secp256k1::new();
    let bip39_seed = bip39::Mnemonic::parse_normalized(MNEMONIC)
        .unwrap()
        .to_seed("");
    let keys = KeyRing::from_seed(
        &Seed::new(bip39_seed.to_vec()).unwrap(),
        Network::Regtest,
        &secp,
    )
    .unwrap();
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("bip39 seed".into(), bip39_seed.to_vec()),
        (
            "node secret".into(),
            keys.node_secret().secret_bytes().to_vec(),
        ),
    ];
    for (id, latest) in &channels {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&hex::decode(id).unwrap());
        let c = keys.channel_secrets(&ChannelKeysId(raw));
        for (name, k) in [
            ("funding", c.funding_key),
            ("revocation base", c.revocation_base_key),
            ("payment", c.payment_key),
            ("delayed base", c.delayed_payment_base_key),
            ("htlc base", c.htlc_base_key),
        ] {
            secrets.push((format!("channel {name} key"), k.secret_bytes().to_vec()));
        }
        secrets.push(("commitment seed".into(), c.commitment_seed.to_vec()));
        // Secrets of states not revoked yet must not be in the node either
        // (revoked ones were handed over, as the protocol requires): the
        // latest state and the next ones the signer derived points for.
        for n in *latest..latest + 4 {
            secrets.push((
                format!("per-commitment secret #{n}"),
                c.commitment_secret(CommitmentNumber(n)).to_vec(),
            ));
        }
    }
    for chain in 0..2 {
        for i in 0..5 {
            secrets.push((
                format!("wallet key {chain}/{i}"),
                keys.wallet_key(&secp, chain, i)
                    .unwrap()
                    .secret_bytes()
                    .to_vec(),
            ));
        }
    }
    let node_id = keys.node_id(&secp).serialize().to_vec();
    let mut needles = HashMap::new();
    for (name, s) in secrets.iter().cloned().chain(std::iter::once((
        "node id (public, control)".to_string(),
        node_id,
    ))) {
        let mut k = [0u8; 8];
        k.copy_from_slice(&s[..8]);
        needles.insert(k, (name, s));
    }

    let pid = a.pid().expect("node pid");
    let (mut found, scanned) = scan_process(pid, &needles);
    assert!(
        scanned.heap_bytes > 0 && scanned.anonymous_writable_bytes > 8 << 20,
        "the scan read the node's heap and its anonymous writable memory: {scanned:?}"
    );
    assert!(
        scanned.unread.is_empty(),
        "writable memory the scan could not read: {:?}",
        scanned.unread
    );
    scan_dir(&a.data_dir(), &needles, &mut found);
    assert!(
        found.iter().any(|f| f.starts_with("node id")),
        "control: the scan finds the node id the node does hold"
    );
    let leaked: Vec<&String> = found.iter().filter(|f| !f.starts_with("node id")).collect();
    assert!(
        leaked.is_empty(),
        "signer secrets found in the node: {leaked:?}"
    );
}
