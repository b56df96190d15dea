//! The gRPC server: the `Call` and `Batch` rpcs of `signer.proto` hand the
//! envelope's requests to a [`Backend`] (the core under one lock: requests
//! for one node are serialized, which the state machine needs anyway; or a
//! hardware signer). Every answer of the signer, refusals included, is a
//! `Reply`; a gRPC status means the request never reached it.

use std::sync::{Arc, Mutex};

use lnpd_proto::signer::{self as pb, reply, request, signer_server};
use lnpd_proto::slots::{self, Slots};
use lnpd_signer_core::store::Store;
use lnpd_signer_core::{ChannelKeysId, NodeKey, Signer, SignerError};
use tonic::{Request, Response, Status};

/// What answers the node's calls: the signer core in this process
/// ([`SignerService`]) or a hardware signer behind the bridge
/// (`device_bridge::DeviceBackend`).
pub trait Backend: Send + Sync + 'static {
    /// One request: its reply, or the signer's error (a backend that
    /// cannot reach its signer answers `Unavailable`).
    fn call(&self, body: request::Body) -> Result<reply::Body, SignerError>;
    /// A batch (see `BatchRequest` in signer.proto): one result per
    /// request, or one error for all of them.
    fn call_batch(
        &self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError>;
    /// Answers a request that reads and writes no state (ECDH, the node id)
    /// while another request holds the signer (a durable write), so that
    /// onion peeling never waits for a write; `None`: served as usual.
    fn call_apart(&self, _body: &request::Body) -> Option<Result<reply::Body, SignerError>> {
        None
    }
    /// Whether a request holds the signer now (one more would wait for it).
    fn busy(&self) -> bool {
        false
    }
    /// Whether a call may block for long (a device waiting for its
    /// button): then it runs with `block_in_place`, which costs a thread
    /// hand-off that a sub-millisecond call does not need.
    fn may_block_long(&self) -> bool {
        false
    }
    /// The signer's state counter after the latest request (0: not counted,
    /// as by a hardware signer).
    fn state_counter(&self) -> u64 {
        0
    }
    /// Whether concurrent batchable requests may be served together
    /// ([`Backend::call_group`]: one durable write for all of them).
    fn groups(&self) -> bool {
        false
    }
    /// Batchable requests that arrived together, from independent callers:
    /// each handled as if alone, one durable write for all (group commit).
    fn call_group(&self, bodies: Vec<request::Body>) -> Vec<Result<reply::Body, SignerError>> {
        bodies.into_iter().map(|b| self.call(b)).collect()
    }
    /// What the metrics endpoint reports: gauges, and whether this backend
    /// can serve now (`/healthz`).
    fn status(&self) -> BackendStatus {
        BackendStatus {
            channels: None,
            pending_approvals: None,
            chain_height: None,
            ready: Ok("serving".into()),
        }
    }
}

/// A backend's gauges and readiness (see [`Backend::status`]).
#[derive(Clone, Debug)]
pub struct BackendStatus {
    /// Channels the signer keeps.
    pub channels: Option<usize>,
    /// Payments waiting for the operator's approval.
    pub pending_approvals: Option<usize>,
    /// Height of the chain the signer has checked.
    pub chain_height: Option<u32>,
    /// `Ok(what)` when it can sign now; `Err(why)` when not.
    pub ready: Result<String, String>,
}

impl BackendStatus {
    /// Not ready, and no gauges.
    pub fn not_ready(why: String) -> Self {
        BackendStatus {
            channels: None,
            pending_approvals: None,
            chain_height: None,
            ready: Err(why),
        }
    }
}

/// Counts a request by operation and outcome (and a refusal by its rule),
/// and how long it took.
fn record(
    op: &'static str,
    result: &Result<reply::Body, SignerError>,
    took: Option<std::time::Duration>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.kind.as_str(),
    };
    metrics::counter!("lnpd_signer_requests_total", "op" => op, "outcome" => outcome).increment(1);
    if let Some(t) = took {
        metrics::histogram!("lnpd_signer_request_duration_seconds", "op" => op)
            .record(t.as_secs_f64());
    }
    if let Err(SignerError {
        rule: Some(rule), ..
    }) = result
    {
        metrics::counter!("lnpd_signer_refusals_total", "rule" => rule.as_str()).increment(1);
    }
}

