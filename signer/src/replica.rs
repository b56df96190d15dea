//! Replicas of one signer over etcd: exactly one is active and signs, the
//! others stand by and answer "standby, active is NAME at ADDR".
//!
//! The active one holds `<prefix>/leader`, created bound to its lease; it
//! keeps the lease alive and stops signing once the lease may have expired
//! ([`LeaseFence`]: its own deadline is the time it *sent* the last
//! acknowledged keep-alive plus the TTL, minus a margin, so it stops before
//! etcd can grant the key to another). Every write it makes is also
//! conditioned on that key (`store_etcd`), so a replica that was paused
//! past its lease and resumes cannot write, hence cannot sign anything that
//! needs a write. A replica that becomes active loads the state from etcd
//! (and checks it against its witness) before it answers anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lnpd_signer_core::{Signer, SignerError};

use crate::etcd::{pb, Etcd, EtcdError, EtcdSettings};
use crate::server::{Fence, Slot};
use crate::store_etcd::{EtcdStore, Leadership};

/// A replica stops signing this long before its lease could expire.
pub const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// How often a standby looks whether the leadership is free.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Who this replica is, for the others' standby answers.
#[derive(Clone, Debug)]
pub struct ReplicaId {
    /// Its name (e.g. the host's).
    pub name: String,
    /// Where nodes reach it (host:port).
    pub addr: String,
}

/// Time since boot, suspended time included (`CLOCK_BOOTTIME`): etcd's
/// lease runs on while this machine sleeps, so the fence's clock must too
/// (a monotonic `Instant` stops during a suspend and would keep a lapsed
/// lease looking valid). A VM paused by its host stops this clock as well:
/// etcd's conditional writes are what fence such a replica.
fn boot_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_else(|_| {
            // Not Linux (no boot clock): the monotonic clock.
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        })
}

/// Whether the active replica may still sign: its lease deadline, and
/// whether its store is in step with etcd.
pub struct LeaseFence {
    /// On the boot clock ([`boot_now`]).
    deadline: Mutex<Option<Duration>>,
    out_of_step: Mutex<Option<Arc<AtomicBool>>>,
}

impl Default for LeaseFence {
    fn default() -> Self {
        LeaseFence {
            deadline: Mutex::new(None),
            out_of_step: Mutex::new(None),
        }
    }
}

impl LeaseFence {
    fn set_deadline(&self, d: Option<Duration>) {
        if let Ok(mut x) = self.deadline.lock() {
            *x = d;
        }
    }

    fn valid(&self) -> bool {
        self.deadline
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|d| boot_now() + LEASE_MARGIN < d)
    }

    fn in_step(&self) -> bool {
        !self
            .out_of_step
            .lock()
            .ok()
            .and_then(|o| o.clone())
            .is_some_and(|o| o.load(Ordering::SeqCst))
    }
}

impl Fence for LeaseFence {
    fn check(&self) -> Result<(), String> {
        if !self.valid() {
            return Err("standby: this replica's leadership lease lapsed".into());
        }
        if !self.in_step() {
            return Err("standby: a write to etcd was refused or lost; reloading the state".into());
        }
        Ok(())
    }
}

/// Opens the signer over a store (seed, policy, allow-list, witness check).
pub type OpenSigner =
    Arc<dyn Fn(EtcdStore) -> Result<Signer<EtcdStore>, SignerError> + Send + Sync>;

