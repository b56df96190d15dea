//! The replicated store: the signer's records in etcd, one key per record
//! (`<prefix>/channel/<keys id>`, `<prefix>/meta`, `<prefix>/counter`).
//!
//! Every commit is one etcd transaction that applies only if (a) this
//! replica still holds the leadership key it created (`<prefix>/leader`,
//! bound to its lease: an expired lease deletes it) and (b) every record it
//! writes is still at the revision this replica last read or wrote. It
//! returns once etcd applied it, that is once a quorum of members has it.
//! A write refused by its conditions, or whose outcome cannot be known,
//! marks the store out of step: the replica stops signing and reloads the
//! state (or stands by), never signs on a guess.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lnpd_signer_core::store::{Snapshot, Store, StoreError, Write};

use crate::etcd::pb::{self, compare, request_op, Compare, RequestOp};
use crate::etcd::{prefix_end, Etcd, EtcdError, REQUEST_TIMEOUT};

/// The leadership key a replica created, which every write is conditioned on.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// The key.
    pub key: Vec<u8>,
    /// Its create revision (a key created again by another has another).
    pub create_revision: i64,
}

/// The signer state in etcd.
pub struct EtcdStore {
    etcd: Etcd,
    prefix: String,
    revisions: Mutex<HashMap<Vec<u8>, i64>>,
    leadership: Option<Leadership>,
    out_of_step: Arc<AtomicBool>,
    /// Makes every commit's counter value unique ([`EtcdStore::resolve`]):
    /// random per store, plus a sequence number.
    tag_base: u64,
    tag_seq: std::sync::atomic::AtomicU64,
}