/// Runs `f`, handing the runtime thread over first if `long`.
fn run_blocking<T>(long: bool, f: impl FnOnce() -> T) -> T {
    if long {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// A [`Backend`] as the tonic service; keeps the runtime thread polling
/// for a short while after each answer (see `lnpd_proto::busy_poll`).
pub struct Grpc<B: Backend> {
    backend: Arc<B>,
    awake: Arc<lnpd_proto::busy_poll::Awake>,
    group: Arc<Mutex<Group>>,
}

/// Requests waiting for the group commit, and whether a task drains them.
#[derive(Default)]
struct Group {
    waiting: Vec<(
        request::Body,
        tokio::sync::oneshot::Sender<Result<reply::Body, SignerError>>,
    )>,
    draining: bool,
}

impl<B: Backend> Grpc<B> {
    /// Runs `f` on a blocking thread: the runtime's one worker keeps
    /// serving the connections meanwhile (see `Backend::call_apart`).
    async fn off_worker<T: Send + 'static>(
        &self,
        f: impl FnOnce(&B) -> Result<T, SignerError> + Send + 'static,
    ) -> Result<T, SignerError> {
        let b = self.backend.clone();
        tokio::task::spawn_blocking(move || f(&b))
            .await
            .unwrap_or_else(|_| Err(SignerError::internal("the request's thread stopped")))
    }

    /// Serves a batchable request with whatever else arrived meanwhile:
    /// the first waiting request starts a task that takes every waiting
    /// request, serves them with one durable write, and repeats until none
    /// waits (requests that arrive during a write are the next group).
    async fn grouped(&self, body: request::Body) -> Result<reply::Body, SignerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut g = self
                .group
                .lock()
                .map_err(|_| SignerError::internal("request queue lock poisoned"))?;
            g.waiting.push((body, tx));
            !std::mem::replace(&mut g.draining, true)
        };
        if start {
            // A thread of its own: a caller that goes away (its request
            // future dropped) must not strand the others, and the runtime's
            // worker stays free meanwhile for what needs no write (ECDH,
            // `Backend::call_apart`). Requests that arrive while the thread
            // starts join this group.
            let (backend, group) = (self.backend.clone(), self.group.clone());
            tokio::task::spawn_blocking(move || drain(&*backend, &group));
        }
        rx.await
            .unwrap_or_else(|_| Err(SignerError::internal("the request was dropped unanswered")))
    }
}

/// Serves waiting requests, group by group, until none waits.
fn drain<B: Backend>(backend: &B, group: &Mutex<Group>) {
    /// Should the task unwind (a bug), the next request starts a new one
    /// instead of waiting for this one for ever.
    struct Restart<'a>(&'a Mutex<Group>);
    impl Drop for Restart<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                if let Ok(mut g) = self.0.lock() {
                    g.draining = false;
                    g.waiting.clear();
                }
            }
        }
    }
    let _restart = Restart(group);
    loop {
        let taken = match group.lock() {
            Ok(mut g) if g.waiting.is_empty() => {
                g.draining = false;
                return;
            }
            Ok(mut g) => {
                let n = g.waiting.len().min(lnpd_proto::MAX_BATCH);
                g.waiting.drain(..n).collect::<Vec<_>>()
            }
            Err(_) => return, // a panic while holding it: the senders drop, callers get an error
        };
        let (bodies, senders): (Vec<_>, Vec<_>) = taken.into_iter().unzip();
        let results = if bodies.len() == 1 {
            bodies.into_iter().map(|b| backend.call(b)).collect()
        } else {
            backend.call_group(bodies)
        };
        for (tx, r) in senders.into_iter().zip(results) {
            let _ = tx.send(r);
        }
    }
}

/// The tonic service wrapping a [`Signer`]: the active one, or none while
/// this replica stands by (replicas, see `lnpd-signer run --store etcd://`).
pub struct SignerService<S: Store> {
    inner: Arc<Mutex<Slot<S>>>,
    audit: Option<Arc<crate::audit::AuditLog>>,
    allowlist: Option<Mutex<crate::allowlist::AllowlistWatcher>>,
    approvals: Option<(crate::approvals::ApprovalDir, std::time::Duration)>,
    witness: Option<Arc<crate::witness::Witness>>,
    counter: std::sync::atomic::AtomicU64,
    fence: Option<Arc<dyn Fence>>,
    /// The node key of the active signer, for [`Backend::call_apart`]: set
    /// while it signs (greeted, no rollback), cleared when it stops.
    node_key: Mutex<Option<Arc<NodeKey>>>,
}

/// Whether this replica may still sign: checked before every request,
/// under the signer's lock. A replica whose leadership may have passed to
/// another stops here, before it signs anything.
pub trait Fence: Send + Sync {
    /// `Err(why)` once this replica must not sign (standby, lease lost).
    fn check(&self) -> Result<(), String>;
}

/// The signer this process serves, or why it serves none.
pub enum Slot<S: Store> {
    /// Signing.
    Active(Box<Signer<S>>),
    /// Loaded, waiting for the node's greeting ([`lnpd_proto::AWAITING_GREETING`]):
    /// answers `Info` only (a `Ping` too waits, so that whoever pings learns
    /// it must greet); a successful `Info` makes it active.
    Greeting(Box<Signer<S>>),
    /// Not signing: why (e.g. "standby, active is b at 10.0.0.2:9736").
    Standby(String),
}

impl<S: Store> SignerService<S> {
    /// Wraps a signer.
    pub fn new(signer: Signer<S>) -> Self {
        Self::with_slot(Slot::Active(Box::new(signer)))
    }

