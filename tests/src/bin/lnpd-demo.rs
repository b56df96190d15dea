//! `lnpd-demo`: a local regtest Lightning network — a bcoin chain, two
//! `lnpd-signer` daemons, two `lnpd` nodes — that funds a node, opens a
//! channel, pays invoices, closes, and prints each step and where the data
//! lives. Ctrl-C stops everything (the daemons get the same signal).

use std::path::PathBuf;
use std::process::Output;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bitcoin::{Address, Network};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::regtest::{Bcoin, SEGWIT_ACTIVATION_HEIGHT};

fn step(n: u32, what: &str) {
    println!("\n[{n}/7] {what}");
}

fn cli(node: &NodeProcess, args: &[&str]) -> Result<String> {
    let o: Output = node.cli(args);
    if !o.status.success() {
        bail!(
            "lnpd-cli {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn field(json: &str, name: &str) -> String {
    let key = format!("\"{name}\":");
    json.find(&key)
        .map(|i| {
            json[i + key.len()..]
                .trim_start_matches('"')
                .split(['"', ',', '}'])
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn usable(n: &NodeProcess) -> bool {
    cli(n, &["channels"])
        .map(|c| {
            c.lines()
                .any(|l| l.ends_with(" usable") && !l.ends_with("not usable"))
        })
        .unwrap_or(false)
}

#[tokio::main]
async fn main() -> Result<()> {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("lnpd-demo"));
    let base = std::path::absolute(&base)?;
    std::fs::create_dir_all(&base)?;
    println!("lnpd regtest demo. Data: {}", base.display());

    step(1, "start the chain: bcoin on regtest (in memory)");
    let bcoin = Bcoin::start().await?;
    let rpc = bcoin.rpc(2500)?;
    println!("  JSON-RPC at {}", bcoin.url);

    step(
        2,
        "start Alice and Bob: each an lnpd-signer (seed, mTLS) and an lnpd node that holds no key",
    );
    let alice = NodeProcess::start_in(Some(&base), "alice", &bcoin)?;
    let bob = NodeProcess::start_in(Some(&base), "bob", &bcoin)?;
    for (name, n) in [("alice", &alice), ("bob", &bob)] {
        let info = cli(n, &["--json", "getinfo"])?;
        println!(
            "  {name}: node {} peers at {}",
            field(&info, "node_id"),
            n.p2p_addr()
        );
        println!(
            "         signer data {}, node data {}",
            n.signer.data_dir().display(),
            n.data_dir().display()
        );
    }
    let bob_id = field(&cli(&bob, &["--json", "getinfo"])?, "node_id");

    step(
        3,
        "fund Alice's wallet: mine to her address (and past segwit activation)",
    );
    let addr =
        Address::from_str(&cli(&alice, &["newaddress"])?)?.require_network(Network::Regtest)?;
    println!("  address {addr}");
    bcoin.mine(&rpc, 10, &addr).await?;
    let burn = Address::from_str("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")?
        .require_network(Network::Regtest)?;
    bcoin.mine(&rpc, SEGWIT_ACTIVATION_HEIGHT, &burn).await?;
    for _ in 0..100 {
        if field(
            &cli(&alice, &["--json", "balance"])?,
            "onchain_spendable_sat",
        ) != "0"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  {}", cli(&alice, &["balance"])?.replace('\n', "\n  "));

    step(4, "connect and open a 1,000,000 sat channel (Alice's signer signs the funding only after Bob countersigned her first commitment)");
    cli(
        &alice,
        &["connect", &format!("{bob_id}@{}", bob.p2p_addr())],
    )?;
    println!(
        "  channel {}",
        cli(&alice, &["openchannel", &bob_id, "1000000"])?
    );
    let mut ready = false;
    for _ in 0..60 {
        bcoin.mine(&rpc, 1, &burn).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if usable(&alice) && usable(&bob) {
            ready = true;
            break;
        }
    }
    if !ready {
        return Err(anyhow!(
            "the channel did not become usable; see {}",
            alice.data_dir().display()
        ));
    }
    println!("  {}", cli(&alice, &["channels"])?);

    step(
        5,
        "Bob invoices 25,000 sat; Alice pays (every signature and ECDH from the signers)",
    );
    let invoice = cli(&bob, &["invoice", "25000000", "--description", "coffee"])?;
    println!("  invoice {}…", &invoice[..40.min(invoice.len())]);
    println!("  {}", cli(&alice, &["pay", &invoice])?);

    step(
        6,
        "close cooperatively; Bob's share arrives in his on-chain wallet",
    );
    let channel_id = cli(&alice, &["channels"])?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    cli(&alice, &["closechannel", &channel_id])?;
    for _ in 0..60 {
        bcoin.mine(&rpc, 1, &burn).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if field(&cli(&bob, &["--json", "balance"])?, "onchain_spendable_sat") != "0" {
            break;
        }
    }
    println!(
        "  bob: {}",
        cli(&bob, &["balance"])?.replace('\n', "\n       ")
    );

    step(7, "what a compromised node cannot do: send Alice's coins to an address the operator did not allow");
    let key = bitcoin::secp256k1::SecretKey::from_slice(&[7; 32])?;
    let pk = bitcoin::CompressedPublicKey(bitcoin::secp256k1::PublicKey::from_secret_key(
        &bitcoin::secp256k1::Secp256k1::new(),
        &key,
    ));
    let attacker = Address::p2wpkh(&pk, Network::Regtest).to_string();
    match cli(&alice, &["withdraw", &attacker, "100000"]) {
        Ok(txid) => bail!("the signer signed a withdrawal to an unknown address: {txid}"),
        Err(e) => println!("  {e}"),
    }
    let log = std::process::Command::new(lnpd_tests::signer_bin())
        .args(["log", "--last", "1", "--data-dir"])
        .arg(alice.signer.data_dir())
        .output()?;
    println!(
        "  Alice's signer audit log: {}",
        String::from_utf8_lossy(&log.stdout).trim()
    );

    drop(alice);
    drop(bob);
    println!(
        "\nDone; the daemons are stopped. Data stays in {}.",
        base.display()
    );
    Ok(())
}
