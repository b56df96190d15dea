//! Latency of the signer's hot paths, in-process (durable store) and over
//! loopback gRPC with mutual TLS to a real `lnpd-signer` process, with its
//! state in redb (one machine) and in a 3-member etcd cluster on loopback
//! (replicated; each write is a quorum-acknowledged transaction).
//!
//! `cargo bench -p lnpd-signer --bench latency` prints p50/p99 of:
//! - sign counterparty commitment with 0 and 20 HTLCs (rebuild, policy,
//!   durable write of the new state, signatures);
//! - ECDH;
//! - the same signing with an in-memory store, to isolate the CPU cost.

use std::time::{Duration, Instant};

use lnpd_proto::signer::{self as pb, request};
use lnpd_signer::store_redb::RedbStore;
use lnpd_signer_core::call;
use lnpd_signer_core::testing::{
    memory_signer, next_counterparty_request, test_entropy, ChannelPair, PairOptions, SignerHandle,
    TestHtlc,
};
use lnpd_signer_core::{PolicyConfig, Seed, Signer};
use lnpd_tests::etcd::EtcdCluster;
use lnpd_tests::process::{SignerProcess, TempDir};

/// Samples per figure under `cargo bench`; `cargo test` runs the bench
/// once as a smoke test with a handful.
fn iterations() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        600
    } else {
        5
    }
}

const WARMUP: usize = 20;

