//! Payments per second between two LDK nodes over one channel, with the
//! signer as the only difference between three set-ups measured in one run:
//!
//! 1. LDK's in-process `KeysManager` (the baseline: keys in the node);
//! 2. the lnpd signer core linked in-process (lnpd's node-side signer
//!    client, the protobuf messages encoded and decoded, the core's
//!    rebuild-and-check, no network);
//! 3. the lnpd signer daemon over gRPC with mutual TLS (`lnpd-signer run`,
//!    a separate process with its durable store), as deployed;
//! 4. the same daemon with its state in a 3-member etcd cluster on
//!    loopback (`--store etcd://...`), the ratio to 3 printed.
//!
//! Everything else is the same: both nodes' channel managers and chain
//! monitors persist to lnpd's SQLite store (fsync'd, as in `lnpd`), their
//! peer managers talk over in-memory pipes (Noise encryption included), and
//! one loop pumps messages and events without sleeping, so what differs is
//! the cost of signing. For the gRPC set-ups it also prints where a
//! payment's time goes: the nodes' round trips to their signers, and of
//! those the time in the daemons' handlers and durable writes (read from
//! their `/metrics`).
//!
//! Run: `cargo build --workspace --bins && cargo bench -p lnpd-tests --bench payments`
//! (`-- --payments N` to change the count, `--runs R` for the number of
//! runs of every set-up (default 3; each figure is the median of the runs,
//! min–max beside it), `--quick` for one short run, `--only
//! ldk|core|grpc|etcd` for one set-up, `--busy-poll-us N` for the polling
//! window of the daemons and the nodes' transport, `--validate-apart` for
//! holder-commitment validations not queued to go with the next signature,
//! `--ecdh-when-decoded` for onion ECDH not asked ahead when an HTLC
//! arrives).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, BlockHash, CompactTarget, Network, OutPoint,
    ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use lightning::chain::chaininterface::{BroadcasterInterface, ConfirmationTarget, FeeEstimator};
use lightning::chain::{BestBlock, Confirm};
use lightning::events::{Event, EventsProvider};
use lightning::ln::channelmanager::{PaymentId, RecipientOnionFields, Retry};
use lightning::ln::peer_handler::{
    IgnoringMessageHandler, MessageHandler, PeerManager, SocketDescriptor,
};
use lightning::routing::gossip::NetworkGraph;
use lightning::routing::router::{PaymentParameters, RouteParameters};
use lightning::routing::scoring::{ProbabilisticScorer, ProbabilisticScoringDecayParameters};
use lightning::sign::{KeysManager, Recipient};
use lnpd_node::ldk_types::{ChainMonitorOf, ChannelManagerOf};
use lnpd_node::logger::TracingLogger;
use lnpd_node::signer_client::connection::SideLane;
use lnpd_node::signer_client::onion_ecdh::PrefetchOnions;
use lnpd_node::signer_client::{
    CallError, GrpcTransport, RemoteKeysManager, SignerConnection, SignerTransport,
};
use lnpd_node::store::SqliteStore;
use lnpd_node::wiring::{self, Keys};
use lnpd_proto::signer::{reply, request, Reply, Request};
use lnpd_signer_core::policy::PolicyConfig;
use lnpd_signer_core::store::MemoryStore;
use lnpd_signer_core::testing::memory_signer;
use lnpd_signer_core::Signer;
use lnpd_tests::process::{SignerProcess, TempDir};
use lnpd_tests::scrape;
use prost::Message;

/// Round trips per operation of the gRPC set-up (count, total time).
static ROUND_TRIPS: Mutex<BTreeMap<&'static str, (u32, Duration)>> = Mutex::new(BTreeMap::new());

/// The node's gRPC transport, timing each round trip for the breakdown.
struct Timed(GrpcTransport);
impl SignerTransport for Timed {
    fn connect(&mut self) -> Result<(), String> {
        self.0.connect()
    }
    // ECDH takes it as in lnpd; its round trips are read from the node's
    // metrics (`ecdh_trips`).
    fn side_lane(&self) -> Option<SideLane> {
        self.0.side_lane()
    }
    fn call(&mut self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        let op = body.name();
        let start = Instant::now();
        let r = self.0.call(body, timeout);
        if let Ok(mut m) = ROUND_TRIPS.lock() {
            let e = m.entry(op).or_insert((0, Duration::ZERO));
            e.0 += 1;
            e.1 += start.elapsed();
        }
        r
    }
    fn call_batch(
        &mut self,
        bodies: Vec<request::Body>,
        timeout: Duration,
    ) -> Result<Vec<Result<reply::Body, CallError>>, CallError> {
        let op = bodies.last().map(request::Body::name).unwrap_or("batch");
        let has = |name: &str| {
            bodies[..bodies.len().saturating_sub(1)]
                .iter()
                .any(|b| b.name() == name)
        };
        let key = match (
            if bodies.len() == 1 { "alone" } else { op },
            has("validate_holder_commitment"),
            has("validate_counterparty_revocation"),
        ) {
            ("sign_counterparty_commitment", true, true) => {
                "revocation + validation + sign_counterparty_commitment"
            }
            ("sign_counterparty_commitment", true, false) => {
                "validation + sign_counterparty_commitment"
            }
            ("sign_counterparty_commitment", false, _) => {
                "revocation + sign_counterparty_commitment"
            }
            ("validate_holder_commitment", _, _) => "revocation + validate_holder_commitment",
            (_, true, _) => "validation + other",
            ("alone", _, _) if op == "validate_holder_commitment" => "queued validation alone",
            ("alone", _, _) => "deferred request alone",
            _ => "batch, other",
        };
        let start = Instant::now();
        let r = self.0.call_batch(bodies, timeout);
        if let Ok(mut m) = ROUND_TRIPS.lock() {
            let e = m.entry(key).or_insert((0, Duration::ZERO));
            e.0 += 1;
            e.1 += start.elapsed();
        }
        r
    }
}