    /// Wraps a signer that signs only once the node greeted it.
    pub fn greeted_first(signer: Signer<S>) -> Self {
        Self::with_slot(Slot::Greeting(Box::new(signer)))
    }

    /// A service that serves no signer until [`SignerService::slot`] gets one.
    pub fn standby(why: String) -> Self {
        Self::with_slot(Slot::Standby(why))
    }

    fn with_slot(slot: Slot<S>) -> Self {
        let counter = match &slot {
            Slot::Active(s) | Slot::Greeting(s) => s.state_counter(),
            Slot::Standby(_) => 0,
        };
        SignerService {
            inner: Arc::new(Mutex::new(slot)),
            audit: None,
            allowlist: None,
            approvals: None,
            witness: None,
            counter: counter.into(),
            fence: None,
            node_key: Mutex::new(None),
        }
    }

    /// Notes every state counter reached in `witness` (anti-rollback).
    pub fn with_witness(mut self, witness: Arc<crate::witness::Witness>) -> Self {
        self.witness = Some(witness);
        self
    }

    /// Checks `fence` before every request.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The slot, to make this replica active or standing by.
    pub fn slot(&self) -> Arc<Mutex<Slot<S>>> {
        self.inner.clone()
    }

    /// Records every refusal in `audit`.
    pub fn with_audit(mut self, audit: crate::audit::AuditLog) -> Self {
        self.audit = Some(Arc::new(audit));
        self
    }

    /// Follows the operator's allow-list file, reloading it when it changes.
    pub fn with_allowlist(mut self, path: std::path::PathBuf) -> Self {
        self.allowlist = Some(Mutex::new(crate::allowlist::AllowlistWatcher::new(path)));
        self
    }

    /// Asks the operator, through `dir`, to approve payments above the
    /// threshold (`payment-approval`); unanswered after `timeout`, declined.
    pub fn with_approvals(mut self, dir: std::path::PathBuf, timeout: std::time::Duration) -> Self {
        self.approvals = Some((crate::approvals::ApprovalDir::new(dir), timeout));
        self
    }

    /// Runs `f` on the active signer under the lock; `Unavailable` while
    /// standing by or once the fence says this replica must stop (then it
    /// stands by, and the signer is dropped), and, until the node greeted
    /// this signer, for everything but its greeting (`greeting`: an `Info`;
    /// never a batch).
    fn with_active<T>(
        &self,
        greeting: bool,
        f: impl FnOnce(&mut Signer<S>) -> Result<T, SignerError>,
    ) -> Result<T, SignerError> {
        let mut slot = self
            .inner
            .lock()
            .map_err(|_| SignerError::internal("signer state lock poisoned"))?;
        self.keep_node_key(match &*slot {
            Slot::Active(s) if s.rollback().is_none() => Some(&**s),
            _ => None,
        });
        if let Slot::Standby(why) = &*slot {
            return Err(SignerError::unavailable(why.clone()));
        }
        if let Some(Err(why)) = self.fence.as_ref().map(|f| f.check()) {
            tracing::warn!("stopped signing: {why}");
            self.keep_node_key(None);
            *slot = Slot::Standby(why.clone());
            return Err(SignerError::unavailable(why));
        }
        match &mut *slot {
            Slot::Active(signer) => {
                let result = f(signer);
                if signer.rollback().is_some() {
                    // The greeting found the state older than the node saw.
                    self.keep_node_key(None);
                }
                result
            }
            Slot::Greeting(signer) if greeting => {
                let result = f(signer);
                let refused =
                    matches!(&result, Err(e) if e.kind != lnpd_proto::ErrorKind::Unavailable);
                if !refused {
                    let greeted = std::mem::replace(&mut *slot, Slot::Standby(String::new()));
                    if let Slot::Greeting(signer) = greeted {
                        tracing::info!("greeted by the node; signing");
                        *slot = Slot::Active(signer);
                    }
                }
                result
            }
            Slot::Greeting(_) => Err(SignerError::unavailable(format!(
                "{}: the signer signs only once the node told it the latest state it saw \
                 (an Info request); reconnect",
                lnpd_proto::AWAITING_GREETING
            ))),
            Slot::Standby(why) => Err(SignerError::unavailable(why.clone())),
        }
    }

    /// Keeps the node key of a signer that signs, or drops it (`None`).
    fn keep_node_key(&self, signing: Option<&Signer<S>>) {
        if let Ok(mut k) = self.node_key.lock() {
            match (signing, k.is_some()) {
                (Some(s), false) => *k = Some(Arc::new(s.node_key())),
                (None, true) => *k = None,
                _ => {}
            }
        }
    }

