//! One connection to the signer, usable from LDK's synchronous trait
//! methods: a dedicated thread owns the gRPC client (and its own runtime),
//! callers hand it requests and wait with a timeout, or hand them over
//! without waiting ([`SignerConnection::submit`]) for operations LDK can
//! take "pending" for. Requests reach the signer in the order they were
//! made. It reconnects with backoff when the signer goes away, to the
//! next replica of a replicated signer when it has several (following a
//! standby's "active is ..." answer), and greets each connection with the
//! highest state counter the node saw (anti-rollback, see `InfoRequest`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lnpd_proto::client::{self, SignerTls};
use lnpd_proto::signer::{reply, request};
use lnpd_proto::{ErrorKind, SignerError};

/// Why a call did not produce a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The signer could not be reached (down, restarting, network): retry later.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The signer answered and refused (policy, bad request): do not retry.
    /// A policy refusal names its rule (`SignerError::rule`).
    #[error("signer refused: {0}")]
    Refused(SignerError),
}

impl CallError {
    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CallError::Unavailable(_))
    }

    /// The signer's error, when it answered.
    pub fn refusal(&self) -> Option<&SignerError> {
        match self {
            CallError::Refused(e) => Some(e),
            CallError::Unavailable(_) => None,
        }
    }

    /// A refusal made here, for a reply that makes no sense (wrong type,
    /// malformed signature): the signer's answer cannot be used.
    pub fn bad_reply(what: &str) -> Self {
        CallError::Refused(SignerError::internal(format!(
            "the signer's reply is unusable: {what}"
        )))
    }

    /// The transport's failure: the request may not have reached the
    /// signer, so it is "unavailable" (retried), except for a signer that
    /// does not know the envelope's rpc (another protocol version) and a
    /// request the transport itself refuses (too large).
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code::*;
        match status.code() {
            Unimplemented => CallError::Refused(SignerError::precondition(format!(
                "the signer does not speak protocol version {} (it has no `Call` rpc): \
                 run node and signer of the same release",
                lnpd_proto::SIGNER_PROTOCOL_VERSION
            ))),
            InvalidArgument | OutOfRange | PermissionDenied | Unauthenticated => {
                CallError::Refused(SignerError::invalid(format!(
                    "the signer's transport refused the request: {}",
                    status.message()
                )))
            }
            _ => CallError::Unavailable(status.message().to_string()),
        }
    }
}

/// The signer's answer as the node takes it: "unavailable" means retry
/// later (a hardware signer unplugged), anything else is final.
impl From<SignerError> for CallError {
    fn from(e: SignerError) -> Self {
        match e.kind {
            ErrorKind::Unavailable => CallError::Unavailable(e.message),
            _ => CallError::Refused(e),
        }
    }
}

/// The reply of the expected type, or a refusal naming the mismatch.
macro_rules! expect_reply {
    ($result:expr, $variant:ident) => {
        match $result {
            Ok(lnpd_proto::signer::reply::Body::$variant(r)) => Ok(r),
            Ok(_) => Err(CallError::bad_reply("a reply of the wrong type")),
            Err(e) => Err(e),
        }
    };
}
pub(crate) use expect_reply;

/// What to do with a reply.
type Done = Box<dyn FnOnce(Result<reply::Body, CallError>) + Send>;

struct Job {
    body: request::Body,
    timeout: Duration,
    done: Done,
}

/// Requests the node already answered for (a revocation LDK checked
/// itself, a holder commitment validation whose answer LDK was told is
/// pending), sent with the next request in one batch, or on their own after
/// [`DEFER_AT_MOST`]. Apart from the link, so queueing one never waits for
/// a call in progress.
#[derive(Default)]
struct Deferred {
    entries: Vec<DeferredEntry>,
    since: Option<Instant>,
}

/// One deferred request, and who waits for its answer, if anyone.
struct DeferredEntry {
    body: request::Body,
    /// Gets the signer's judgement (never "unavailable": the request is
    /// kept and sent again); the connection's answer hook runs after it.
    done: Option<Done>,
}

/// The transport and its reconnect state; one call at a time.
struct Link {
    transport: Box<dyn SignerTransport>,
    endpoint: String,
    connected: Arc<AtomicBool>,
    next_attempt: Instant,
    backoff: Duration,
    deferred: Arc<Mutex<Deferred>>,
    /// The highest state counter the signer reported.
    seen: Arc<AtomicU64>,
    /// Why the signer refuses to sign, as its greeting said.
    rollback: Arc<Mutex<Option<String>>>,
    /// Set while the signer refuses for an older state (`state-rollback-detected`).
    rolled_back: Arc<AtomicBool>,
    /// Set when LDK was told "pending" and needs `signer_unblocked`.
    pending: Arc<AtomicBool>,
    /// A deferred request someone waited for was answered: the answer
    /// hook is due once the call in progress is done.
    answer_due: bool,
}

/// Runs the answer hook, if one is set.
fn run_hook(hook: &Mutex<Option<AnswerHook>>) {
    let hook = hook.lock().ok().and_then(|h| h.clone());
    if let Some(hook) = hook {
        hook();
    }
}

/// Whether `e` is the signer's refusal for an older state
/// (`state-rollback-detected`): nothing was written, ask again once the
/// latest state is back.
pub(crate) fn is_rollback(e: &CallError) -> bool {
    e.refusal().and_then(|r| r.rule) == Some(lnpd_proto::RuleId::StateRollbackDetected)
}