/// Signer connections of the remote set-ups, and whether one of them has
/// answered a request LDK was told "pending" for since the loop last looked.
static CONNECTIONS: Mutex<Vec<Arc<SignerConnection>>> = Mutex::new(Vec::new());
static ANSWERED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The node's keys over `conn`, whose answers wake the loop.
fn remote_keys(conn: Arc<SignerConnection>) -> Result<Arc<RemoteKeysManager>> {
    conn.on_answer(|| {
        if let Ok(mut a) = ANSWERED.0.lock() {
            *a = true;
            ANSWERED.1.notify_all();
        }
    });
    if let Ok(mut c) = CONNECTIONS.lock() {
        c.push(conn.clone());
    }
    // No block reaches these nodes: nothing for the signer's proofs.
    let store = lnpd_node::store::SqliteStore::open(std::path::Path::new(":memory:"))?;
    let txs = Arc::new(lnpd_node::chain_watch::ChainWatch::open(Arc::new(store)));
    Ok(Arc::new(RemoteKeysManager::new(
        conn,
        txs,
        Duration::from_secs(10),
    )?))
}

/// Whether holder-commitment validations wait for the signer apart from
/// the signature after them (`--validate-apart`: the node before they were
/// queued), for comparing both in one invocation.
static VALIDATE_APART: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether onion ECDH waits until LDK decodes the onion
/// (`--ecdh-when-decoded`: the node before it was asked ahead).
static ECDH_WHEN_DECODED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keys the benchmark nodes use, told about the node's store.
trait BenchKeys: Keys {
    /// The node's store is open: the remote signer's queued validations
    /// ride with its monitor writes, as in lnpd.
    fn use_store(&self, _store: &Arc<SqliteStore>) {}
    /// An HTLC arrived: the remote signer starts its onion's ECDH, as in
    /// lnpd.
    fn ask_onion_ecdh(&self, _point: PublicKey) {}
}

impl BenchKeys for KeysManager {}

impl BenchKeys for RemoteKeysManager {
    fn ask_onion_ecdh(&self, point: PublicKey) {
        if ECDH_WHEN_DECODED.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        RemoteKeysManager::ask_onion_ecdh(self, point)
    }
    fn use_store(&self, store: &Arc<SqliteStore>) {
        if VALIDATE_APART.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.validations().enable(
            store.clone(),
            Arc::new(|r| {
                eprintln!(
                    "the signer refused a queued validation in the benchmark: {}",
                    r.reason
                )
            }),
        );
    }
}

/// Ends a set-up's signer connections with it (their threads stop), so that
/// no later set-up waits on them or flushes to a signer that has stopped.
struct ForgetConnections;

impl Drop for ForgetConnections {
    fn drop(&mut self) {
        if let Ok(mut c) = CONNECTIONS.lock() {
            c.clear();
        }
        if let Ok(mut d) = DAEMON_METRICS.lock() {
            d.clear();
        }
    }
}

/// The metrics endpoints of the set-up's signer daemons.
static DAEMON_METRICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// One window's figures: payments per second and, per payment, where the
/// signers' time went (remote set-ups over gRPC; zero otherwise).
#[derive(Clone, Copy)]
struct Window {
    rate: f64,
    signer: SignerTime,
}

/// Time spent on the signers: the nodes' round trips on their link to the
/// signer (ECDH, which runs beside, aside), the daemons' request handlers
/// over the same requests, and the durable writes within them.
#[derive(Clone, Copy, Default)]
struct SignerTime {
    link: Duration,
    handler: Duration,
    write: Duration,
}