    /// Notes the state counter after a request (for the reply and the witness).
    fn note_counter(&self, signer: &Signer<S>) {
        let c = signer.state_counter();
        self.counter.store(c, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = &self.witness {
            w.note(c);
        }
    }

    /// Records a refusal by a rule in the audit log.
    fn audit_refusal(&self, e: &SignerError, op: &str, channel: Option<ChannelKeysId>) {
        if let Some(audit) = &self.audit {
            audit.refusal_of(e, op, channel);
        }
    }

    fn call_core(&self, body: request::Body) -> Result<reply::Body, SignerError> {
        let greeting = matches!(body, request::Body::Info(_));
        self.with_active(greeting, |signer| self.call_active(signer, body))
    }

    fn call_active(
        &self,
        signer: &mut Signer<S>,
        body: request::Body,
    ) -> Result<reply::Body, SignerError> {
        // A bug must not take the whole signer down with the lock held:
        // the request fails, the state (updated only after a durable write)
        // stays as it was, and the next request is served.
        if let Some(changed) = self
            .allowlist
            .as_ref()
            .and_then(|w| w.lock().ok()?.changed())
        {
            let (scripts, payees) = changed.resolve(signer.network());
            tracing::info!(
                addresses = scripts.len(),
                payees = payees.len(),
                "allow-list loaded"
            );
            signer.set_allowlist(scripts, payees);
        }
        signer.set_time(unix_now());
        let (op, channel) = (body.name(), body.channel_keys_id());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match signer.handle(body)? {
                reply::Body::ShowInvoice(r) if r.awaiting_approval => {
                    self.ask_operator(signer, r).map(reply::Body::ShowInvoice)
                }
                other => Ok(other),
            }
        }));
        self.note_counter(signer);
        match result {
            Ok(result) => result.inspect_err(|e| self.audit_refusal(e, op, channel)),
            Err(_) => {
                tracing::error!("a request aborted inside the signer (a bug); state unchanged");
                Err(SignerError::internal(
                    "the signer could not process this request",
                ))
            }
        }
    }
}

impl<S: Store> SignerService<S> {
    /// A payment awaits approval: applies the operator's answer if there is
    /// one (or the timeout), else makes sure the request is posted.
    fn ask_operator(
        &self,
        signer: &mut Signer<S>,
        reply: pb::ShowInvoiceReply,
    ) -> Result<pb::ShowInvoiceReply, SignerError> {
        use crate::approvals::{Decision, PendingPayment};
        use lnpd_signer_core::RuleId;
        let Some((dir, timeout)) = &self.approvals else {
            return Ok(reply);
        };
        let key = hex::encode(&reply.payment_hash);
        let id = reply.approval_id.clone();
        let store_err = |e: crate::approvals::ApprovalError| SignerError::internal(e.to_string());
        let now = unix_now();
        // What waits in the signer now: the operator's answer must be for it.
        let current = signer
            .pending_approvals()
            .into_iter()
            .find(|p| p.payment_hash == reply.payment_hash)
            .ok_or_else(|| SignerError::internal("awaiting approval, but nothing pending"))?;
        let as_posted = |p: &PendingPayment| lnpd_signer_core::ops::PendingApproval {
            id: p.id.clone(),
            payment_hash: hex::decode(&p.payment_hash).unwrap_or_default(),
            amount_msat: p.amount_msat,
            payee: hex::decode(&p.payee).unwrap_or_default(),
            shown_at: 0,
        };
        let posted = match dir.get(&key).map_err(store_err)? {
            Some(p)
                if p.amount_msat != current.amount_msat
                    || p.payee != hex::encode(&current.payee) =>
            {
                // Any answer given was for the request as posted, not this.
                tracing::warn!(
                    "payment {id} changed since it was posted for approval (now {} msat): asking again",
                    current.amount_msat
                );
                dir.clear(&key);
                None
            }
            other => other,
        };
        let answer = match &posted {
            Some(_) => dir.answer(&key).map_err(store_err)?,
            None => None,
        };
        let decline = |signer: &mut Signer<S>, p: &PendingPayment, why: String| {
            signer.decide_payment(&as_posted(p), false)?;
            dir.clear(&key);
            Err(SignerError::policy(RuleId::PaymentApproval, why))
        };
        match (answer, posted) {
            (Some(Decision::Approved), Some(p)) => {
                signer.decide_payment(&as_posted(&p), true)?;
                dir.clear(&key);
                let what = format!(
                    "payment {id} of {} msat to {} approved by the operator",
                    p.amount_msat, p.payee
                );
                tracing::info!(rule = RuleId::PaymentApproval.as_str(), "{what}");
                if let Some(audit) = &self.audit {
                    audit.append(&crate::audit::AuditEntry::approval(
                        RuleId::PaymentApproval.as_str(),
                        "show_invoice",
                        &what,
                    ));
                }
                Ok(pb::ShowInvoiceReply {
                    awaiting_approval: false,
                    ..reply
                })
            }
            (Some(Decision::Denied), Some(p)) => {
                decline(signer, &p, format!("payment {id} denied by the operator"))
            }
            (None, Some(p)) if now >= p.deadline => decline(
                signer,
                &p,
                format!(
                    "payment {id} not approved within {} s",
                    p.deadline.saturating_sub(p.requested_at)
                ),
            ),
            (None, Some(_)) => Ok(reply),
            (_, None) => {
                let payee = hex::encode(&current.payee);
                dir.post(&PendingPayment {
                    id: id.clone(),
                    payment_hash: key.clone(),
                    amount_msat: current.amount_msat,
                    payee: payee.clone(),
                    requested_at: now,
                    deadline: now.saturating_add(timeout.as_secs()),
                })
                .map_err(store_err)?;
                tracing::warn!(
                    rule = RuleId::PaymentApproval.as_str(),
                    "payment {id} of {} msat to {payee} awaits approval: \
                     `lnpd-signer approve {id}` or `lnpd-signer deny {id}` within {} s",
                    reply.amount_msat,
                    timeout.as_secs()
                );
                Ok(reply)
            }
        }
    }
}