/// Runs the election for ever on the etcd runtime: campaign, serve while
/// leader, stand by otherwise.
pub fn spawn(
    etcd: Etcd,
    settings: EtcdSettings,
    me: ReplicaId,
    slot: Arc<Mutex<Slot<EtcdStore>>>,
    fence: Arc<LeaseFence>,
    open: OpenSigner,
    witness: Arc<crate::witness::Witness>,
) {
    let e = etcd.clone();
    etcd.spawn(async move {
        loop {
            if let Err(err) = term(&e, &settings, &me, &slot, &fence, &open, &witness).await {
                set_standby(&slot, &fence, format!("standby: {err}")).await;
                tracing::warn!("replica {}: {err}; retrying", me.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
}

/// Stands by: the fence first (no signing from here on), then the slot.
async fn set_standby(slot: &Arc<Mutex<Slot<EtcdStore>>>, fence: &LeaseFence, why: String) {
    fence.set_deadline(None);
    put_slot(slot, move |s| {
        if !matches!(&*s, Slot::Standby(w) if *w == why) {
            tracing::info!("{why}");
        }
        *s = Slot::Standby(why);
    })
    .await;
}

/// Changes the slot off the etcd runtime's worker: a request may hold the
/// slot's lock while it waits for a write that this runtime carries.
async fn put_slot(
    slot: &Arc<Mutex<Slot<EtcdStore>>>,
    f: impl FnOnce(&mut Slot<EtcdStore>) + Send + 'static,
) {
    let slot = slot.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut s) = slot.lock() {
            f(&mut s);
        }
    })
    .await;
}

/// One term: a lease, a campaign, then serving or standing by until the
/// leadership changes hands.
async fn term(
    etcd: &Etcd,
    settings: &EtcdSettings,
    me: &ReplicaId,
    slot: &Arc<Mutex<Slot<EtcdStore>>>,
    fence: &Arc<LeaseFence>,
    open: &OpenSigner,
    witness: &crate::witness::Witness,
) -> Result<(), EtcdError> {
    let prefix = settings.prefix.trim_end_matches('/').to_string();
    let leader_key = format!("{prefix}/leader").into_bytes();
    let ttl = settings.lease_ttl.as_secs().max(2) as i64;
    let granted_at = boot_now();
    let lease = etcd.grant(ttl).await?;
    let value = format!("{} at {}", me.name, me.addr).into_bytes();
    let r = etcd.campaign(&leader_key, value, lease.id).await?;
    let holder = crate::etcd::holder(&r);
    let won = if r.succeeded {
        r.header.map(|h| h.revision)
    } else {
        holder
            .as_ref()
            .filter(|kv| kv.lease == lease.id)
            .map(|kv| kv.create_revision)
    };
    let Some(create_revision) = won else {
        let active = holder
            .map(|kv| String::from_utf8_lossy(&kv.value).to_string())
            .unwrap_or_else(|| "unknown".into());
        set_standby(slot, fence, format!("standby, active is {active}")).await;
        etcd.revoke(lease.id).await;
        wait_until_free(etcd, &prefix, witness).await;
        return Ok(());
    };

    // Leader: the lease is kept alive from here; the fence stops signing
    // before it can lapse.
    fence.set_deadline(Some(
        granted_at + Duration::from_secs(lease.ttl.max(1) as u64),
    ));
    let alive = Arc::new(AtomicBool::new(true));
    keep_alive(etcd.clone(), lease.id, fence.clone(), alive.clone());
    let leadership = Leadership {
        key: leader_key.clone(),
        create_revision,
    };
    tracing::info!(
        "replica {} is active (leadership revision {create_revision})",
        me.name
    );
    let result = serve_while_leader(etcd, &prefix, leadership, slot, fence, open).await;
    alive.store(false, Ordering::SeqCst);
    set_standby(
        slot,
        fence,
        "standby: the leadership is changing hands".into(),
    )
    .await;
    etcd.revoke(lease.id).await;
    tracing::warn!("replica {} stepped down", me.name);
    result
}

/// Loads the signer from etcd and serves until the lease lapses; reloads
/// it when a write left the store out of step.
async fn serve_while_leader(
    etcd: &Etcd,
    prefix: &str,
    leadership: Leadership,
    slot: &Arc<Mutex<Slot<EtcdStore>>>,
    fence: &Arc<LeaseFence>,
    open: &OpenSigner,
) -> Result<(), EtcdError> {
    loop {
        let store = EtcdStore::new(etcd.clone(), prefix, Some(leadership.clone()));
        let out_of_step = store.out_of_step();
        let open = open.clone();
        // Loading waits on the etcd runtime: not from one of its workers.
        let signer = tokio::task::spawn_blocking(move || open(store))
            .await
            .map_err(|e| EtcdError::Unavailable(format!("loading the state: {e}")))?;
        let signer = match signer {
            Ok(s) => s,
            Err(e) => return Err(EtcdError::Unavailable(format!("loading the state: {e}"))),
        };
        if let Ok(mut f) = fence.out_of_step.lock() {
            *f = Some(out_of_step.clone());
        }
        tracing::info!(
            channels = signer.channels().count(),
            state_counter = signer.state_counter(),
            "state loaded from etcd; signing"
        );
        // The node greets a newly active replica before it signs.
        put_slot(slot, move |s| *s = Slot::Greeting(Box::new(signer))).await;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !fence.valid() {
                return Ok(());
            }
            if out_of_step.load(Ordering::SeqCst) {
                tracing::warn!("the state in etcd and in memory may differ: reloading");
                put_slot(slot, |s| {
                    *s = Slot::Standby("standby: reloading the state".into())
                })
                .await;
                break;
            }
        }
    }
}

/// Keeps the lease alive (every third of its TTL) on one keep-alive
/// stream, opened again on another member when it fails, until `alive` is
/// false or the fence lapsed; each acknowledged keep-alive moves the
/// fence's deadline to the time it was sent plus the TTL granted.
fn keep_alive(etcd: Etcd, id: i64, fence: Arc<LeaseFence>, alive: Arc<AtomicBool>) {
    let e = etcd.clone();
    etcd.spawn(async move {
        'streams: while alive.load(Ordering::SeqCst) && fence.valid() {
            let (member, ch) = e.channel();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            // The first keep-alive queued before the call: the server
            // answers the call only once it has a message to answer.
            let sent = boot_now();
            if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                continue;
            }
            let mut first = Some(sent);
            let opened = tokio::time::timeout(
                crate::etcd::REQUEST_TIMEOUT,
                pb::lease_client::LeaseClient::new(ch)
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
            let mut answers = match opened {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => {
                    tracing::warn!("lease keep-alive at {member}: {}", s.message());
                    e.next_member();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!("lease keep-alive at {member}: no answer");
                    e.next_member();
                    continue;
                }
            };
            while alive.load(Ordering::SeqCst) && fence.valid() {
                let sent = match first.take() {
                    Some(t) => t,
                    None => {
                        let t = boot_now();
                        if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                            e.next_member();
                            continue 'streams;
                        }
                        t
                    }
                };
                match tokio::time::timeout(Duration::from_secs(1), answers.message()).await {
                    Ok(Ok(Some(r))) if r.ttl > 0 => {
                        if alive.load(Ordering::SeqCst) {
                            fence.set_deadline(Some(sent + Duration::from_secs(r.ttl as u64)));
                        }
                        let third = Duration::from_secs(r.ttl as u64) / 3;
                        tokio::time::sleep(third.max(Duration::from_millis(200))).await;
                    }
                    Ok(Ok(Some(_))) => {
                        // (Not a later term's fence: this term may be over.)
                        if alive.load(Ordering::SeqCst) {
                            tracing::warn!("the leadership lease expired");
                            fence.set_deadline(None);
                        }
                        return;
                    }
                    other => {
                        let why = match other {
                            Ok(Err(s)) => s.message().to_string(),
                            Ok(Ok(None)) => "stream ended".into(),
                            _ => "no answer within 1 s".into(),
                        };
                        tracing::warn!(
                            "lease keep-alive at {member}: {why}; trying another member"
                        );
                        e.next_member();
                        continue 'streams;
                    }
                }
            }
        }
    });
}

/// Waits until nobody holds the leadership key. Meanwhile this standby's
/// witness follows the state counter in etcd (a value etcd holds is
/// durable): if an older copy of the state is restored into etcd later,
/// this replica refuses it when it becomes active, though it never served
/// the later state itself.
async fn wait_until_free(etcd: &Etcd, prefix: &str, witness: &crate::witness::Witness) {
    let keys = || {
        ["leader", "counter"]
            .map(|name| format!("{prefix}/{name}").into_bytes())
            .to_vec()
    };
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let found = match etcd.read_together("watch the leadership", keys()).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("{e}");
                continue;
            }
        };
        let mut found = found.into_iter();
        let (leader, counter) = (found.next().flatten(), found.next().flatten());
        if let Some(c) = counter.and_then(|kv| crate::store_etcd::counter_of(&kv.value)) {
            witness.note(c);
        }
        if leader.is_none() {
            return;
        }
    }
}