impl SignerTime {
    /// The totals so far: the link's round trips as timed here, the
    /// daemons' as they measured them (their `/metrics`).
    fn now() -> SignerTime {
        let link = ROUND_TRIPS
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(op, _)| **op != "ecdh")
                    .map(|(_, (_, t))| *t)
                    .sum()
            })
            .unwrap_or_default();
        let (mut handler, mut write) = (0.0, 0.0);
        let addrs = DAEMON_METRICS.lock().map(|d| d.clone()).unwrap_or_default();
        for addr in addrs {
            match scrape::scrape(&addr) {
                Ok(samples) => {
                    let name = "lnpd_signer_request_duration_seconds_sum";
                    handler += scrape::sum(&samples, name, &[])
                        - scrape::sum(&samples, name, &[("op", "ecdh")]);
                    write += scrape::sum(
                        &samples,
                        "lnpd_signer_durable_write_duration_seconds_sum",
                        &[],
                    );
                }
                Err(e) => eprintln!("the signer daemon's metrics at {addr}: {e}"),
            }
        }
        let secs = |v: f64| Duration::from_secs_f64(v.max(0.0));
        SignerTime {
            link,
            handler: secs(handler),
            write: secs(write),
        }
    }

    /// Per payment, from the totals `before` to these, over `n` payments.
    fn per_payment(self, before: SignerTime, n: usize) -> SignerTime {
        let n = n.max(1) as u32;
        SignerTime {
            link: self.link.saturating_sub(before.link) / n,
            handler: self.handler.saturating_sub(before.handler) / n,
            write: self.write.saturating_sub(before.write) / n,
        }
    }
}

/// Sends the validations no signature took along (lnpd does it when LDK's
/// peer manager ends a round of processing).
fn flush_waited() {
    if let Ok(c) = CONNECTIONS.lock() {
        for conn in c.iter() {
            conn.flush_waited();
        }
    }
}

/// Takes the "answered" mark.
fn take_answered() -> bool {
    ANSWERED
        .0
        .lock()
        .map(|mut a| std::mem::take(&mut *a))
        .unwrap_or(false)
}

/// With nothing else to do: waits (briefly) for a signer's answer, if any
/// is outstanding.
fn wait_for_answer() {
    let outstanding = CONNECTIONS
        .lock()
        .map(|c| c.iter().any(|c| c.unanswered() > 0))
        .unwrap_or(false);
    if !outstanding {
        std::thread::yield_now();
        return;
    }
    if let Ok(a) = ANSWERED.0.lock() {
        let _ = ANSWERED
            .1
            .wait_timeout_while(a, Duration::from_millis(2), |a| !*a);
    }
}

const CHANNEL_SAT: u64 = 1_000_000;
const PAYMENT_MSAT: u64 = 10_000;

/// Fixed fees and a broadcaster that only keeps what it is given.
#[derive(Default)]
struct BenchChain {
    broadcast: Mutex<Vec<Transaction>>,
}
impl FeeEstimator for BenchChain {
    fn get_est_sat_per_1000_weight(&self, _: ConfirmationTarget) -> u32 {
        1000
    }
}
impl BroadcasterInterface for BenchChain {
    fn broadcast_transactions(&self, txs: &[&Transaction]) {
        if let Ok(mut b) = self.broadcast.lock() {
            b.extend(txs.iter().map(|t| (*t).clone()));
        }
    }
}

/// One end of an in-memory connection: what it sends is queued for the peer.
#[derive(Clone)]
struct Pipe {
    id: u64,
    out: Arc<Mutex<VecDeque<u8>>>,
}
impl PartialEq for Pipe {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
    }
}
impl Eq for Pipe {}
impl Hash for Pipe {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.id.hash(h)
    }
}
impl SocketDescriptor for Pipe {
    fn send_data(&mut self, data: &[u8], _continue_read: bool) -> usize {
        if let Ok(mut q) = self.out.lock() {
            q.extend(data);
        }
        data.len()
    }
    fn disconnect_socket(&mut self) {}
}