impl<S: Store + Send + 'static> Backend for SignerService<S> {
    fn call(&self, body: request::Body) -> Result<reply::Body, SignerError> {
        self.call_core(body)
    }

    fn state_counter(&self) -> u64 {
        self.counter.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A replica (fenced) waits for etcd's quorum on every write: the
    /// server's thread is handed over meanwhile.
    fn may_block_long(&self) -> bool {
        self.fence.is_some()
    }

    fn call_batch(
        &self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        self.with_active(false, |signer| self.batch_active(signer, bodies))
    }

    fn busy(&self) -> bool {
        matches!(
            self.inner.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        )
    }

    /// Only while a request holds the signer's lock: otherwise the usual
    /// path, which checks the greeting, a standby and the fence, costs
    /// nothing more. The key is kept only while the signer signs, and the
    /// fence is checked here too (a replica that lost its lease stops).
    fn call_apart(&self, body: &request::Body) -> Option<Result<reply::Body, SignerError>> {
        if !body.node_key_only() || !self.busy() {
            return None;
        }
        if let Some(Err(_)) = self.fence.as_ref().map(|f| f.check()) {
            return None;
        }
        let key = self.node_key.lock().ok()?.clone()?;
        key.handle(body)
    }

    fn groups(&self) -> bool {
        true
    }

    /// Gauges from the signer, and ready when its store takes a write (an
    /// empty durable commit: redb's fsync; a replica's etcd transaction
    /// with its leadership check).
    fn status(&self) -> BackendStatus {
        let Ok(mut slot) = self.inner.lock() else {
            return BackendStatus::not_ready("signer state lock poisoned".into());
        };
        let (signer, what) = match &mut *slot {
            Slot::Active(s) if s.rollback().is_some() => {
                return BackendStatus::not_ready(format!(
                    "refusing to sign (state-rollback-detected): {}",
                    s.rollback().unwrap_or_default()
                ))
            }
            Slot::Active(s) => (s, "signing"),
            Slot::Greeting(s) => (s, "waiting for the node's greeting"),
            Slot::Standby(why) => return BackendStatus::not_ready(format!("not signing: {why}")),
        };
        let started = std::time::Instant::now();
        let ready = match signer.probe_store() {
            Ok(()) => Ok(format!(
                "{what}; the store took a durable write in {:?}",
                started.elapsed()
            )),
            Err(e) => Err(format!("the store does not take writes: {e}")),
        };
        BackendStatus {
            channels: Some(signer.channels().count()),
            pending_approvals: Some(signer.pending_approvals().len()),
            chain_height: Some(signer.chain_height()),
            ready,
        }
    }

    /// A batch whose requests came from independent callers: each gets
    /// its own result (a refusal refuses that request alone, and is
    /// audited), and a failed write fails them all (none of them applied).
    fn call_group(&self, bodies: Vec<request::Body>) -> Vec<Result<reply::Body, SignerError>> {
        let n = bodies.len();
        match self.with_active(false, |signer| self.batch_active(signer, bodies)) {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }
}

impl<S: Store> SignerService<S> {
    fn batch_active(
        &self,
        signer: &mut Signer<S>,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        signer.set_time(unix_now());
        let context: Vec<_> = bodies
            .iter()
            .map(|b| (b.name(), b.channel_keys_id()))
            .collect();
        let results =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| signer.handle_batch(bodies)));
        let results = match results {
            Ok(r) => r,
            Err(_) => {
                // Nothing of the batch was written; what it changed in
                // memory is undone before the next request.
                signer.abort_batch();
                tracing::error!("a batch aborted inside the signer (a bug); none of it applied");
                return Err(SignerError::internal(
                    "the signer could not process this batch",
                ));
            }
        };
        self.note_counter(signer);
        for (result, (op, channel)) in results.iter().zip(context) {
            if let Err(e) = result {
                self.audit_refusal(e, op, channel);
            }
        }
        Ok(results)
    }
}