/// Times and counts a round trip for the metrics.
fn record_round_trip(op: &'static str, started: Instant, result: &Result<reply::Body, CallError>) {
    metrics::histogram!("lnpd_node_signer_round_trip_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(_) => "ok",
        Err(CallError::Unavailable(_)) => "unavailable",
        Err(CallError::Refused(e)) => e.kind.as_str(),
    };
    metrics::counter!("lnpd_node_signer_requests_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

/// How long a deferred request waits for company before it goes alone.
pub const DEFER_AT_MOST: Duration = Duration::from_millis(10);

impl Link {
    /// Takes up to `n` of the oldest deferred requests.
    fn take_deferred(&self, n: usize) -> Vec<DeferredEntry> {
        match self.deferred.lock() {
            Ok(mut d) => {
                let take = d.entries.len().min(n);
                let out: Vec<DeferredEntry> = d.entries.drain(..take).collect();
                if d.entries.is_empty() {
                    d.since = None;
                }
                out
            }
            Err(_) => Vec::new(),
        }
    }

    /// Puts requests that could not be sent back in front of the queue.
    fn restore_deferred(&self, mut entries: Vec<DeferredEntry>) {
        if entries.is_empty() {
            return;
        }
        if let Ok(mut d) = self.deferred.lock() {
            entries.append(&mut d.entries);
            d.entries = entries;
            d.since.get_or_insert_with(Instant::now);
        }
    }

    fn has_deferred(&self) -> bool {
        self.deferred_len() > 0
    }

    fn deferred_len(&self) -> usize {
        self.deferred.lock().map(|d| d.entries.len()).unwrap_or(0)
    }

    /// Holds the deferred requests back for `d` (they failed as a whole:
    /// not resent every few milliseconds).
    fn hold_deferred(&self, d: Duration) {
        if let Ok(mut q) = self.deferred.lock() {
            q.since = Some(Instant::now() + d);
        }
    }

    /// Sends deferred requests alone until at most `left` remain (or the
    /// signer does not take them): a request never overtakes older
    /// deferred ones.
    fn flush_until(&mut self, left: usize, timeout: Duration) -> Result<(), CallError> {
        let mut before = self.deferred_len();
        while before > left {
            self.flush(timeout)?;
            let now = self.deferred_len();
            if now >= before {
                break;
            }
            before = now;
        }
        Ok(())
    }

    /// Sends the deferred requests (as many as fit in one batch) without
    /// company; on failure they stay queued, in their order.
    fn flush(&mut self, timeout: Duration) -> Result<(), CallError> {
        self.connect()?;
        let entries = self.take_deferred(lnpd_proto::MAX_BATCH);
        if entries.is_empty() {
            return Ok(());
        }
        let bodies = entries.iter().map(|e| e.body.clone()).collect();
        let results = match self.transport.call_batch(bodies, timeout) {
            Ok(results) => results,
            Err(e @ CallError::Unavailable(_)) => {
                let r = Err(e);
                self.note(&r);
                self.restore_deferred(entries);
                return r.map(|_| ());
            }
            Err(e) => {
                // Refused as a whole (not by a rule on one of them): all
                // kept, sent again later.
                tracing::error!("the signer refused a batch of deferred requests: {e}");
                self.restore_deferred(entries);
                self.hold_deferred(Duration::from_secs(1));
                return Ok(());
            }
        };
        self.settle_deferred(entries, results);
        Ok(())
    }

    /// The signer's answers to deferred requests. LDK was told each was
    /// fine (it had checked it) or that its answer is pending: a refusal is
    /// loud and goes to whoever waits, and one refused for an older state
    /// (nothing written) is kept to be sent again once the latest state is
    /// back.
    fn settle_deferred(
        &mut self,
        entries: Vec<DeferredEntry>,
        results: Vec<Result<reply::Body, CallError>>,
    ) {
        let mut again = Vec::new();
        let mut lost = None;
        let mut answered = false;
        for (entry, r) in entries.into_iter().zip(results) {
            match r {
                Err(e) if is_rollback(&e) => {
                    self.rolled_back.store(true, Ordering::SeqCst);
                    again.push(entry);
                }
                // Not handled (no signer, a standby, a greeting due):
                // sent again, and the link reconnects.
                Err(e @ CallError::Unavailable(_)) => {
                    again.push(entry);
                    lost = Some(e);
                }
                // The signer failed on it (a bug, a poisoned lock), it did
                // not judge it: kept, sent again later.
                Err(CallError::Refused(e)) if e.kind == lnpd_proto::ErrorKind::Internal => {
                    tracing::error!("a deferred request failed in the signer, kept: {e}");
                    again.push(entry);
                }
                r => {
                    if let Err(e) = &r {
                        tracing::error!("a deferred request was refused by the signer: {e}");
                    }
                    if let Some(done) = entry.done {
                        done(r);
                        answered = true;
                    }
                }
            }
        }
        if answered {
            // Someone was told "pending" for it (LDK): it asks again once
            // the call that carried it has its own answer in place.
            self.answer_due = true;
        }
        if let Some(e) = lost {
            self.note(&Err(e));
        } else if !again.is_empty() && !self.rolled_back.load(Ordering::SeqCst) {
            self.hold_deferred(Duration::from_secs(1));
        } else if !again.is_empty() {
            tracing::warn!(
                "{} deferred request(s) kept until the signer's latest state is back",
                again.len()
            );
        }
        self.restore_deferred(again);
    }

    /// [`Self::call_now`], timed and counted for the metrics.
    fn call(&mut self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        let op = body.name();
        let started = Instant::now();
        let result = self.call_now(body, timeout);
        record_round_trip(op, started, &result);
        result
    }

    fn call_now(
        &mut self,
        body: request::Body,
        timeout: Duration,
    ) -> Result<reply::Body, CallError> {
        self.connect()?;
        if self.has_deferred() && !body.batchable() {
            if body.independent_of_channels() {
                // Onion decoding needs no channel state: it does not wait
                // for the deferred requests, which go with the next
                // channel request as usual.
                let result = self.transport.call(body, timeout);
                self.note(&result);
                return result;
            }
            self.flush_until(0, timeout)?;
        }
        if body.batchable() {
            self.flush_until(lnpd_proto::MAX_BATCH - 1, timeout)?;
        }
        // The oldest first, as many as fit beside this request (only a
        // request that may be batched: one deferred while this call ran
        // waits for the next).
        let deferred = if body.batchable() {
            self.take_deferred(lnpd_proto::MAX_BATCH - 1)
        } else {
            Vec::new()
        };
        if deferred.is_empty() {
            let result = self.transport.call(body, timeout);
            self.note(&result);
            return result;
        }
        let mut bodies: Vec<request::Body> = deferred.iter().map(|e| e.body.clone()).collect();
        bodies.push(body);
        match self.transport.call_batch(bodies, timeout) {
            Ok(mut results) => {
                let last = results
                    .pop()
                    .unwrap_or_else(|| Err(CallError::Unavailable("empty batch reply".into())));
                self.settle_deferred(deferred, results);
                self.note(&last);
                last
            }
            Err(e) => {
                self.restore_deferred(deferred);
                let r = Err(e);
                self.note(&r);
                r
            }
        }
    }

    fn note(&mut self, result: &Result<reply::Body, CallError>) {
        if let Err(CallError::Unavailable(why)) = result {
            let ep = self
                .transport
                .endpoint()
                .unwrap_or_else(|| self.endpoint.clone());
            tracing::warn!("lost the signer connection to {ep} ({why}); will reconnect");
            self.connected.store(false, Ordering::SeqCst);
            self.transport.next_endpoint(why);
        }
    }

    fn connect(&mut self) -> Result<(), CallError> {
        if !self.connected.load(Ordering::SeqCst) {
            let ep = self
                .transport
                .endpoint()
                .unwrap_or_else(|| self.endpoint.clone());
            if Instant::now() < self.next_attempt {
                return Err(CallError::Unavailable(format!("reconnecting to {ep}")));
            }
            match self.transport.connect().and_then(|()| self.greet()) {
                Ok(()) => {
                    let ep = self.transport.endpoint().unwrap_or(ep);
                    tracing::info!("connected to the signer at {ep}");
                    self.backoff = Duration::from_millis(100);
                    self.connected.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(
                        "signer at {ep} unreachable, retrying in {:?}: {e}",
                        self.backoff
                    );
                    self.transport.next_endpoint(&e);
                    self.next_attempt = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                    return Err(CallError::Unavailable(e));
                }
            }
        }
        Ok(())
    }

    /// The first request on a new connection: tells the signer the highest
    /// state counter the node saw from it. A signer whose state is older
    /// says so and signs nothing (`state-rollback-detected`): logged here,
    /// and every later refusal names the rule. A standby replica answers
    /// "unavailable": the connection is not kept.
    fn greet(&mut self) -> Result<(), String> {
        let hello = request::Body::Info(lnpd_proto::signer::InfoRequest {
            protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
            seen_state_counter: self.seen.load(Ordering::SeqCst),
        });
        match self.transport.call(hello, Duration::from_secs(10)) {
            Ok(reply::Body::Info(info)) => {
                let rollback = (!info.rollback.is_empty()).then_some(info.rollback);
                if let Some(why) = &rollback {
                    tracing::error!(
                        rule = lnpd_proto::RuleId::StateRollbackDetected.as_str(),
                        "the signer refuses to sign: {why}"
                    );
                }
                if rollback.is_some() {
                    self.rolled_back.store(true, Ordering::SeqCst);
                } else if self.rolled_back.swap(false, Ordering::SeqCst) {
                    // Restored: what LDK left pending and the deferred
                    // requests kept meanwhile go now.
                    tracing::info!("the signer's state is the latest again");
                    self.pending.store(true, Ordering::SeqCst);
                }
                if let Ok(mut r) = self.rollback.lock() {
                    *r = rollback;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(CallError::Unavailable(e)) => Err(e),
            // Another protocol version, say: every call will say so too.
            Err(CallError::Refused(e)) => {
                tracing::warn!("the signer refused the greeting: {e}");
                Ok(())
            }
        }
    }
}

/// A connection to `lnpd-signer`, shared by every signer object of the node.
pub struct SignerConnection {
    link: Arc<Mutex<Link>>,
    /// Calls from inside the async runtime, and every request submitted
    /// without waiting, go through a worker thread (a runtime cannot block
    /// on another one); plain threads (LDK's background processor) call the
    /// link directly, saving two thread hand-offs per request.
    /// `None` asks the worker to send the deferred requests now.
    jobs: mpsc::Sender<Option<Job>>,
    /// Requests handed to the worker, and how many of them were answered:
    /// a direct call waits for those submitted before it, so that requests
    /// reach the signer in order.
    submitted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    /// Run after each answer to a submitted request (the node calls
    /// `signer_unblocked` from it).
    on_answer: Arc<Mutex<Option<AnswerHook>>>,
    deferred: Arc<Mutex<Deferred>>,
    connected: Arc<AtomicBool>,
    /// Set when an operation LDK can retry was answered "pending" because
    /// the signer was unavailable; the node calls `signer_unblocked` once
    /// the signer is back and clears it.
    pending: Arc<AtomicBool>,
    endpoint: String,
    seen: Arc<AtomicU64>,
    rollback: Arc<Mutex<Option<String>>>,
    rolled_back: Arc<AtomicBool>,
    /// The transport's way beside the link, if it has one.
    lane: Option<SideLane>,
}

/// What [`SignerConnection::on_answer`] runs.
pub type AnswerHook = Arc<dyn Fn() + Send + Sync>;

/// How requests reach the signer. Production uses [`GrpcTransport`]
/// (gRPC over mutual TLS); the payments benchmark links the signer core
/// in-process through the same seam, so everything above it is identical.
pub trait SignerTransport: Send + 'static {
    /// Opens a connection; an error means "unreachable now, retry later".
    fn connect(&mut self) -> Result<(), String>;
    /// The address now in use, when it has several (replicas).
    fn endpoint(&self) -> Option<String> {
        None
    }
    /// After a failure (`why`): the replica to try next, if several.
    fn next_endpoint(&mut self, _why: &str) {}
    /// Sends one request on the open connection and waits at most
    /// `timeout` for the reply. `Unavailable` drops the connection (the next
    /// call reconnects).
    fn call(&mut self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError>;

    /// A way to the signer beside the one [`Self::call`] takes, for what
    /// needs no channel state (see [`SideLane`]); `None` if there is none.
    fn side_lane(&self) -> Option<SideLane> {
        None
    }

    /// Sends requests to be handled in order and made durable together;
    /// one result per request. Without batch support: one call each.
    fn call_batch(
        &mut self,
        bodies: Vec<request::Body>,
        timeout: Duration,
    ) -> Result<Vec<Result<reply::Body, CallError>>, CallError> {
        let mut out = Vec::with_capacity(bodies.len());
        for b in bodies {
            match self.call(b, timeout) {
                Err(e @ CallError::Unavailable(_)) => return Err(e),
                r => out.push(r),
            }
        }
        Ok(out)
    }
}

/// gRPC over mutual TLS to an `lnpd-signer run` daemon, or to one of
/// several replicas of it (one active, the others standing by).
pub struct GrpcTransport {
    addrs: Vec<String>,
    current: usize,
    tls: SignerTls,
    grpc: GrpcCalls,
}

type Client = lnpd_proto::signer::signer_client::SignerClient<tonic::transport::Channel>;

/// A gRPC client of the signer on a runtime of its own, however it was
/// connected (dialled, or accepted from a signer that dials out).
pub(crate) struct GrpcCalls {
    pub(crate) runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    /// The same client, for the [`SideLane`].
    shared: Arc<Mutex<Option<Client>>>,
    pub(crate) seen: Arc<AtomicU64>,
}

/// Requests that need no channel state (ECDH for onion peeling, the node
/// id) go to the signer on their own HTTP/2 stream of the same connection:
/// they neither wait for the requests in flight (a signature LDK asked for
/// without waiting) nor hold them up; the signer answers them while it
/// writes. Any failure falls back to the usual way, which reconnects.
#[derive(Clone)]
pub struct SideLane {
    runtime: tokio::runtime::Handle,
    client: Arc<Mutex<Option<Client>>>,
    seen: Arc<AtomicU64>,
}

impl SideLane {
    /// The connection's client; `Unavailable` when not connected.
    fn client(&self) -> Result<Client, CallError> {
        self.client
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| CallError::Unavailable("not connected".into()))
    }

    /// One request; `Unavailable` when not connected.
    fn call(&self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        let mut c = self.client()?;
        let seen = self.seen.clone();
        let call = async move { timed_call(&mut c, body, &seen, timeout).await };
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(call);
        }
        // On a runtime's thread (a peer connection's task): the call runs on
        // the lane's runtime, this thread waits as it would for any call.
        let (tx, rx) = mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(call.await);
        });
        rx.recv_timeout(timeout + Duration::from_millis(100))
            .map_err(|_| CallError::Unavailable(format!("no answer within {timeout:?}")))?
    }

    /// One request sent without waiting: `done` gets its answer on the
    /// lane's runtime (`Unavailable` at once when not connected).
    fn spawn(
        &self,
        body: request::Body,
        timeout: Duration,
        done: impl FnOnce(Result<reply::Body, CallError>) + Send + 'static,
    ) {
        let mut c = match self.client() {
            Ok(c) => c,
            Err(e) => return done(Err(e)),
        };
        let seen = self.seen.clone();
        self.runtime.spawn(async move {
            done(timed_call(&mut c, body, &seen, timeout).await);
        });
    }
}