/// The lnpd signer core in this process, reached through the node's signer
/// client exactly as over gRPC, minus the network.
struct InProcessCore(Signer<MemoryStore>);
impl SignerTransport for InProcessCore {
    fn connect(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn call(&mut self, body: request::Body, _timeout: Duration) -> Result<reply::Body, CallError> {
        let req = Request {
            id: 1,
            body: Some(body),
        };
        let reply = Reply::decode(&self.0.handle_bytes(&req.encode_to_vec())[..])
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        reply.into_result().map_err(CallError::from)
    }
}

/// A chain monitor and channel manager over keys `K`, as lnpd wires them.
type Monitor<K> = ChainMonitorOf<K, BenchChain>;
type Manager<K> = ChannelManagerOf<K, BenchChain>;
type Peers<K> = PeerManager<
    Pipe,
    Arc<PrefetchOnions<Arc<Manager<K>>>>,
    IgnoringMessageHandler,
    IgnoringMessageHandler,
    Arc<TracingLogger>,
    IgnoringMessageHandler,
    Arc<K>,
    IgnoringMessageHandler,
>;

/// One benchmark node.
struct BenchNode<K: BenchKeys> {
    id: PublicKey,
    manager: Arc<Manager<K>>,
    monitor: Arc<Monitor<K>>,
    peers: Arc<Peers<K>>,
    chain: Arc<BenchChain>,
    _dir: TempDir,
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl<K: BenchKeys> BenchNode<K> {
    fn new(keys: Arc<K>, tag: &str, genesis: BestBlock) -> Result<Self> {
        let dir = TempDir::new(tag);
        let store = Arc::new(SqliteStore::open(&dir.path.join("node.sqlite"))?);
        keys.use_store(&store);
        let logger = Arc::new(TracingLogger);
        let chain = Arc::new(BenchChain::default());
        let graph = Arc::new(NetworkGraph::new(Network::Regtest, logger.clone()));
        let scorer = Arc::new(RwLock::new(ProbabilisticScorer::new(
            ProbabilisticScoringDecayParameters::default(),
            graph.clone(),
            logger.clone(),
        )));
        // The node's own wiring, over this chain and these keys.
        let monitor = wiring::chain_monitor(&chain, store, &keys, None);
        let manager = Arc::new(wiring::new_channel_manager(
            &chain,
            &monitor,
            wiring::routers(&graph, &scorer, &keys),
            &keys,
            wiring::user_config(),
            Network::Regtest,
            genesis,
            now().as_secs() as u32,
        ));
        let peers = Arc::new(PeerManager::new(
            MessageHandler {
                chan_handler: Arc::new(PrefetchOnions::new(manager.clone(), {
                    let keys = keys.clone();
                    move |point| keys.ask_onion_ecdh(point)
                })),
                route_handler: IgnoringMessageHandler {},
                onion_message_handler: IgnoringMessageHandler {},
                custom_message_handler: IgnoringMessageHandler {},
                send_only_message_handler: IgnoringMessageHandler {},
            },
            now().as_secs() as u32,
            &keys.get_secure_random_bytes(),
            logger,
            keys.clone(),
        ));
        let id = keys
            .get_node_id(Recipient::Node)
            .map_err(|_| anyhow!("no node id"))?;
        Ok(BenchNode {
            id,
            manager,
            monitor,
            peers,
            chain,
            _dir: dir,
        })
    }
}

/// What the event handlers saw, shared by both nodes.
#[derive(Default)]
struct Progress {
    sent: usize,
    funding: Option<(PublicKey, lightning::ln::types::ChannelId, ScriptBuf)>,
    failed: Vec<String>,
}

/// Two nodes, connected, with one channel from `a` to `b`.
struct Pair<K: BenchKeys> {
    a: BenchNode<K>,
    b: BenchNode<K>,
    a_pipe: Pipe,
    b_pipe: Pipe,
    progress: Arc<Mutex<Progress>>,
    height: u32,
    tip: BlockHash,
}

fn header(prev: BlockHash, height: u32) -> Header {
    Header {
        version: BlockVersion::TWO,
        prev_blockhash: prev,
        merkle_root: TxMerkleNode::all_zeros(),
        time: 1_700_000_000 + height,
        bits: CompactTarget::from_consensus(0x207fffff),
        nonce: height,
    }
}

impl<K: BenchKeys> Pair<K> {
    fn new(a: BenchNode<K>, b: BenchNode<K>, genesis: BestBlock) -> Result<Self> {
        let a_pipe = Pipe {
            id: 1,
            out: Default::default(),
        };
        let b_pipe = Pipe {
            id: 2,
            out: Default::default(),
        };
        let first = a
            .peers
            .new_outbound_connection(b.id, a_pipe.clone(), None)
            .map_err(|e| anyhow!("connect: {e:?}"))?;
        b.peers
            .new_inbound_connection(b_pipe.clone(), None)
            .map_err(|e| anyhow!("accept: {e:?}"))?;
        b.peers
            .read_event(&mut b_pipe.clone(), &first)
            .map_err(|e| anyhow!("handshake: {e:?}"))?;
        let mut pair = Pair {
            a,
            b,
            a_pipe,
            b_pipe,
            progress: Default::default(),
            height: genesis.height,
            tip: genesis.block_hash,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while pair.a.peers.peer_by_node_id(&pair.b.id).is_none()
            || pair.b.peers.peer_by_node_id(&pair.a.id).is_none()
        {
            pair.pump()?;
            if Instant::now() > deadline {
                bail!("peers did not connect");
            }
        }
        Ok(pair)
    }

    /// Moves bytes and events until nothing is left to do; returns whether
    /// anything happened.
    fn pump(&mut self) -> Result<bool> {
        let mut any = false;
        for _ in 0..1000 {
            let mut moved = false;
            if take_answered() {
                // LDK asks again for what it was told is pending.
                self.a.manager.signer_unblocked(None);
                self.b.manager.signer_unblocked(None);
                moved = true;
            }
            for node in [&self.a, &self.b] {
                node.manager.process_pending_htlc_forwards();
                node.peers.process_events();
            }
            flush_waited();
            let progress = self.progress.clone();
            let handler = |who: &'static str, m: Arc<Manager<K>>| {
                let progress = progress.clone();
                move |e: Event| {
                    handle(who, &m, &progress, e);
                    Ok(())
                }
            };
            self.a
                .manager
                .process_pending_events(&handler("a", self.a.manager.clone()));
            self.b
                .manager
                .process_pending_events(&handler("b", self.b.manager.clone()));
            self.a
                .monitor
                .process_pending_events(&handler("a", self.a.manager.clone()));
            self.b
                .monitor
                .process_pending_events(&handler("b", self.b.manager.clone()));
            for (from, to, to_pipe) in [
                (&self.a_pipe, &self.b.peers, &self.b_pipe),
                (&self.b_pipe, &self.a.peers, &self.a_pipe),
            ] {
                let bytes: Vec<u8> = match from.out.lock() {
                    Ok(mut q) => q.drain(..).collect(),
                    Err(_) => bail!("pipe poisoned"),
                };
                if !bytes.is_empty() {
                    moved = true;
                    to.read_event(&mut to_pipe.clone(), &bytes)
                        .map_err(|e| anyhow!("peer: {e:?}"))?;
                }
            }
            if !moved {
                break;
            }
            any = true;
        }
        Ok(any)
    }

