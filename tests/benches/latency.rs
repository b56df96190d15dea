//! Latency of the signer's hot paths, in-process (durable store) and over
//! loopback gRPC with mutual TLS to a real `lnpd-signer` process, with its
//! state in redb (one machine) and in a 3-member etcd cluster on loopback
//! (replicated; each write is a quorum-acknowledged transaction).
//!
//! `cargo bench -p lnpd-tests --bench latency` prints, for each set-up, the
//! median over repeated runs (`--runs R`, default 5) of each run's p50, with
//! the runs' min–max, and the median p99:
//! - sign counterparty commitment with 0 and 20 HTLCs (rebuild, policy,
//!   durable write of the new state, signatures);
//! - ECDH, alone and while another connection has the daemon sign (over
//!   gRPC);
//! - the same signing with an in-memory store, to isolate the CPU cost;
//! - the floor measured in the same runs: one redb commit of a 4 KiB
//!   record with fsync, and one ECDSA signature.
//!
//! `--only floor|durable|memory|grpc|grpc-sleeping|etcd[,...]` runs those
//! set-ups (for profiling); `--htlcs 0|20` one of the signing figures.

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
    let total: Duration = d.iter().sum();
    Figures {
        p50: d[d.len() / 2],
        p99: d[(d.len() * 99) / 100],
        mean: total / d.len() as u32,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times Alice signing Bob's next commitment, `ITERATIONS` times, with `htlcs` pending.
fn bench_sign(alice: Box<dyn SignerHandle>, htlcs: usize) -> Figures {
    bench_sign_probed(alice, htlcs, &mut || ()).0
}

/// [`bench_sign`], calling `probe` when the timed requests start and when
/// they end (after the warm-up, before the first timed request; after the
/// last), for what the daemon measured over exactly those requests.
fn bench_sign_probed<P>(
    alice: Box<dyn SignerHandle>,
    htlcs: usize,
    probe: &mut dyn FnMut() -> P,
) -> (Figures, (P, P)) {
    let mut pair = open_pair(alice, htlcs);
    let mut samples = Vec::with_capacity(iterations());
    let mut first = None;
    for i in 0..WARMUP + iterations() {
        let req = next_counterparty_request(&mut pair).expect("request");
        if i == WARMUP {
            first = Some(probe());
        }
        let t = Instant::now();
        let sig = call!(pair.alice.signer, SignCounterpartyCommitment(req.clone()) => SignCounterpartyCommitment).expect("sign");
        let dt = t.elapsed();
        assert_eq!(sig.htlc_signatures.len(), htlcs);
        if i >= WARMUP {
            samples.push(dt);
        }
        pair.complete_advance(req, sig).expect("advance");
    }
    let last = probe();
    (figures(samples), (first.unwrap_or_else(&mut *probe), last))
}

/// A channel of Alice's (`alice`) with `htlcs` pending, Bob in memory.
fn open_pair(alice: Box<dyn SignerHandle>, htlcs: usize) -> ChannelPair {
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
    pair
}

/// The ECDH round trip while another connection has the daemon sign: each
/// ECDH is sent while a signature request is in flight (its durable write
/// in progress or about to be), one per signature. What onion peeling waits
/// for when payments are in flight.
fn bench_ecdh_while_signing(process: &SignerProcess) -> Figures {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let signer = process.client().expect("client");
    let signing = {
        let (stop, in_flight) = (stop.clone(), in_flight.clone());
        std::thread::spawn(move || {
            let mut pair = open_pair(Box::new(signer), 0);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let req = next_counterparty_request(&mut pair).expect("request");
                n += 1;
                // Odd while a request is in flight: its number.
                in_flight.store(2 * n + 1, Ordering::SeqCst);
                let sig = call!(pair.alice.signer, SignCounterpartyCommitment(req.clone()) => SignCounterpartyCommitment).expect("sign");
                in_flight.store(2 * n, Ordering::SeqCst);
                pair.complete_advance(req, sig).expect("advance");
            }
        })
    };
    let mut client = process.client().expect("client");
    let mut samples = Vec::with_capacity(iterations());
    let mut last = 0;
    while samples.len() < WARMUP + iterations() {
        let now = in_flight.load(Ordering::SeqCst);
        if now.is_multiple_of(2) || now == last {
            std::hint::spin_loop();
            continue;
        }
        last = now;
        let body = ecdh_request();
        let t = Instant::now();
        client.handle(body).expect("ecdh");
        samples.push(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    signing.join().expect("the signing thread");
    figures(samples.split_off(WARMUP))
}

/// An ECDH request with a fixed peer key.
fn ecdh_request() -> request::Body {
    let other = bitcoin::secp256k1::PublicKey::from_secret_key(
        &bitcoin::secp256k1::Secp256k1::new(),
        &bitcoin::secp256k1::SecretKey::from_slice(&[3u8; 32]).expect("key"),
    );
    request::Body::Ecdh(pb::EcdhRequest {
        recipient: 0,
        other_key: other.serialize().to_vec(),
        tweak: None,
    })
}

fn bench_ecdh(signer: &mut dyn SignerHandle) -> Figures {
    let mut samples = Vec::with_capacity(iterations() * 2);
    for i in 0..WARMUP + iterations() * 2 {
        let body = ecdh_request();
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

/// One figure's p50s and p99s over the runs.
#[derive(Default)]
struct Series {
    p50: Vec<Duration>,
    p99: Vec<Duration>,
}

impl Series {
    fn add(&mut self, f: Figures) {
        self.p50.push(f.p50);
        self.p99.push(f.p99);
    }
    /// Median of the runs' p50s.
    fn p50(&self) -> Duration {
        median(&self.p50)
    }
}

fn median(d: &[Duration]) -> Duration {
    let mut d = d.to_vec();
    d.sort();
    d[d.len() / 2]
}

/// The figures of every set-up, in the order they were first measured.
#[derive(Default)]
struct Table(Vec<(String, Series)>);

impl Table {
    fn add(&mut self, name: &str, f: Figures) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => s.add(f),
            None => {
                let mut s = Series::default();
                s.add(f);
                self.0.push((name.to_string(), s));
            }
        }
    }
    fn get(&self, name: &str) -> Option<&Series> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
    fn print(&self) {
        for (name, s) in &self.0 {
            let (lo, hi) = (
                s.p50.iter().min().copied().unwrap_or_default(),
                s.p50.iter().max().copied().unwrap_or_default(),
            );
            println!(
                "{name:<48} p50 {:>8.1} µs ({:>7.1}–{:<7.1})   p99 {:>8.1} µs",
                us(s.p50()),
                us(lo),
                us(hi),
                us(median(&s.p99)),
            );
        }
    }
}

/// One redb commit of a 4 KiB value with fsync: the durable write alone
/// (`second_table`: plus 8 bytes in another table, as a counter kept apart).
fn bench_write(dir: &TempDir, second_table: bool) -> Figures {
    let path = dir.path.join(format!("floor-{second_table}.redb"));
    let db = redb::Database::create(&path).expect("floor database");
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("floor");
    let other: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("other");
    let value = vec![7u8; 4096];
    let mut samples = Vec::with_capacity(iterations());
    for i in 0..WARMUP + iterations() {
        let t = Instant::now();
        let tx = db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(table).expect("table");
            t.insert(&b"record"[..], &value[..]).expect("insert");
            if second_table {
                let mut t = tx.open_table(other).expect("table");
                t.insert(&b"counter"[..], &i.to_be_bytes()[..])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    figures(samples)
}

/// One ECDSA signature (RFC 6979), what each signed transaction needs.
fn bench_signature() -> Figures {
    use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[5u8; 32]).expect("key");
    let mut samples = Vec::with_capacity(iterations());
    for i in 0..WARMUP + iterations() {
        let msg = Message::from_digest([i as u8; 32]);
        let t = Instant::now();
        std::hint::black_box(secp.sign_ecdsa(&msg, &key));
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    figures(samples)
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    // The daemon binary is found next to this bench's directory (build it
    // first: `cargo build --release -p lnpd-signer --bins`), or at
    // `LNPD_SIGNER_BIN`.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: nothing to list
    }
    let runs: usize = arg_value(&args, "--runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if iterations() > 5 { 5 } else { 1 })
        .max(1);
    let only = arg_value(&args, "--only");
    // `--client-poll-us N`: this process's polling window as the node's
    // transport (the daemons keep theirs).
    if let Some(us) = arg_value(&args, "--client-poll-us").and_then(|v| v.parse().ok()) {
        lnpd_proto::busy_poll::set_window(Duration::from_micros(us));
    }
    let run = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|o| o == name))
    };
    // `--htlcs 0|20`: one of the signing figures (for profiling).
    let htlc_counts: Vec<usize> = match arg_value(&args, "--htlcs").and_then(|h| h.parse().ok()) {
        Some(h) => vec![h],
        None => vec![0, 20],
    };
    println!(
        "lnpd-signer latency: {runs} runs of {} samples per figure; p50 is the median of the runs' p50s (min–max), p99 the median of their p99s\n",
        iterations()
    );
    let dir = TempDir::new("bench");

    // Its metrics endpoint on: where a round trip's time goes, as the
    // daemon measured it.
    let grpc = if run("grpc") {
        let mut p = SignerProcess::init("bench-grpc")
            .expect("init signer")
            .with_run_args(&["--metrics-listen", "127.0.0.1:0"]);
        p.start().expect("start signer");
        let addr = p
            .metrics_addr(Duration::from_secs(10))
            .expect("the daemon's metrics address");
        Some((p, addr))
    } else {
        None
    };
    let mut breakdown = Breakdown::default();
    // The same without busy-polling at either end (`--busy-poll-us 0`).
    let sleeping = if run("grpc-sleeping") {
        let mut p = SignerProcess::init("bench-grpc-sleeping")
            .expect("init signer")
            .with_run_args(&["--busy-poll-us", "0"]);
        p.start().expect("start signer");
        Some(p)
    } else {
        None
    };
    // The same daemon with its state in etcd. Skipped, and said so, where
    // etcd is not installed (`scripts/test` installs it).
    let mut etcd_note = None;
    let etcd = if run("etcd") {
        match EtcdCluster::start("bench", 3) {
            Ok(cluster) => {
                let mut p = SignerProcess::init("bench-etcd")
                    .expect("init signer")
                    .with_run_args(&["--store", &format!("{}/bench", cluster.url())]);
                p.start().expect("start signer");
                p.wait_serving(Duration::from_secs(30))
                    .expect("the replica becomes active");
                Some((cluster, p))
            }
            Err(e) => {
                etcd_note = Some(format!("etcd set-up skipped: {e}"));
                None
            }
        }
    } else {
        None
    };

    let mut table = Table::default();
    let mut tag = 10u8;
    let mut next_tag = || {
        tag = tag.wrapping_add(1);
        tag
    };
    for _ in 0..runs {
        if run("floor") {
            table.add(
                "floor       redb commit, 4 KiB, fsync",
                bench_write(&dir, false),
            );
            table.add(
                "floor       the same + 8 bytes in a second table",
                bench_write(&dir, true),
            );
            table.add("floor       one ECDSA signature", bench_signature());
        }
        if run("durable") {
            for &htlcs in &htlc_counts {
                table.add(
                    &format!("in-process  sign counterparty commitment, {htlcs} HTLC"),
                    bench_sign(Box::new(durable_signer(&dir, next_tag())), htlcs),
                );
            }
            table.add(
                "in-process  ECDH",
                bench_ecdh(&mut durable_signer(&dir, next_tag())),
            );
        }
        if run("memory") {
            // Without the durable write: the cost of rebuilding, policy and
            // signatures alone (what a device without a disk pays).
            for &htlcs in &htlc_counts {
                table.add(
                    &format!("in-memory   sign counterparty commitment, {htlcs} HTLC"),
                    bench_sign(
                        Box::new(memory_signer(next_tag(), PolicyConfig::default())),
                        htlcs,
                    ),
                );
            }
        }
        if let Some((p, addr)) = &grpc {
            grpc_figures(&mut table, p, "gRPC+mTLS  ", Some((addr, &mut breakdown)));
        }
        if let Some(p) = &sleeping {
            let window = lnpd_proto::busy_poll::window();
            lnpd_proto::busy_poll::set_window(Duration::ZERO);
            grpc_figures(&mut table, p, "no polling ", None);
            lnpd_proto::busy_poll::set_window(window);
        }
        if let Some((_, p)) = &etcd {
            grpc_figures(&mut table, p, "gRPC+etcd  ", None);
        }
    }
    table.print();
    breakdown.print();
    if let Some(note) = etcd_note {
        println!("\n{note}");
    }
    if etcd.is_some() && grpc.is_some() {
        println!("\netcd (3 members) against redb, p50:");
        for name in [
            "sign counterparty commitment, 0 HTLC",
            "sign counterparty commitment, 20 HTLC",
            "ECDH round trip",
        ] {
            if let (Some(r), Some(e)) = (
                table.get(&format!("gRPC+mTLS   {name}")),
                table.get(&format!("gRPC+etcd   {name}")),
            ) {
                println!(
                    "  {name:<40} {:>8.1} µs vs {:>8.1} µs   x{:.2}",
                    us(e.p50()),
                    us(r.p50()),
                    e.p50().as_secs_f64() / r.p50().as_secs_f64()
                );
            }
        }
    }
    targets(&table);
}

/// What the daemon's own metrics hold at one moment: for the signing
/// requests and for the durable writes, the histograms' sums (seconds) and
/// counts.
#[derive(Clone, Copy, Default)]
struct DaemonSums {
    handler: (f64, f64),
    write: (f64, f64),
}

/// Reads the daemon's `/metrics` (`--metrics-listen`).
fn daemon_sums(addr: &str) -> DaemonSums {
    let samples = lnpd_tests::scrape::scrape(addr).expect("the daemon's metrics");
    let pair = |name: &str, with: &[(&str, &str)]| {
        let get = |suffix: &str| {
            lnpd_tests::scrape::value(&samples, &format!("{name}_{suffix}"), with).unwrap_or(0.0)
        };
        (get("sum"), get("count"))
    };
    DaemonSums {
        handler: pair(
            "lnpd_signer_request_duration_seconds",
            &[("op", "sign_counterparty_commitment")],
        ),
        write: pair(
            "lnpd_signer_durable_write_duration_seconds",
            &[("store", "redb")],
        ),
    }
}

/// Where one signing round trip's time goes, per run: the mean round trip
/// as this client saw it, the mean time in the daemon's request handler
/// (policy, signing, the durable write, the group commit's hand-off), and
/// the mean durable write, as the daemon measured them over the same
/// requests.
#[derive(Default)]
struct Breakdown {
    rows: Vec<(String, Vec<[Duration; 3]>)>,
}

impl Breakdown {
    fn add(&mut self, name: &str, client: Duration, (a, b): (DaemonSums, DaemonSums)) {
        let mean = |(s0, c0): (f64, f64), (s1, c1): (f64, f64)| {
            if c1 > c0 {
                Duration::from_secs_f64((s1 - s0) / (c1 - c0))
            } else {
                Duration::ZERO
            }
        };
        let row = [client, mean(a.handler, b.handler), mean(a.write, b.write)];
        match self.rows.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(row),
            None => self.rows.push((name.to_string(), vec![row])),
        }
    }

    fn print(&self) {
        if self.rows.is_empty() {
            return;
        }
        println!(
            "\nwhere a gRPC signing round trip goes (means, median of the runs): round trip seen by the client; in the daemon's handler; of which the durable write; outside the handler (TLS, HTTP/2, protobuf, both processes' wake-ups)"
        );
        for (name, runs) in &self.rows {
            let col = |i: usize| median(&runs.iter().map(|r| r[i]).collect::<Vec<_>>());
            let (client, handler, write) = (col(0), col(1), col(2));
            println!(
                "  {name:<40} {:>8.1} µs   handler {:>7.1} µs   write {:>7.1} µs   outside {:>7.1} µs",
                us(client),
                us(handler),
                us(write),
                us(client.saturating_sub(handler)),
            );
        }
    }
}

