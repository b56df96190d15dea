//! `lnpd-demo`: two `lnpd-signer` daemons, and a channel between them driven
//! over mutual TLS exactly as two lnpd nodes drive it: open, payments (each
//! an HTLC added, then settled, with both commitments re-signed and the old
//! ones revoked), a refusal, and a cooperative close.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use lnpd_proto::signer::{self as pb, request};
use lnpd_signer::call;
use lnpd_signer::testing::process::{SignerProcess, TempDir};
use lnpd_signer::testing::{ChannelPair, PairOptions};

fn step(n: u32, total: u32, what: &str) {
    println!("\n[{n}/{total}] {what}");
}

fn main() -> Result<()> {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("lnpd-demo"));
    let base = std::path::absolute(&base)?;
    std::fs::create_dir_all(&base)?;
    println!("lnpd demo (regtest keys). Data: {}", base.display());
    let total = 6;

    step(1, total, "lnpd-signer init for Alice and Bob (seed encrypted with Argon2id + XChaCha20-Poly1305; private CA + server and node certificates)");
    let mut alice = SignerProcess::init_in(TempDir::kept(base.join("alice"))?)?;
    let mut bob = SignerProcess::init_in(TempDir::kept(base.join("bob"))?)?;
    for (name, p) in [("alice", &alice), ("bob", &bob)] {
        println!("  {name}: {}", p.data_dir().display());
    }

    step(
        2,
        total,
        "lnpd-signer run for both (gRPC over mutual TLS, free loopback ports)",
    );
    let a_addr = alice.start()?;
    let b_addr = bob.start()?;
    println!(
        "  alice listens on {a_addr} (log: {})",
        alice.dir.path.join("signer.log").display()
    );
    println!(
        "  bob   listens on {b_addr} (log: {})",
        bob.dir.path.join("signer.log").display()
    );
    let mut a_client = alice.client()?;
    let info = match a_client.call(request::Body::Info(pb::InfoRequest {})) {
        Ok(pb::reply::Body::Info(i)) => i,
        other => return Err(anyhow!("unexpected Info reply: {other:?}")),
    };
    println!(
        "  alice's signer: node id {}, protocol v{}, {}",
        hex::encode(&info.node_id),
        info.protocol_version,
        info.capabilities.join(", ")
    );

    step(
        3,
        total,
        "open a 1,000,000 sat anchors channel, Alice funding",
    );
    let mut pair = ChannelPair::open(
        Box::new(alice.client()?),
        Box::new(bob.client()?),
        PairOptions::default(),
    )
    .map_err(|e| anyhow!("open: {e}"))?;
    println!(
        "  keys ids: alice {} / bob {}",
        hex::encode(&pair.alice.keys_id[..8]),
        hex::encode(&pair.bob.keys_id[..8])
    );
    println!("  Bob validated his first commitment before knowing the channel parameters (parked, checked at set-up), as an inbound channel does");

    step(
        4,
        total,
        "10 payments of 10,000 sat from Alice to Bob (add HTLC, settle)",
    );
    for i in 1..=10u8 {
        let h = pair
            .add_htlc(10_000_000, i)
            .map_err(|e| anyhow!("add: {e}"))?;
        pair.settle_htlc(&h).map_err(|e| anyhow!("settle: {e}"))?;
        println!(
            "  payment {i:>2}: commitment #{}, Alice {} sat, Bob {} sat",
            pair.number,
            pair.alice_msat / 1000,
            pair.bob_msat / 1000
        );
    }

    step(
        5,
        total,
        "a compromised node asks Alice's signer for the secret of her current state",
    );
    match call!(pair.alice.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
        channel_keys_id: pair.alice.keys_id.clone(),
        commitment_number: pair.number,
    }) => ReleaseCommitmentSecret)
    {
        Err(e) => println!("  refused: {e}"),
        Ok(_) => {
            return Err(anyhow!(
                "the signer released the secret of its current state"
            ))
        }
    }

    step(
        6,
        total,
        "cooperative close: each signer signs the closing transaction paying its own wallet",
    );
    let (a_sig, b_sig) = pair.close(1_000).map_err(|e| anyhow!("close: {e}"))?;
    println!(
        "  alice's signature {}…, bob's {}…",
        hex::encode(&a_sig[..8]),
        hex::encode(&b_sig[..8])
    );

    alice.kill9();
    bob.kill9();
    println!("\nDone. Both daemons stopped. Their data (seed.enc, state.redb, tls/, signer.toml, signer.log) stays in {}.", base.display());
    Ok(())
}