/// The counter in a counter key's value (8 bytes, or 16 with the writing
/// commit's tag).
pub fn counter_of(value: &[u8]) -> Option<u64> {
    if !matches!(value.len(), 8 | 16) {
        return None;
    }
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// The value of the counter key: the counter, then the tag of the commit
/// that wrote it.
fn counter_value(counter: u64, tag: u64) -> Vec<u8> {
    let mut v = counter.to_be_bytes().to_vec();
    v.extend_from_slice(&tag.to_be_bytes());
    v
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl EtcdStore {
    /// The store under `prefix`; writes conditioned on `leadership` (None:
    /// a tool reading the state, which must not write).
    pub fn new(etcd: Etcd, prefix: &str, leadership: Option<Leadership>) -> Self {
        EtcdStore {
            etcd,
            prefix: prefix.trim_end_matches('/').to_string(),
            revisions: Mutex::new(HashMap::new()),
            leadership,
            out_of_step: Arc::new(AtomicBool::new(false)),
            tag_base: {
                let mut b = [0u8; 8];
                // Without randomness, the time: unique enough per process.
                if getrandom::fill(&mut b).is_err() {
                    b = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0)
                        .to_be_bytes();
                }
                u64::from_be_bytes(b)
            },
            tag_seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Set once a write was refused or its outcome is unknown: the
    /// in-memory state may differ from etcd's; reload before signing.
    pub fn out_of_step(&self) -> Arc<AtomicBool> {
        self.out_of_step.clone()
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}/{name}", self.prefix).into_bytes()
    }

    fn channel_key(&self, id: &[u8; 32]) -> Vec<u8> {
        self.key(&format!("channel/{}", hex::encode(id)))
    }

    /// A read from synchronous code (the signer's).
    fn range(
        &self,
        what: &'static str,
        req: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, StoreError> {
        let etcd = self.etcd.clone();
        self.etcd
            .block(async move { etcd.range(what, req).await })
            .ok_or_else(|| err("etcd client stopped"))?
            .map_err(err)
    }

    /// After a write whose answer was lost: whether that very transaction
    /// was applied — the counter key holds the value it wrote (counter and
    /// its unique tag) and the leadership key is still ours, both read at
    /// one revision. `Some(revision)` when applied.
    fn resolve(&self, value: &[u8]) -> Result<Option<i64>, StoreError> {
        let Some(l) = &self.leadership else {
            return Ok(None);
        };
        let keys = vec![self.key("counter"), l.key.clone()];
        let etcd = self.etcd.clone();
        let mut found = self
            .etcd
            .block(async move { etcd.read_together("look up a write", keys).await })
            .ok_or_else(|| err("etcd client stopped"))?
            .map_err(err)?
            .into_iter();
        let (counter, leader) = (found.next().flatten(), found.next().flatten());
        let ours = leader.is_some_and(|kv| kv.create_revision == l.create_revision);
        Ok(counter
            .filter(|kv| ours && kv.value == value)
            .map(|kv| kv.mod_revision))
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let prefix = format!("{}/", self.prefix).into_bytes();
        let end = prefix_end(&prefix);
        let r = self.range(
            "load the state",
            pb::RangeRequest {
                key: prefix,
                range_end: end,
                ..Default::default()
            },
        )?;
        if r.more {
            return Err(err("etcd answered part of the state only"));
        }
        let mut snap = Snapshot::default();
        let mut revisions = HashMap::new();
        let (meta, counter) = (self.key("meta"), self.key("counter"));
        let channel_prefix = self.key("channel/");
        for kv in r.kvs {
            if kv.key == meta {
                snap.meta = Some(kv.value.clone());
            } else if kv.key == counter {
                snap.counter = counter_of(&kv.value)
                    .ok_or_else(|| err("the state counter in etcd is not 8 or 16 bytes"))?;
            } else if let Some(id) = kv.key.strip_prefix(channel_prefix.as_slice()) {
                let id = hex::decode(id)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    .ok_or_else(|| err("a channel key in etcd is not a keys id"))?;
                snap.channels.insert(id, kv.value.clone());
            } else {
                continue;
            }
            revisions.insert(kv.key, kv.mod_revision);
        }
        *self.revisions.lock().map_err(|_| err("revisions lock"))? = revisions;
        self.out_of_step.store(false, Ordering::SeqCst);
        Ok(snap)
    }

    fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let done = self.commit_now(writes);
        metrics::histogram!("lnpd_signer_durable_write_duration_seconds", "store" => "etcd")
            .record(started.elapsed().as_secs_f64());
        done
    }
}

impl EtcdStore {
    fn commit_now(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        let leadership = self
            .leadership
            .clone()
            .ok_or_else(|| err("this process does not hold the leadership: it must not write"))?;
        let revisions = self
            .revisions
            .lock()
            .map_err(|_| err("revisions lock"))?
            .clone();
        let mut compare = vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: leadership.key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(
                leadership.create_revision,
            )),
        }];
        let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut counter = None;
        for w in writes {
            let (key, value) = match w {
                Write::Channel(id, bytes) => (self.channel_key(&id), Some(bytes)),
                Write::Meta(bytes) => (self.key("meta"), Some(bytes)),
                Write::DeleteChannel(id) => (self.channel_key(&id), None),
                Write::Counter(n) => {
                    let tag = self
                        .tag_base
                        .wrapping_add(self.tag_seq.fetch_add(1, Ordering::SeqCst));
                    let value = counter_value(n, tag);
                    counter = Some(value.clone());
                    (self.key("counter"), Some(value))
                }
            };
            if !ops.iter().any(|(k, _)| *k == key) {
                compare.push(Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(
                        revisions.get(&key).copied().unwrap_or(0),
                    )),
                });
            }
            // A batch may write one record several times; etcd takes one
            // operation per key in a transaction: the last one wins.
            ops.retain(|(k, _)| *k != key);
            ops.push((key, value));
        }
        let touched: Vec<(Vec<u8>, bool)> =
            ops.iter().map(|(k, v)| (k.clone(), v.is_some())).collect();
        let success: Vec<RequestOp> = ops
            .into_iter()
            .map(|(key, value)| RequestOp {
                request: Some(match value {
                    Some(value) => request_op::Request::RequestPut(pb::PutRequest {
                        key,
                        value,
                        ..Default::default()
                    }),
                    None => request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                        key,
                        ..Default::default()
                    }),
                }),
            })
            .collect();
        let txn = pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        // A write whose answer is lost is looked up (the counter it wrote);
        // one proven not applied is sent again to the next member.
        let mut tries = 0;
        let revision = loop {
            tries += 1;
            let (member, channel) = self.etcd.channel();
            let t = txn.clone();
            let answer = self
                .etcd
                .block(async move {
                    tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        pb::kv_client::KvClient::new(channel).txn(t),
                    )
                    .await
                })
                .ok_or_else(|| err("etcd client stopped"))?;
            match answer {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if !r.succeeded {
                        // A repeat that finds its own earlier send applied.
                        if tries > 1 {
                            if let Some(Ok(Some(rev))) = counter.as_deref().map(|c| self.resolve(c))
                            {
                                break rev;
                            }
                        }
                        self.out_of_step.store(true, Ordering::SeqCst);
                        return Err(err(
                            "etcd refused the write: this replica no longer holds the leadership, \
                             or another wrote the state (stopping, reloading)",
                        ));
                    }
                    break r.header.map(|h| h.revision).unwrap_or_default();
                }
                Ok(Err(status)) if !crate::etcd::is_unavailable(&status) => {
                    // Not applied as far as etcd said; reloaded anyway
                    // before the next signature (any doubt does).
                    self.out_of_step.store(true, Ordering::SeqCst);
                    return Err(err(EtcdError::Refused(format!(
                        "write at {member}: {}",
                        status.message()
                    ))));
                }
                failed => {
                    self.etcd.next_member();
                    let why = match failed {
                        Ok(Err(s)) => s.message().to_string(),
                        _ => format!("no answer within {REQUEST_TIMEOUT:?}"),
                    };
                    // The same transaction (same tag) is sent again while
                    // not seen applied: if an earlier send lands late, the
                    // repeat's compares fail, and a lookup finds the tag.
                    match counter.as_deref().map(|c| self.resolve(c)).transpose() {
                        Ok(Some(Some(rev))) => break rev,
                        Ok(Some(None)) if tries < 3 => continue,
                        Ok(Some(None)) => {
                            // It may still land: reload before signing again.
                            self.out_of_step.store(true, Ordering::SeqCst);
                            return Err(err(EtcdError::Unavailable(format!(
                                "write at {member} not seen applied: {why}"
                            ))));
                        }
                        _ => {
                            self.out_of_step.store(true, Ordering::SeqCst);
                            return Err(err(EtcdError::Unavailable(format!(
                                "write at {member}: {why}; whether it was applied is unknown"
                            ))));
                        }
                    }
                }
            }
        };
        let mut revs = self.revisions.lock().map_err(|_| err("revisions lock"))?;
        for (key, present) in touched {
            if present {
                revs.insert(key, revision);
            } else {
                revs.remove(&key);
            }
        }
        Ok(())
    }
}