/// One request on `c`, its answer or why there is none (no answer within
/// `timeout` counts as unavailable).
async fn timed_call(
    c: &mut Client,
    body: request::Body,
    seen: &AtomicU64,
    timeout: Duration,
) -> Result<reply::Body, CallError> {
    match tokio::time::timeout(timeout, client::call_counted(c, body, seen)).await {
        Ok(Ok(r)) => r.map_err(CallError::from),
        Ok(Err(status)) => Err(CallError::from_status(&status)),
        Err(_) => Err(CallError::Unavailable(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

impl GrpcCalls {
    /// No connection yet; a runtime of one worker of its own, so LDK's
    /// synchronous callers never block the node's async workers (and the
    /// HTTP/2 connection is driven between calls too: the signer's
    /// keepalive pings are answered and an idle node keeps its connection).
    pub(crate) fn new(thread_name: &str) -> std::io::Result<Self> {
        Ok(GrpcCalls {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(thread_name)
                .enable_all()
                .build()?,
            client: None,
            shared: Arc::new(Mutex::new(None)),
            seen: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The open connection's client, or none (the [`SideLane`] follows).
    pub(crate) fn set_client(&mut self, client: Option<Client>) {
        if let Ok(mut s) = self.shared.lock() {
            s.clone_from(&client);
        }
        self.client = client;
    }

    /// A lane beside the calls of this client (see [`SideLane`]).
    pub(crate) fn side_lane(&self) -> SideLane {
        SideLane {
            runtime: self.runtime.handle().clone(),
            client: self.shared.clone(),
            seen: self.seen.clone(),
        }
    }

    /// One request on the open connection.
    pub(crate) fn call(
        &mut self,
        body: request::Body,
        timeout: Duration,
    ) -> Result<reply::Body, CallError> {
        let c = self
            .client
            .as_mut()
            .ok_or_else(|| CallError::Unavailable("not connected".into()))?;
        let r = self
            .runtime
            .block_on(timed_call(c, body, &self.seen, timeout));
        if matches!(r, Err(CallError::Unavailable(_))) {
            self.set_client(None);
        }
        r
    }

    /// A batch on the open connection.
    pub(crate) fn call_batch(
        &mut self,
        bodies: Vec<request::Body>,
        timeout: Duration,
    ) -> Result<Vec<Result<reply::Body, CallError>>, CallError> {
        let n = bodies.len();
        let c = self
            .client
            .as_mut()
            .ok_or_else(|| CallError::Unavailable("not connected".into()))?;
        let seen = &self.seen;
        let replies = match self.runtime.block_on(async {
            tokio::time::timeout(timeout, client::call_batch_counted(c, bodies, seen)).await
        }) {
            Ok(r) => r.map_err(|s| CallError::from_status(&s)),
            Err(_) => Err(CallError::Unavailable(format!(
                "no answer within {timeout:?}"
            ))),
        };
        if matches!(replies, Err(CallError::Unavailable(_))) {
            self.set_client(None);
        }
        let replies = replies?;
        if replies.len() != n {
            return Err(CallError::bad_reply(&format!(
                "{} replies to a batch of {n}",
                replies.len()
            )));
        }
        Ok(replies
            .into_iter()
            .map(|r| r.map_err(CallError::from))
            .collect())
    }
}

impl GrpcTransport {
    /// A transport to the signer at `addrs` (host:port, or several
    /// separated by commas: replicas); its own runtime, so LDK's
    /// synchronous callers never block the node's async workers.
    pub fn new(addrs: &str, tls: SignerTls) -> std::io::Result<Self> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no signer address given",
            ));
        }
        Ok(GrpcTransport {
            addrs,
            current: 0,
            tls,
            grpc: GrpcCalls::new("signer-transport")?,
        })
    }

    /// The highest state counter the signer reported, kept here.
    pub fn seen(&self) -> Arc<AtomicU64> {
        self.grpc.seen.clone()
    }
}

/// The replica a standby's answer names as active ("... active is NAME at
/// ADDR ..."), among `addrs`.
fn named_active(why: &str, addrs: &[String]) -> Option<usize> {
    let rest = why.split("active is ").nth(1)?;
    let addr = rest
        .split(" at ")
        .nth(1)?
        .split([' ', ',', ')', ';'])
        .next()?;
    addrs.iter().position(|a| a == addr)
}

impl SignerTransport for GrpcTransport {
    fn connect(&mut self) -> Result<(), String> {
        let addr = &self.addrs[self.current % self.addrs.len()];
        let c = self
            .grpc
            .runtime
            .block_on(client::connect(addr, &self.tls))
            .map_err(|e| e.to_string())?;
        self.grpc.set_client(Some(c));
        Ok(())
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.addrs[self.current % self.addrs.len()].clone())
    }

    fn side_lane(&self) -> Option<SideLane> {
        Some(self.grpc.side_lane())
    }

    fn next_endpoint(&mut self, why: &str) {
        self.grpc.set_client(None);
        // A signer that waits for our greeting is the one to greet.
        if self.addrs.len() > 1 && !why.contains(lnpd_proto::AWAITING_GREETING) {
            self.current = named_active(why, &self.addrs)
                .filter(|&i| i != self.current)
                .unwrap_or((self.current + 1) % self.addrs.len());
        }
    }

    fn call(&mut self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        self.grpc.call(body, timeout)
    }

    fn call_batch(
        &mut self,
        bodies: Vec<request::Body>,
        timeout: Duration,
    ) -> Result<Vec<Result<reply::Body, CallError>>, CallError> {
        self.grpc.call_batch(bodies, timeout)
    }
}

impl SignerConnection {
    /// Starts the connection thread for the signer at `addr` (host:port)
    /// over gRPC with mutual TLS. Connecting happens on first use and again
    /// after any failure.
    pub fn start(addr: &str, tls: SignerTls) -> std::io::Result<Arc<Self>> {
        let transport = GrpcTransport::new(addr, tls)?;
        let seen = transport.seen();
        Self::start_counted(addr, transport, seen)
    }

    /// Listens on `listen` for the signer's own connection (`lnpd-signer
    /// run --connect`) and sends requests over it; returns the address
    /// bound (port 0 picks one).
    pub fn start_inbound(
        listen: std::net::SocketAddr,
        tls: SignerTls,
        allow_from: Vec<std::net::IpAddr>,
    ) -> std::io::Result<(Arc<Self>, std::net::SocketAddr)> {
        let transport = super::inbound::InboundTransport::listen(listen, tls, allow_from)?;
        let bound = transport.local_addr();
        let seen = transport.seen();
        let name = format!("the signer dialling in to {bound}");
        Ok((Self::start_counted(&name, transport, seen)?, bound))
    }

    /// Starts the connection thread over any transport; `endpoint` names
    /// the signer in logs.
    pub fn start_with(
        endpoint: &str,
        transport: impl SignerTransport,
    ) -> std::io::Result<Arc<Self>> {
        Self::start_counted(endpoint, transport, Arc::new(AtomicU64::new(0)))
    }

    /// [`Self::start_with`] over a transport that keeps the signer's state
    /// counter in `seen`.
    pub fn start_counted(
        endpoint: &str,
        transport: impl SignerTransport,
        seen: Arc<AtomicU64>,
    ) -> std::io::Result<Arc<Self>> {
        let rollback = Arc::new(Mutex::new(None));
        let rolled_back = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicBool::new(false));
        let (jobs, rx) = mpsc::channel::<Option<Job>>();
        let lane = transport.side_lane();
        let connected = Arc::new(AtomicBool::new(false));
        let deferred = Arc::new(Mutex::new(Deferred::default()));
        let on_answer: Arc<Mutex<Option<AnswerHook>>> = Arc::new(Mutex::new(None));
        let link = Arc::new(Mutex::new(Link {
            transport: Box::new(transport),
            endpoint: endpoint.to_string(),
            connected: connected.clone(),
            next_attempt: Instant::now(),
            backoff: Duration::from_millis(100),
            deferred: deferred.clone(),
            seen: seen.clone(),
            rollback: rollback.clone(),
            rolled_back: rolled_back.clone(),
            pending: pending.clone(),
            answer_due: false,
        }));
        let worker_link = link.clone();
        let worker_deferred = deferred.clone();
        let worker_hook = on_answer.clone();
        std::thread::Builder::new()
            .name("lnpd-signer-client".into())
            .spawn(move || loop {
                let now = match rx.recv_timeout(DEFER_AT_MOST) {
                    Ok(Some(job)) => {
                        let (result, due) = match worker_link.lock() {
                            Ok(mut l) => {
                                let r = l.call(job.body, job.timeout);
                                (r, std::mem::take(&mut l.answer_due))
                            }
                            Err(_) => (
                                Err(CallError::Unavailable("signer link poisoned".into())),
                                false,
                            ),
                        };
                        (job.done)(result);
                        if due {
                            run_hook(&worker_hook);
                        }
                        continue;
                    }
                    Ok(None) => true,
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                {
                    {
                        // Deferred requests with no company go alone, at
                        // once when someone waits for an answer.
                        // (Not while waiting to reconnect: the link logs that.)
                        let due = worker_deferred.lock().is_ok_and(|d| {
                            d.since.is_some_and(|t| now || t.elapsed() >= DEFER_AT_MOST)
                        });
                        if !due {
                            continue;
                        }
                        if let Ok(mut l) = worker_link.try_lock() {
                            // Not while the signer refuses for an older
                            // state: kept until its greeting says restored.
                            let reachable = (l.connected.load(Ordering::SeqCst)
                                || Instant::now() >= l.next_attempt)
                                && !l.rolled_back.load(Ordering::SeqCst);
                            if reachable {
                                if let Err(e) = l.flush(Duration::from_secs(10)) {
                                    tracing::debug!("deferred signer request not sent yet: {e}");
                                }
                                if std::mem::take(&mut l.answer_due) {
                                    drop(l);
                                    run_hook(&worker_hook);
                                }
                            }
                        }
                    }
                }
            })?;
        Ok(Arc::new(SignerConnection {
            link,
            jobs,
            submitted: Arc::new(AtomicUsize::new(0)),
            answered: Arc::new(AtomicUsize::new(0)),
            on_answer,
            deferred,
            connected,
            pending,
            endpoint: endpoint.to_string(),
            seen,
            rollback,
            rolled_back,
            lane,
        }))
    }

    /// The highest state counter the signer reported (the node keeps it
    /// across restarts: [`Self::note_seen`] at start).
    pub fn seen_state_counter(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Raises the counter the node saw (the value it kept from before).
    pub fn note_seen(&self, counter: u64) {
        self.seen.fetch_max(counter, Ordering::SeqCst);
    }

    /// Why the signer refuses to sign, as it said when greeted.
    pub fn rollback(&self) -> Option<String> {
        self.rollback.lock().ok().and_then(|r| r.clone())
    }

    /// Notes that the signer refused a request LDK keeps pending because
    /// its state is older than it should be (`state-rollback-detected`).
    /// The signer is restarted on its latest state to get out of that; its
    /// greeting then clears this and marks what LDK left pending for a
    /// retry (the signer watch's ping finds the restarted signer).
    pub fn mark_rolled_back(&self) {
        self.rolled_back.store(true, Ordering::SeqCst);
    }

    /// Queues a request the node has already answered for; it goes to the
    /// signer with the next request (one round trip, one durable write) or
    /// alone after [`DEFER_AT_MOST`]. Used for the peer's revocation, which
    /// LDK checks against the peer's commitment point before asking.
    pub fn defer(&self, body: request::Body) {
        self.defer_entry(body, None);
    }

    /// Queues a request whose answer `done` waits for (its caller told LDK
    /// "pending"): it goes with the next request for a channel, or alone
    /// when [`Self::flush_waited`] is called, or after [`DEFER_AT_MOST`].
    /// `done` gets the signer's judgement on the connection's thread; the
    /// hook set with [`Self::on_answer`] runs after it.
    pub fn defer_with(
        &self,
        body: request::Body,
        done: impl FnOnce(Result<reply::Body, CallError>) + Send + 'static,
    ) {
        self.defer_entry(body, Some(Box::new(done)));
    }

    fn defer_entry(&self, body: request::Body, done: Option<Done>) {
        let entry = DeferredEntry { body, done };
        let refused = match self.deferred.lock() {
            Ok(mut d) => {
                d.entries.push(entry);
                d.since.get_or_insert_with(Instant::now);
                None
            }
            Err(_) => Some(entry),
        };
        if let Some(entry) = refused {
            tracing::error!("deferred queue broken: sending a deferred request now");
            let r = self.call(entry.body, Duration::from_secs(10));
            if let Some(done) = entry.done {
                done(r);
            }
        }
    }

    /// Sends the deferred requests now if someone waits for one of them's
    /// answer (LDK's handling of a message ended without the request that
    /// would have carried them). Does not wait.
    pub fn flush_waited(&self) {
        let waited = self
            .deferred
            .lock()
            .is_ok_and(|d| d.entries.iter().any(|e| e.done.is_some()));
        if waited {
            let _ = self.jobs.send(None);
        }
    }

    /// Hands `body` to the signer without waiting: `done` gets the answer
    /// on the connection's thread, after which the hook set with
    /// [`Self::on_answer`] runs. For operations LDK can take "pending"
    /// for: the caller answers pending, and LDK asks again once told the
    /// signer is unblocked.
    pub fn submit(
        &self,
        body: request::Body,
        timeout: Duration,
        done: impl FnOnce(Result<reply::Body, CallError>) + Send + 'static,
    ) {
        let answered = self.answered.clone();
        let hook = self.on_answer.clone();
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            body,
            timeout,
            done: Box::new(move |r| {
                // "Unavailable" is no answer: the caller marks the
                // connection pending, and LDK retries once it is back.
                let real = !matches!(r, Err(CallError::Unavailable(_)));
                done(r);
                answered.fetch_add(1, Ordering::SeqCst);
                let hook = hook.lock().ok().and_then(|h| h.clone());
                if let (true, Some(hook)) = (real, hook) {
                    hook();
                }
            }),
        };
        if let Err(mpsc::SendError(Some(job))) = self.jobs.send(Some(job)) {
            (job.done)(Err(CallError::Unavailable(
                "signer client thread stopped".into(),
            )));
        }
    }

    /// How many submitted requests wait for their answer.
    pub fn unanswered(&self) -> usize {
        self.submitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.answered.load(Ordering::SeqCst))
    }

    /// Sets what runs after each answer to a submitted request.
    pub fn on_answer(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut h) = self.on_answer.lock() {
            *h = Some(Arc::new(hook));
        }
    }

    /// The signer's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the last call reached the signer.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// One call, waiting at most `timeout`.
    pub fn call(&self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        // What needs no channel state takes the side lane once the link
        // has greeted the signer (see [`SideLane`]).
        if let Some(lane) = self
            .lane
            .as_ref()
            .filter(|_| body.node_key_only() && self.connected.load(Ordering::SeqCst))
        {
            let started = Instant::now();
            match lane.call(body.clone(), timeout) {
                Err(CallError::Unavailable(why)) => {
                    tracing::debug!("signer side lane: {why}; taking the link")
                }
                result => {
                    record_round_trip(body.name(), started, &result);
                    return result;
                }
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // Waiting for the link counts against this call's timeout too.
            let deadline = Instant::now() + timeout;
            let before = self.submitted.load(Ordering::SeqCst);
            loop {
                // Requests submitted before this call go first.
                if self.answered.load(Ordering::SeqCst) < before {
                    if Instant::now() >= deadline {
                        return Err(CallError::Unavailable(format!(
                            "no answer within {timeout:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                match self.link.try_lock() {
                    Ok(mut l) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let result = l.call(body, left.max(Duration::from_millis(1)));
                        if std::mem::take(&mut l.answer_due) {
                            drop(l);
                            run_hook(&self.on_answer);
                        }
                        return result;
                    }
                    Err(std::sync::TryLockError::Poisoned(_)) => {
                        return Err(CallError::Unavailable("signer link poisoned".into()))
                    }
                    Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(50))
                    }
                    Err(std::sync::TryLockError::WouldBlock) => {
                        return Err(CallError::Unavailable(format!(
                            "no answer within {timeout:?}"
                        )))
                    }
                }
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Some(Job {
                body,
                timeout,
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            }))
            .map_err(|_| CallError::Unavailable("signer client thread stopped".into()))?;
        rx.recv_timeout(timeout)
            .map_err(|_| CallError::Unavailable(format!("no answer within {timeout:?}")))?
    }

    /// Sends a request that needs no channel state (ECDH, the node id) on
    /// the side lane without waiting; `done` gets the answer on another
    /// thread. `Unavailable` at once where there is no side lane (not
    /// gRPC, not connected yet): the caller then asks the usual way.
    pub fn call_beside(
        &self,
        body: request::Body,
        timeout: Duration,
        done: impl FnOnce(Result<reply::Body, CallError>) + Send + 'static,
    ) {
        match self
            .lane
            .as_ref()
            .filter(|_| body.node_key_only() && self.connected.load(Ordering::SeqCst))
        {
            Some(lane) => {
                let op = body.name();
                let started = Instant::now();
                lane.spawn(body, timeout, move |r| {
                    record_round_trip(op, started, &r);
                    done(r)
                })
            }
            None => done(Err(CallError::Unavailable("no side lane".into()))),
        }
    }

    /// A call retried while the signer is unavailable, for operations LDK
    /// cannot take a "pending" answer for. Gives up after `patience`.
    pub fn call_retrying(
        &self,
        what: &str,
        body: request::Body,
        patience: Duration,
    ) -> Result<reply::Body, CallError> {
        self.call_retrying_each(what, body, Duration::from_secs(10), patience)
    }

    /// Like [`Self::call_retrying`], each attempt waiting up to `per_call`
    /// for its answer (a hardware signer may be waiting for its button).
    pub fn call_retrying_each(
        &self,
        what: &str,
        body: request::Body,
        per_call: Duration,
        patience: Duration,
    ) -> Result<reply::Body, CallError> {
        let deadline = Instant::now() + patience;
        let mut wait = Duration::from_millis(50);
        loop {
            match self.call(body.clone(), per_call) {
                Err(e) if e.is_unavailable() && Instant::now() + wait < deadline => {
                    tracing::warn!("{what}: {e}; retrying in {wait:?}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Records that LDK was told "pending" and will need `signer_unblocked`.
    pub fn mark_pending(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    /// Takes the pending mark (true if some operation waits for the signer).
    pub fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_without_the_envelope_rpc_is_another_protocol_version() {
        let e = CallError::from_status(&tonic::Status::unimplemented("no such method"));
        let e = e.refusal().expect("final, not retried").clone();
        assert_eq!(e.kind, ErrorKind::FailedPrecondition);
        assert!(
            e.message.contains("does not speak protocol version 3"),
            "{e}"
        );
        // Transport trouble is retried; the signer's own "unavailable"
        // (a hardware signer unplugged) too; its refusals are final.
        assert!(CallError::from_status(&tonic::Status::unavailable("down")).is_unavailable());
        assert!(CallError::from(SignerError::unavailable("unplugged")).is_unavailable());
        let refused = CallError::from(SignerError::policy(
            lnpd_proto::RuleId::PaymentMax,
            "too much",
        ));
        assert_eq!(
            refused.refusal().and_then(|e| e.rule),
            Some(lnpd_proto::RuleId::PaymentMax)
        );
    }

    /// The round trips a [`Recording`] saw: the names of each one's requests.
    type Trips = Arc<Mutex<Vec<Vec<&'static str>>>>;

    /// Records what reaches the signer (one entry per round trip: the
    /// names of its requests); refuses validations when `refuse` is set.
    struct Recording {
        trips: Trips,
        refuse: bool,
    }

    impl Recording {
        fn answer(&self, body: &request::Body) -> Result<reply::Body, CallError> {
            match body {
                request::Body::ValidateHolderCommitment(_) if self.refuse => Err(
                    SignerError::policy(lnpd_proto::RuleId::CommitmentFeeRange, "too high").into(),
                ),
                _ => Ok(reply::Body::Ping(lnpd_proto::signer::PingReply::default())),
            }
        }
    }

    impl SignerTransport for Recording {
        fn connect(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn call(&mut self, body: request::Body, _: Duration) -> Result<reply::Body, CallError> {
            if !matches!(body, request::Body::Info(_)) {
                self.trips.lock().unwrap().push(vec![body.name()]);
            }
            self.answer(&body)
        }
        fn call_batch(
            &mut self,
            bodies: Vec<request::Body>,
            _: Duration,
        ) -> Result<Vec<Result<reply::Body, CallError>>, CallError> {
            self.trips
                .lock()
                .unwrap()
                .push(bodies.iter().map(request::Body::name).collect());
            Ok(bodies.iter().map(|b| self.answer(b)).collect())
        }
    }

    /// A connection over a [`Recording`], and how often its answer hook ran.
    fn recording(refuse: bool) -> (Arc<SignerConnection>, Trips, Arc<AtomicUsize>) {
        let trips = Arc::new(Mutex::new(Vec::new()));
        let t = Recording {
            trips: trips.clone(),
            refuse,
        };
        let conn = SignerConnection::start_with("test", t).unwrap();
        let hooked = Arc::new(AtomicUsize::new(0));
        let h = hooked.clone();
        conn.on_answer(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        (conn, trips, hooked)
    }

    fn validation() -> request::Body {
        request::Body::ValidateHolderCommitment(Default::default())
    }

    fn signature() -> request::Body {
        request::Body::SignCounterpartyCommitment(Default::default())
    }

    #[test]
    fn a_queued_validation_goes_with_the_next_request_and_is_answered_first() {
        let (conn, trips, hooked) = recording(false);
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        conn.defer_with(validation(), move |r| {
            t.send(("validation", r.is_ok())).unwrap()
        });
        conn.submit(signature(), Duration::from_secs(5), move |r| {
            tx.send(("signature", r.is_ok())).unwrap()
        });
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!([first, second], [("validation", true), ("signature", true)]);
        assert_eq!(
            *trips.lock().unwrap(),
            vec![vec![
                "validate_holder_commitment",
                "sign_counterparty_commitment"
            ]],
            "one round trip for both"
        );
        assert!(wait(|| hooked.load(Ordering::SeqCst) >= 1), "LDK not told");
    }

    #[test]
    fn a_queued_validation_without_company_goes_when_flushed() {
        let (conn, trips, hooked) = recording(false);
        let (tx, rx) = mpsc::channel();
        conn.defer(request::Body::ValidateCounterpartyRevocation(
            Default::default(),
        ));
        conn.defer_with(validation(), move |r| tx.send(r.is_ok()).unwrap());
        conn.flush_waited();
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        assert_eq!(
            *trips.lock().unwrap(),
            vec![vec![
                "validate_counterparty_revocation",
                "validate_holder_commitment"
            ]],
            "in their order, in one round trip"
        );
        assert!(wait(|| hooked.load(Ordering::SeqCst) == 1), "LDK not told");
    }

    #[test]
    fn a_refused_queued_validation_is_reported_once_and_not_sent_again() {
        let (conn, trips, _) = recording(true);
        let (tx, rx) = mpsc::channel();
        conn.defer_with(validation(), move |r| {
            let rule = r.err().and_then(|e| e.refusal().and_then(|r| r.rule));
            tx.send(rule).unwrap()
        });
        conn.flush_waited();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Some(lnpd_proto::RuleId::CommitmentFeeRange)
        );
        let (tx, rx) = mpsc::channel();
        conn.submit(signature(), Duration::from_secs(5), move |r| {
            tx.send(r.is_ok()).unwrap()
        });
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        assert_eq!(
            *trips.lock().unwrap(),
            vec![
                vec!["validate_holder_commitment"],
                vec!["sign_counterparty_commitment"]
            ]
        );
    }

    /// Waits (up to 5 s) for `cond`: the hook runs on the connection's thread.
    fn wait(cond: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }
}