    fn mine(&mut self, txs: &[&Transaction]) {
        self.height += 1;
        let h = header(self.tip, self.height);
        self.tip = h.block_hash();
        let data: Vec<(usize, &Transaction)> =
            txs.iter().enumerate().map(|(i, t)| (i + 1, *t)).collect();
        for node in [&self.a, &self.b] {
            if !data.is_empty() {
                node.manager.transactions_confirmed(&h, &data, self.height);
                node.monitor.transactions_confirmed(&h, &data, self.height);
            }
            node.manager.best_block_updated(&h, self.height);
            node.monitor.best_block_updated(&h, self.height);
        }
    }

    /// Opens the channel from `a` to `b` and confirms its funding.
    fn open_channel(&mut self) -> Result<()> {
        self.a
            .manager
            .create_channel(self.b.id, CHANNEL_SAT, 0, 1, None, None)
            .map_err(|e| anyhow!("create_channel: {e:?}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (peer, temp_id, script) = loop {
            self.pump()?;
            if let Some(f) = self.progress.lock().ok().and_then(|mut p| p.funding.take()) {
                break f;
            }
            if Instant::now() > deadline {
                bail!("no funding request");
            }
        };
        // A segwit input (LDK requires one so the txid is final); the funding
        // transaction itself is not what this benchmark measures.
        let funding = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_byte_array([7; 32]),
                    vout: 0,
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::from_slice(&[[1u8; 72].as_slice(), [2u8; 33].as_slice()]),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(CHANNEL_SAT),
                script_pubkey: script,
            }],
        };
        self.a
            .manager
            .funding_transaction_generated(temp_id, peer, funding.clone())
            .map_err(|e| anyhow!("funding: {e:?}"))?;
        while self
            .a
            .chain
            .broadcast
            .lock()
            .map(|b| b.is_empty())
            .unwrap_or(true)
        {
            self.pump()?;
            if Instant::now() > deadline {
                bail!("funding never broadcast");
            }
        }
        self.mine(&[&funding]);
        for _ in 0..6 {
            self.mine(&[]);
        }
        let usable = |m: &Manager<K>| m.list_usable_channels().len() == 1;
        while !(usable(&self.a.manager) && usable(&self.b.manager)) {
            self.pump()?;
            if Instant::now() > deadline {
                bail!("channel never usable");
            }
        }
        Ok(())
    }

    /// Pays `count` invoices from `a` to `b` with up to `window` in flight;
    /// returns the elapsed time.
    fn pay(&mut self, count: usize, window: usize) -> Result<Duration> {
        let start = Instant::now();
        let base = self.progress.lock().map(|p| p.sent).unwrap_or(0);
        let mut launched = 0;
        loop {
            let done = self.progress.lock().map(|p| p.sent).unwrap_or(0) - base;
            if let Some(f) = self
                .progress
                .lock()
                .ok()
                .and_then(|p| p.failed.first().cloned())
            {
                bail!("payment failed: {f}");
            }
            if done >= count {
                return Ok(start.elapsed());
            }
            while launched < count && launched - done < window {
                let (hash, secret) = self
                    .b
                    .manager
                    .create_inbound_payment(Some(PAYMENT_MSAT), 3600, None)
                    .map_err(|_| anyhow!("invoice"))?;
                let params = RouteParameters::from_payment_params_and_value(
                    PaymentParameters::from_node_id(self.b.id, 40),
                    PAYMENT_MSAT,
                );
                self.a
                    .manager
                    .send_payment(
                        hash,
                        RecipientOnionFields::secret_only(secret),
                        PaymentId(hash.0),
                        params,
                        Retry::Attempts(0),
                    )
                    .map_err(|e| anyhow!("send: {e:?}"))?;
                launched += 1;
            }
            if !self.pump()? {
                wait_for_answer();
            }
            if start.elapsed() > Duration::from_secs(600) {
                bail!("payments stalled after {done}");
            }
        }
    }
}