struct Figures {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn figures(mut d: Vec<Duration>) -> Figures {
    d.sort();
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    Figures {
        p50: d[d.len() / 2],
        p99: d[(d.len() * 99) / 100],
        mean,
    }
}

fn show(name: &str, f: &Figures) {
    println!(
        "{name:<48} p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs",
        us(f.p50),
        us(f.p99),
        us(f.mean)
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times Alice signing Bob's next commitment, `ITERATIONS` times, with `htlcs` pending.
fn bench_sign(alice: Box<dyn SignerHandle>, htlcs: usize) -> Figures {
    let bob = Box::new(memory_signer(2, PolicyConfig::default()));
    let mut pair = ChannelPair::open(
        alice,
        bob,
        PairOptions {
            value_sat: 10_000_000,
            ..Default::default()
        },
    )
    .expect("open channel");
    for i in 0..htlcs {
        let h = TestHtlc {
            offered_by_alice: true,
            amount_msat: 20_000_000 + i as u64 * 1000,
            cltv_expiry: 700 + i as u32,
            preimage: [i as u8 + 1; 32],
        };
        pair.alice_msat -= h.amount_msat;
        pair.htlcs.push(h);
    }
    let mut samples = Vec::with_capacity(iterations());
    for i in 0..WARMUP + iterations() {
        let req = next_counterparty_request(&mut pair).expect("request");
        let t = Instant::now();
        let sig = call!(pair.alice.signer, SignCounterpartyCommitment(req.clone()) => SignCounterpartyCommitment).expect("sign");
        let dt = t.elapsed();
        assert_eq!(sig.htlc_signatures.len(), htlcs);
        if i >= WARMUP {
            samples.push(dt);
        }
        pair.complete_advance(req, sig).expect("advance");
    }
    figures(samples)
}

fn bench_ecdh(signer: &mut dyn SignerHandle) -> Figures {
    let other = bitcoin::secp256k1::PublicKey::from_secret_key(
        &bitcoin::secp256k1::Secp256k1::new(),
        &bitcoin::secp256k1::SecretKey::from_slice(&[3u8; 32]).expect("key"),
    );
    let mut samples = Vec::with_capacity(iterations() * 2);
    for i in 0..WARMUP + iterations() * 2 {
        let body = request::Body::Ecdh(pb::EcdhRequest {
            recipient: 0,
            other_key: other.serialize().to_vec(),
            tweak: None,
        });
        let t = Instant::now();
        signer.handle(body).expect("ecdh");
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    figures(samples)
}

fn durable_signer(dir: &TempDir, tag: u8) -> Signer<RedbStore> {
    let store = RedbStore::open(&dir.path.join(format!("state-{tag}.redb"))).expect("open store");
    Signer::new(
        &Seed::new(vec![tag; 32]).expect("seed"),
        bitcoin::Network::Regtest,
        PolicyConfig::default(),
        store,
        test_entropy(tag),
    )
    .expect("signer")
}

fn main() {
    // The daemon binary is found next to this bench's directory (build it
    // first: `cargo build --release -p lnpd-signer --bins`), or at
    // `LNPD_SIGNER_BIN`.
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: nothing to list
    }
    println!(
        "lnpd-signer latency ({} samples each; durable state write included)\n",
        iterations()
    );
    let dir = TempDir::new("bench");

    show(
        "in-process  sign counterparty commitment, 0 HTLC",
        &bench_sign(Box::new(durable_signer(&dir, 11)), 0),
    );
    show(
        "in-process  sign counterparty commitment, 20 HTLC",
        &bench_sign(Box::new(durable_signer(&dir, 12)), 20),
    );
    show(
        "in-process  ECDH",
        &bench_ecdh(&mut durable_signer(&dir, 13)),
    );
    // Without the durable write: the cost of rebuilding, policy and
    // signatures alone (what a device without a disk pays).
    show(
        "in-memory   sign counterparty commitment, 0 HTLC",
        &bench_sign(Box::new(memory_signer(14, PolicyConfig::default())), 0),
    );
    show(
        "in-memory   sign counterparty commitment, 20 HTLC",
        &bench_sign(Box::new(memory_signer(15, PolicyConfig::default())), 20),
    );

    let mut process = SignerProcess::init("bench-grpc").expect("init signer");
    process.start().expect("start signer");
    let redb = grpc_figures(&process, "gRPC+mTLS  ");
    drop(process);

    // The same daemon with its state in etcd. Skipped, and said so, where
    // etcd is not installed (`scripts/test` installs it).
    let etcd = match EtcdCluster::start("bench", 3) {
        Ok(c) => c,
        Err(e) => {
            println!("\netcd set-up skipped: {e}");
            return targets();
        }
    };
    let mut process = SignerProcess::init("bench-etcd")
        .expect("init signer")
        .with_run_args(&["--store", &format!("{}/bench", etcd.url())]);
    process.start().expect("start signer");
    process
        .wait_serving(Duration::from_secs(30))
        .expect("the replica becomes active");
    let replicated = grpc_figures(&process, "gRPC+etcd  ");
    println!("\netcd (3 members) against redb, p50:");
    for (name, (r, e)) in ["sign, 0 HTLC", "sign, 20 HTLC", "ECDH"]
        .iter()
        .zip(redb.iter().zip(&replicated))
    {
        println!(
            "  {name:<14} {:>8.1} µs vs {:>8.1} µs   x{:.2}",
            us(e.p50),
            us(r.p50),
            e.p50.as_secs_f64() / r.p50.as_secs_f64()
        );
    }
    targets();
}

/// The gRPC figures of a running daemon: signing with 0 and 20 HTLCs, ECDH.
fn grpc_figures(process: &SignerProcess, label: &str) -> [Figures; 3] {
    let figures = [
        bench_sign(Box::new(process.client().expect("client")), 0),
        bench_sign(Box::new(process.client().expect("client")), 20),
        bench_ecdh(&mut process.client().expect("client")),
    ];
    for (name, f) in [
        "sign counterparty commitment, 0 HTLC",
        "sign counterparty commitment, 20 HTLC",
        "ECDH round trip",
    ]
    .iter()
    .zip(&figures)
    {
        show(&format!("{label} {name}"), f);
    }
    figures
}

fn targets() {
    println!("\ntargets (2 cores): gRPC p50 <= 800 µs at 0 HTLC, <= 2000 µs at 20 HTLC; ECDH p50 <= 200 µs");
}