/// The gRPC figures of a running daemon: signing with 0 and 20 HTLCs, ECDH.
/// With the daemon's metrics address, the signing figures' breakdown too.
fn grpc_figures(
    table: &mut Table,
    process: &SignerProcess,
    label: &str,
    metrics: Option<(&str, &mut Breakdown)>,
) {
    let mut metrics = metrics;
    for htlcs in [0, 20] {
        let name = format!("{label} sign counterparty commitment, {htlcs} HTLC");
        let client = Box::new(process.client().expect("client"));
        match metrics.as_mut() {
            Some((addr, breakdown)) => {
                let addr = *addr;
                let (f, sums) = bench_sign_probed(client, htlcs, &mut || daemon_sums(addr));
                breakdown.add(&name, f.mean, sums);
                table.add(&name, f);
            }
            None => table.add(&name, bench_sign(client, htlcs)),
        }
    }
    table.add(
        &format!("{label} ECDH round trip"),
        bench_ecdh(&mut process.client().expect("client")),
    );
    table.add(
        &format!("{label} ECDH round trip, another client signing"),
        bench_ecdh_while_signing(process),
    );
}

/// The targets, checked against this run's medians.
fn targets(table: &Table) {
    println!("\ntargets (p50, 2 cores):");
    let p50 = |name: &str| table.get(name).map(|s| s.p50());
    let check = |what: &str, got: Option<Duration>, limit: Option<Duration>| {
        if let (Some(g), Some(l)) = (got, limit) {
            println!(
                "  {what:<58} {:>8.1} µs <= {:>8.1} µs  {}",
                us(g),
                us(l),
                if g <= l { "met" } else { "NOT met" }
            );
        }
    };
    let floor = p50("floor       redb commit, 4 KiB, fsync")
        .zip(p50("floor       one ECDSA signature"))
        .map(|(w, s)| (w + s) * 3 / 2);
    check(
        "in-process sign, 0 HTLC <= 1.5 x (write + signature)",
        p50("in-process  sign counterparty commitment, 0 HTLC"),
        floor,
    );
    check(
        "gRPC sign, 0 HTLC",
        p50("gRPC+mTLS   sign counterparty commitment, 0 HTLC"),
        Some(Duration::from_micros(600)),
    );
    check(
        "gRPC sign, 20 HTLC",
        p50("gRPC+mTLS   sign counterparty commitment, 20 HTLC"),
        Some(Duration::from_micros(1300)),
    );
    check(
        "gRPC ECDH round trip",
        p50("gRPC+mTLS   ECDH round trip"),
        Some(Duration::from_micros(150)),
    );
    check(
        "gRPC ECDH round trip, another client signing",
        p50("gRPC+mTLS   ECDH round trip, another client signing"),
        Some(Duration::from_micros(150)),
    );
}