fn handle<K: BenchKeys>(who: &str, m: &Manager<K>, progress: &Mutex<Progress>, event: Event) {
    match event {
        Event::OpenChannelRequest {
            temporary_channel_id,
            counterparty_node_id,
            ..
        } => {
            if let Err(e) =
                m.accept_inbound_channel(&temporary_channel_id, &counterparty_node_id, 7, None)
            {
                eprintln!("{who}: accept: {e:?}");
            }
        }
        Event::FundingGenerationReady {
            temporary_channel_id,
            counterparty_node_id,
            output_script,
            ..
        } => {
            if let Ok(mut p) = progress.lock() {
                p.funding = Some((counterparty_node_id, temporary_channel_id, output_script));
            }
        }
        Event::PaymentClaimable { purpose, .. } => {
            if let Some(preimage) = purpose.preimage() {
                m.claim_funds(preimage);
            }
        }
        Event::PaymentSent { .. } => {
            if let Ok(mut p) = progress.lock() {
                p.sent += 1;
            }
        }
        Event::PaymentFailed { reason, .. } => {
            if let Ok(mut p) = progress.lock() {
                p.failed.push(format!("{who}: {reason:?}"));
            }
        }
        _ => {}
    }
}

/// Runs one set-up: opens the channel, warms up, measures each window.
fn measure<K: BenchKeys>(
    make: impl Fn(&str) -> Result<Arc<K>>,
    payments: usize,
    windows: &[usize],
) -> Result<Vec<Window>> {
    // Declared first, dropped last: after the nodes.
    let _forget = ForgetConnections;
    let genesis_hash = bitcoin::blockdata::constants::genesis_block(Network::Regtest).block_hash();
    let genesis = BestBlock::new(genesis_hash, 0);
    let a = BenchNode::new(make("a")?, "bench-a", genesis)?;
    let b = BenchNode::new(make("b")?, "bench-b", genesis)?;
    let mut pair = Pair::new(a, b, genesis)?;
    pair.open_channel()?;
    pair.pay(payments.min(10), 1)?;
    windows
        .iter()
        .map(|w| {
            let before = SignerTime::now();
            let t = pair.pay(payments, *w)?;
            Ok(Window {
                rate: payments as f64 / t.as_secs_f64(),
                signer: SignerTime::now().per_payment(before, payments),
            })
        })
        .collect()
}