/// The daemon's clock, for the signer's payment windows.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl<B: Backend> signer_server::Signer for Grpc<B> {
    async fn call(&self, request: Request<pb::Request>) -> Result<Response<pb::Reply>, Status> {
        let req = request.into_inner();
        let b = &self.backend;
        let started = std::time::Instant::now();
        let op = req.body.as_ref().map_or("empty", |body| body.name());
        let result = match req.body {
            Some(body) if b.groups() && body.batchable() => self.grouped(body).await,
            Some(body) => match b.call_apart(&body) {
                Some(r) => r,
                // What needs no write (`quick`) answers without a hand-off
                // unless it would wait for a request in progress; a write
                // of the software signer runs off the worker, as a group's
                // does.
                None if b.groups() && (!body.quick() || b.busy()) => {
                    self.off_worker(move |b| b.call(body)).await
                }
                None => run_blocking(b.may_block_long() && !body.quick(), || b.call(body)),
            },
            None => Err(SignerError::invalid("empty request")),
        };
        self.awake.touch();
        record(op, &result, Some(started.elapsed()));
        Ok(Response::new(
            pb::Reply::from_result(req.id, result).with_state_counter(b.state_counter()),
        ))
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchReply>, Status> {
        let requests = request.into_inner().requests;
        let ids: Vec<u64> = requests.iter().map(|r| r.id).collect();
        let bodies: Option<Vec<request::Body>> = requests.into_iter().map(|r| r.body).collect();
        let ops: Vec<&'static str> = bodies.iter().flatten().map(|body| body.name()).collect();
        let b = &self.backend;
        let started = std::time::Instant::now();
        let results = match bodies {
            // Off the worker for the software signer (see `call`).
            Some(bodies) if b.groups() => self.off_worker(move |b| b.call_batch(bodies)).await,
            Some(bodies) => run_blocking(b.may_block_long(), || b.call_batch(bodies)),
            None => Err(SignerError::invalid("a batched request has no body")),
        };
        self.awake.touch();
        metrics::histogram!("lnpd_signer_request_duration_seconds", "op" => "batch")
            .record(started.elapsed().as_secs_f64());
        match &results {
            Ok(each) => {
                for (op, r) in ops.iter().zip(each) {
                    record(op, r, None);
                }
            }
            Err(e) => {
                for op in &ops {
                    record(op, &Err(e.clone()), None);
                }
            }
        }
        let counter = b.state_counter();
        let replies = match results {
            Ok(results) => ids
                .into_iter()
                .zip(results)
                .map(|(id, r)| pb::Reply::from_result(id, r).with_state_counter(counter))
                .collect(),
            Err(e) => ids
                .into_iter()
                .map(|id| pb::Reply::from_result(id, Err(e.clone())))
                .collect(),
        };
        Ok(Response::new(pb::BatchReply { replies }))
    }
}

/// Limits on the connections the server holds: a client that never
/// finishes its TLS handshake is dropped, and connections beyond the caps
/// are closed as they come (a node's connection, once up, is not
/// affected; a flood of idle connections cannot take every file
/// descriptor).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Longest a TLS handshake may take.
    pub handshake_timeout: std::time::Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one IP address.
    pub max_connections_per_ip: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake_timeout: std::time::Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_ip: 32,
        }
    }
}

/// Where the node's connections come from.
pub enum Incoming {
    /// Accepted on this listener: the node dials the signer.
    Listen(tokio::net::TcpListener),
    /// Opened by the signer to the node at this address (host:port), and
    /// opened again whenever it ends (`run --connect`): the signer's machine
    /// accepts no connection at all. TLS roles are the same as when
    /// listening (the signer presents its server certificate and requires
    /// the node's client certificate from its CA); only TCP is reversed.
    Dial(String),
}

/// Serves `service` over gRPC with mutual TLS until `shutdown` resolves,
/// on connections from `incoming`.
pub async fn serve<B: Backend>(
    service: B,
    incoming: Incoming,
    tls: tonic::transport::ServerTlsConfig,
    limits: ServerLimits,
    metrics: Option<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let backend = Arc::new(service);
    // On a thread of its own, for the life of the process.
    if let Some(m) = metrics {
        let probe: Arc<dyn lnpd_telemetry::Probe> = Arc::new(BackendProbe {
            backend: backend.clone(),
            last: Mutex::new(None),
        });
        if let Err(e) = lnpd_telemetry::spawn(m.listener, m.handle, probe) {
            tracing::error!("the metrics endpoint could not start: {e}");
        }
    }
    // Polls for the node's next request a short while after each answer
    // (the window is the process's, `--busy-poll-us`).
    let awake = Arc::new(lnpd_proto::busy_poll::Awake::new(
        lnpd_proto::busy_poll::window(),
    ));
    let keeper = {
        let awake = awake.clone();
        tokio::spawn(async move { awake.run().await })
    };
    let router = tonic::transport::Server::builder()
        .tls_config(tls.timeout(limits.handshake_timeout))?
        // A peer that vanished without closing is found out and dropped.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(
            signer_server::SignerServer::new(Grpc {
                backend,
                awake,
                group: Arc::default(),
            })
            .max_decoding_message_size(lnpd_signer_core::MAX_REQUEST_BYTES),
        );
    let served = match incoming {
        Incoming::Listen(listener) => {
            router
                .serve_with_incoming_shutdown(accepted(listener, limits), shutdown)
                .await
        }
        Incoming::Dial(addr) => {
            router
                .serve_with_incoming_shutdown(dialled(addr), shutdown)
                .await
        }
    };
    keeper.abort();
    served
}

/// The metrics endpoint of a signer: where it listens and what renders.
pub struct Metrics {
    /// Bound by `lnpd_telemetry::bind`.
    pub listener: std::net::TcpListener,
    /// From `lnpd_telemetry::install`.
    pub handle: lnpd_telemetry::PrometheusHandle,
}

/// A backend as the metrics endpoint sees it. Its status (which takes the
/// signer's lock and a durable write, or a device's round trip) is asked
/// at most once per [`STATUS_FOR`], by one scrape at a time: scraping
/// cannot slow signing down.
struct BackendProbe<B> {
    backend: Arc<B>,
    last: Mutex<Option<(std::time::Instant, BackendStatus)>>,
}

/// How long a backend's status is reused.
const STATUS_FOR: std::time::Duration = std::time::Duration::from_secs(5);

impl<B: Backend> BackendProbe<B> {
    fn status(&self) -> BackendStatus {
        let Ok(mut last) = self.last.lock() else {
            return BackendStatus::not_ready("status lock poisoned".into());
        };
        match &*last {
            Some((at, s)) if at.elapsed() < STATUS_FOR => s.clone(),
            _ => {
                let s = self.backend.status();
                *last = Some((std::time::Instant::now(), s.clone()));
                s
            }
        }
    }
}

impl<B: Backend> lnpd_telemetry::Probe for BackendProbe<B> {
    fn refresh(&self) {
        let s = self.status();
        if let Some(n) = s.channels {
            metrics::gauge!("lnpd_signer_channels").set(n as f64);
        }
        if let Some(n) = s.pending_approvals {
            metrics::gauge!("lnpd_signer_pending_approvals").set(n as f64);
        }
        if let Some(h) = s.chain_height {
            metrics::gauge!("lnpd_signer_chain_height").set(f64::from(h));
        }
        metrics::gauge!("lnpd_signer_ready").set(if s.ready.is_ok() { 1.0 } else { 0.0 });
    }

    fn ready(&self) -> Result<String, String> {
        self.status().ready
    }
}

/// A connection served, with what must happen when it ends (`G` dropped):
/// a slot freed, or the dialler told to dial again.
pub struct Conn<G> {
    inner: tokio::net::TcpStream,
    _guard: G,
}

impl<G: Unpin> tokio::io::AsyncRead for Conn<G> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<G: Unpin> tokio::io::AsyncWrite for Conn<G> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<G: Send + Sync + Unpin + 'static> tonic::transport::server::Connected for Conn<G> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepted connections within the limits, with Nagle's algorithm off:
/// replies are small and latency-bound (with it on, a reply split in two
/// waits for a delayed ACK).
fn accepted(
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn<slots::Slot>>> {
    use tokio_stream::StreamExt;
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_ip);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |conn| {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let ip = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(_) => return None,
        };
        let slot = match slots.take(ip) {
            Ok(slot) => slot,
            Err(full) => {
                // Logged once per 100 refusals: a flood must not flood the log.
                let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_multiple_of(100) {
                    tracing::warn!(
                        %ip,
                        held = full.total,
                        from_ip = full.from_ip,
                        "connection refused: the server holds its limit of connections \
                         ({} in all, {} per address)",
                        limits.max_connections,
                        limits.max_connections_per_ip
                    );
                }
                return None;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        Some(Ok(Conn {
            inner: stream,
            _guard: slot,
        }))
    })
}

/// Backoff between attempts to reach the node: from the first to the most.
const DIAL_BACKOFF: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(5),
);