fn main() -> Result<()> {
    // LDK's warnings and errors only: a benchmark must not measure logging.
    match lnpd_telemetry::install() {
        Ok(h) => {
            let _ = METRICS.set(h);
        }
        Err(e) => eprintln!("no ECDH round-trip figures: {e}"),
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list`: nothing to list
    }
    // Under `cargo test` (no --bench) it runs once as a smoke test.
    let smoke = !args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--validate-apart") {
        VALIDATE_APART.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    if args.iter().any(|a| a == "--ecdh-when-decoded") {
        ECDH_WHEN_DECODED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let payments = args
        .iter()
        .position(|a| a == "--payments")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke {
            3
        } else if quick {
            30
        } else {
            200
        });
    let windows: &[usize] = if smoke { &[2] } else { &[1, 8] };
    // `--busy-poll-us N`: the polling window of the daemons and of the
    // nodes' transport (0: off), to compare.
    let busy_poll = args
        .iter()
        .position(|a| a == "--busy-poll-us")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if let Some(us) = busy_poll.as_deref().and_then(|v| v.parse().ok()) {
        lnpd_proto::busy_poll::set_window(Duration::from_micros(us));
    }
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke || quick { 1 } else { 3 })
        .max(1);
    // `--only ldk|core|grpc`: one set-up (for profiling).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let skip = |name: &str| only.is_some_and(|o| o != name);
    let seed = |tag: &str| {
        let mut s = [0u8; 32];
        s[0] = tag.as_bytes()[0];
        s
    };

    println!("payments of {PAYMENT_MSAT} msat over one {CHANNEL_SAT} sat anchor channel, {payments} per measurement, {runs} runs of every set-up (median, min–max)");
    let skipped = || {
        Ok(vec![
            Window {
                rate: f64::NAN,
                signer: SignerTime::default(),
            };
            windows.len()
        ])
    };
    let policy = PolicyConfig::default();
    let signers: Mutex<Vec<SignerProcess>> = Mutex::new(Vec::new());
    let daemons = std::sync::atomic::AtomicUsize::new(0);
    // One daemon per node; `store` adds `--store etcd://...` (a prefix per daemon).
    let daemon = |tag: &str, store: Option<&str>| -> Result<Arc<RemoteKeysManager>> {
        let n = daemons.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut s = SignerProcess::init(&format!("bench-signer-{tag}")).context(
            "lnpd-signer init (build the binaries first: cargo build --workspace --bins)",
        )?;
        if let Some(url) = store {
            s = s.with_run_args(&["--store", &format!("{url}/bench-{tag}-{n}")]);
        }
        if let Some(us) = &busy_poll {
            s = s.with_run_args(&["--busy-poll-us", us]);
        }
        // Its metrics: where a payment's time goes.
        s = s.with_run_args(&["--metrics-listen", "127.0.0.1:0"]);
        let addr = s.start()?;
        s.wait_serving(Duration::from_secs(30))?;
        if let Ok(mut d) = DAEMON_METRICS.lock() {
            d.push(s.metrics_addr(Duration::from_secs(10))?);
        }
        let conn =
            SignerConnection::start_with(&addr, Timed(GrpcTransport::new(&addr, s.node_tls())?))?;
        if let Ok(mut v) = signers.lock() {
            v.push(s);
        }
        remote_keys(conn)
    };
    // The daemons with their state in a 3-member etcd cluster on loopback
    // (skipped, and said so, where etcd is not installed).
    let etcd = if skip("etcd") {
        None
    } else {
        match lnpd_tests::etcd::EtcdCluster::start("bench-payments", 3) {
            Ok(c) => Some(c),
            Err(e) => {
                println!("etcd set-up skipped: {e}");
                None
            }
        }
    };
    // Figures of every run: baseline, in-process core, gRPC, gRPC + etcd.
    let mut all: [Vec<Vec<Window>>; 4] = Default::default();
    let mut grpc_trips = BTreeMap::new();
    let mut etcd_trips = BTreeMap::new();
    // ECDH LDK needed in the gRPC set-ups: answered by the one asked when
    // the HTLC arrived, asked then.
    let mut ecdh_ahead = (0.0, 0.0);
    for _ in 0..runs {
        let baseline = if skip("ldk") {
            skipped()
        } else {
            measure::<KeysManager>(
                |tag| {
                    let t = now();
                    Ok(Arc::new(KeysManager::new(
                        &seed(tag),
                        t.as_secs(),
                        t.subsec_nanos(),
                        true,
                    )))
                },
                payments,
                windows,
            )
            .context("KeysManager set-up")
        }?;
        let in_process = if skip("core") {
            skipped()
        } else {
            measure::<RemoteKeysManager>(
                |tag| {
                    let core = memory_signer(seed(tag)[0], policy.clone());
                    remote_keys(SignerConnection::start_with(
                        "in-process core",
                        InProcessCore(core),
                    )?)
                },
                payments,
                windows,
            )
            .context("in-process signer core set-up")
        }?;
        // The in-process core's ECDH (in the node's metrics too) are not
        // the gRPC set-up's.
        drop(take_round_trips());
        let asked_before = ecdh_asked();
        let grpc = if skip("grpc") {
            skipped()
        } else {
            measure::<RemoteKeysManager>(|tag| daemon(tag, None), payments, windows)
                .context("gRPC signer set-up")
        }?;
        add_trips(&mut grpc_trips, take_round_trips());
        let replicated = match &etcd {
            None => skipped(),
            Some(c) => {
                let url = c.url();
                measure::<RemoteKeysManager>(|tag| daemon(tag, Some(&url)), payments, windows)
                    .context("gRPC signer with etcd set-up")
            }
        }?;
        add_trips(&mut etcd_trips, take_round_trips());
        let asked_after = ecdh_asked();
        ecdh_ahead.0 += asked_after.0 - asked_before.0;
        ecdh_ahead.1 += asked_after.1 - asked_before.1;
        // Each run's daemons stop before the next run starts its own.
        if let Ok(mut v) = signers.lock() {
            v.clear();
        }
        for (k, r) in [baseline, in_process, grpc, replicated]
            .into_iter()
            .enumerate()
        {
            all[k].push(r);
        }
    }
    // Per window: median, min and max over the runs.
    let stat = |k: usize, i: usize| -> (f64, f64, f64) {
        let mut v: Vec<f64> = all[k].iter().map(|r| r[i].rate).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!();
    println!(
        "{:<44} {:>8} {:>22} {:>16}",
        "set-up", "in flight", "payments/s (min–max)", "vs LDK, per run"
    );
    for (i, w) in windows.iter().enumerate() {
        for (k, name) in [
            "LDK KeysManager, in-process (baseline)",
            "lnpd signer core, in-process",
            "lnpd-signer over gRPC + mutual TLS",
            "  the same, state in etcd (3 members)",
        ]
        .iter()
        .enumerate()
        {
            let (m, lo, hi) = stat(k, i);
            if m.is_nan() {
                // A set-up skipped (`--only`, or etcd not installed).
                continue;
            }
            // Each run's ratio to that run's baseline: the machine's
            // drift between runs moves both alike.
            let mut ratios: Vec<f64> = all[k]
                .iter()
                .zip(&all[0])
                .map(|(r, b)| 100.0 * r[i].rate / b[i].rate)
                .collect();
            ratios.sort_by(|a, b| a.total_cmp(b));
            let vs_ldk = if ratios[0].is_nan() {
                "(no baseline measured)".to_string()
            } else {
                format!(
                    "{:>5.0}% ({:.0}–{:.0}%)",
                    ratios[ratios.len() / 2],
                    ratios[0],
                    ratios[ratios.len() - 1]
                )
            };
            println!(
                "{:<44} {:>8} {:>8.1} ({:>5.1}–{:<5.1}) {vs_ldk}",
                name, w, m, lo, hi,
            );
        }
    }
    for (i, w) in windows.iter().enumerate() {
        let ratio = stat(3, i).0 / stat(2, i).0;
        if !ratio.is_nan() {
            println!("etcd against redb, {w} in flight: x{ratio:.2} payments/s");
        }
    }
    // Per payment, median of the runs: its time against LDK's alone, and
    // where the signers' share of it went.
    let median_ms = |v: Vec<f64>| -> f64 {
        let mut v = v;
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut said = false;
    for (k, name) in [(2, "gRPC, state in redb"), (3, "gRPC, state in etcd")] {
        for (i, w) in windows.iter().enumerate() {
            let runs = &all[k];
            if runs.iter().any(|r| r[i].rate.is_nan()) {
                continue;
            }
            if !said {
                println!("\nwhere a payment's time goes (ms per payment, median of the runs): the payment; LDK's alone (baseline); the nodes' round trips to their signers (ECDH, beside them, not counted); in the daemons' handlers; of which durable writes; outside the handlers (TLS, HTTP/2, protobuf, both processes' wake-ups)");
                said = true;
            }
            let col =
                |f: &dyn Fn(&Window) -> f64| median_ms(runs.iter().map(|r| f(&r[i])).collect());
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let payment = col(&|x| 1e3 / x.rate);
            let baseline = median_ms(all[0].iter().map(|r| 1e3 / r[i].rate).collect());
            let link = col(&|x| ms(x.signer.link));
            let handler = col(&|x| ms(x.signer.handler));
            let write = col(&|x| ms(x.signer.write));
            let outside = col(&|x| ms(x.signer.link.saturating_sub(x.signer.handler)));
            println!(
                "  {name}, {w} in flight: payment {payment:.2}, LDK alone {baseline:.2}, round trips {link:.2}, handlers {handler:.2}, writes {write:.2}, outside {outside:.2}"
            );
        }
    }
    for (what, trips) in [("redb", grpc_trips), ("etcd", etcd_trips)] {
        if trips.is_empty() {
            continue;
        }
        println!();
        println!("gRPC round trips per operation, state in {what} (both nodes, whole run):");
        for (op, (n, total)) in trips.iter().filter(|(_, (n, _))| *n > 10) {
            println!(
                "  {op:<34} {n:>6} calls  mean {:>5} µs",
                (*total / *n).as_micros()
            );
        }
    }
    let (ahead, now) = ecdh_ahead;
    if ahead + now > 0.0 {
        println!(
            "ECDH LDK needed (gRPC set-ups, whole run): {ahead} answered by the one asked when the HTLC arrived, {now} asked then"
        );
    }
    // The signers before the etcd cluster they keep their state in.
    drop(signers);
    drop(etcd);
    Ok(())
}

/// Adds one run's round trips to the whole run's.
fn add_trips(
    into: &mut BTreeMap<&'static str, (u32, Duration)>,
    run: BTreeMap<&'static str, (u32, Duration)>,
) {
    for (op, (n, t)) in run {
        let e = into.entry(op).or_insert((0, Duration::ZERO));
        e.0 += n;
        e.1 += t;
    }
}

/// The nodes' metrics now (none when the recorder could not be installed).
fn node_metrics() -> Vec<scrape::Sample> {
    METRICS
        .get()
        .map(|h| scrape::parse(&h.render()))
        .unwrap_or_default()
}

/// The node's count of the ECDH LDK needed so far: answered by the one
/// asked when the HTLC arrived, asked then.
fn ecdh_asked() -> (f64, f64) {
    let samples = node_metrics();
    let asked = |how| scrape::sum(&samples, "lnpd_node_ecdh_total", &[("asked", how)]);
    (asked("ahead"), asked("now"))
}

/// The round trips timed so far, and a fresh count for the next set-up.
fn take_round_trips() -> BTreeMap<&'static str, (u32, Duration)> {
    let mut trips = ROUND_TRIPS
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default();
    // ECDH from the metrics, which see both of its ways.
    trips.remove("ecdh");
    let (n, total) = ecdh_trips();
    if let Ok(mut seen) = ECDH_SEEN.lock() {
        let (n0, t0) = std::mem::replace(&mut *seen, (n, total));
        if n > n0 {
            trips.insert("ecdh", (n - n0, total.saturating_sub(t0)));
        }
    }
    trips
}

/// The nodes' metrics (the round trips of the side lane, which the bench's
/// transport does not see).
static METRICS: std::sync::OnceLock<lnpd_telemetry::PrometheusHandle> = std::sync::OnceLock::new();
/// The ECDH count and time already reported.
static ECDH_SEEN: Mutex<(u32, Duration)> = Mutex::new((0, Duration::ZERO));

/// ECDH round trips of both nodes so far (count, total time), from the
/// node's round-trip histogram.
fn ecdh_trips() -> (u32, Duration) {
    let samples = node_metrics();
    let value = |suffix: &str| {
        let name = format!("lnpd_node_signer_round_trip_duration_seconds_{suffix}");
        scrape::sum(&samples, &name, &[("op", "ecdh")])
    };
    (
        value("count") as u32,
        Duration::from_secs_f64(value("sum").max(0.0)),
    )
}