/// Connections to the node at `addr`, one at a time: the next is opened
/// when the last ends (dropped by the server: closed, failed its TLS
/// handshake, or silent past the keepalive), after a backoff that grows
/// while attempts fail or end at once.
fn dialled(
    addr: String,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn<tokio::sync::oneshot::Sender<()>>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut backoff = DIAL_BACKOFF.0;
        loop {
            // Bounded: a route that drops packets must not hold an attempt
            // for the kernel's minutes.
            let attempt = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within 10 s",
                ))
            });
            match attempt {
                Ok(stream) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!("cannot set TCP_NODELAY: {e}");
                    }
                    let (ended, on_end) = tokio::sync::oneshot::channel::<()>();
                    let since = std::time::Instant::now();
                    tracing::info!(
                        "connected to the node at {addr}; serving it on this connection"
                    );
                    let conn = Conn {
                        inner: stream,
                        _guard: ended,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return; // the server stopped
                    }
                    let _ = on_end.await;
                    // A connection that lived is no failure: dial again soon.
                    if since.elapsed() > std::time::Duration::from_secs(10) {
                        backoff = DIAL_BACKOFF.0;
                    }
                    tracing::warn!(
                        "the connection to the node at {addr} ended; dialling again in {backoff:?}"
                    );
                }
                Err(e) => {
                    tracing::warn!("cannot reach the node at {addr} ({e}); retrying in {backoff:?}")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(DIAL_BACKOFF.1);
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Mutual-TLS server configuration: our certificate, and only client
/// certificates issued by our CA are accepted.
pub fn tls_config(
    files: &crate::tls::TlsFiles,
) -> Result<tonic::transport::ServerTlsConfig, crate::tls::TlsError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let cert = crate::tls::read_pem(&files.server_cert)?;
    let key = crate::tls::read_pem(&files.server_key)?;
    let ca = crate::tls::read_pem(&files.ca_cert)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Held, HeldBackend, ReleaseOnDrop};
    use lnpd_signer_core::testing::memory_signer;
    use lnpd_signer_core::PolicyConfig;
    use signer_server::Signer as _;

    fn ecdh() -> request::Body {
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

    fn ping() -> request::Body {
        request::Body::Ping(pb::PingRequest { nonce: vec![1] })
    }

    #[test]
    fn the_node_key_answers_only_beside_a_request_of_a_signer_that_signs() {
        let service = SignerService::new(memory_signer(7, PolicyConfig::default()));
        let alone = service.call(ecdh()).expect("ecdh");
        // Nothing holds the signer: the usual way.
        assert!(service.call_apart(&ecdh()).is_none());
        {
            let slot = service.slot();
            let _held = slot.lock().expect("slot");
            let apart = service.call_apart(&ecdh()).expect("answered apart");
            assert_eq!(apart.expect("ecdh"), alone);
            // Only what reads no state.
            assert!(service.call_apart(&ping()).is_none());
        }
        // Standing by: the key is dropped at the next request.
        *service.slot().lock().expect("slot") = Slot::Standby("standby: test".into());
        assert!(service.call(ecdh()).is_err());
        let slot = service.slot();
        let _held = slot.lock().expect("slot");
        assert!(service.call_apart(&ecdh()).is_none());
    }

    #[test]
    fn a_signer_not_yet_greeted_answers_nothing_apart() {
        let service = SignerService::greeted_first(memory_signer(8, PolicyConfig::default()));
        assert!(service.call(ecdh()).is_err(), "not greeted");
        let slot = service.slot();
        let _held = slot.lock().expect("slot");
        assert!(service.call_apart(&ecdh()).is_none());
    }

    /// On the daemon's runtime (one worker), an ECDH is answered while a
    /// write holds the signer, by request and by batch.
    #[test]
    fn ecdh_does_not_wait_for_a_request_in_progress() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        for batch in [false, true] {
            let held = Arc::new(Held::default());
            let grpc = Arc::new(Grpc {
                backend: Arc::new(HeldBackend(held.clone())),
                awake: Arc::new(lnpd_proto::busy_poll::Awake::new(Default::default())),
                group: Arc::default(),
            });
            let sign = request::Body::SignHolderCommitment(pb::SignHolderCommitmentRequest {
                channel_keys_id: vec![1; 32],
                commitment_number: 1,
            });
            let slow = {
                let grpc = grpc.clone();
                rt.spawn(async move {
                    if batch {
                        let requests = vec![pb::Request {
                            id: 1,
                            body: Some(sign),
                        }];
                        let _ = grpc
                            .batch(Request::new(pb::BatchRequest { requests }))
                            .await;
                    } else {
                        let _ = grpc
                            .call(Request::new(pb::Request {
                                id: 1,
                                body: Some(sign),
                            }))
                            .await;
                    }
                })
            };
            // Released whatever happens below: a failed assertion must not
            // leave the runtime's shutdown waiting for the blocked request.
            let _release = ReleaseOnDrop(held.clone());
            assert!(held.wait_holding(std::time::Duration::from_secs(5)));
            // Each would wait for the write if it ran on the worker (the
            // task below runs there, as a connection's request does).
            for body in [ecdh(), ping()] {
                let grpc = grpc.clone();
                let (tx, rx) = std::sync::mpsc::channel();
                rt.spawn(async move {
                    let r = grpc
                        .call(Request::new(pb::Request {
                            id: 2,
                            body: Some(body),
                        }))
                        .await;
                    let _ = tx.send(r);
                });
                // Timed here: the runtime's timers need its worker.
                let reply = rx
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("answered during the write")
                    .expect("reply");
                assert!(reply.into_inner().into_result().is_ok());
                assert!(held.holding(), "the write still holds");
            }
            held.release();
            rt.block_on(slow).expect("the slow request ends");
        }
    }
}
