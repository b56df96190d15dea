//! Moving a signer's state from its local store into etcd, once, so that an
//! existing signer can become replicated without closing its channels.
//!
//! The copy goes only into an empty prefix, and only while no replica
//! holds the leadership: the importer takes the leadership key itself
//! (bound to a short lease), so a replica started meanwhile stands by
//! until the copy is complete. The records go first, the meta record and
//! the state counter last: a copy cut short holds no counter and no meta,
//! and is refused by the next attempt (the prefix is not empty) with a
//! message saying how to clear it. What etcd holds afterwards is read back
//! and compared with the source, record by record.

use std::time::Duration;

use lnpd_signer_core::store::{Snapshot, Store, Write};

use crate::etcd::{Etcd, EtcdError, EtcdSettings};
use crate::store_etcd::{EtcdStore, Leadership};

/// Records per transaction (etcd takes at most 128 operations in one).
const CHUNK: usize = 100;

/// How long the importer's leadership lease lives if the copy dies.
const IMPORT_LEASE: Duration = Duration::from_secs(30);

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// etcd could not be reached or refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The prefix already holds a state: never overwritten.
    #[error(
        "etcd already holds a signer state under {prefix:?} (state counter {counter}, {channels} channel record(s)); \
         nothing copied. If it is a copy cut short, remove it first (etcdctl del --prefix {prefix:?}/)"
    )]
    NotEmpty {
        /// The prefix.
        prefix: String,
        /// Its counter.
        counter: u64,
        /// Its channel records.
        channels: usize,
    },
    /// A replica holds the leadership: it must be stopped first.
    #[error("a replica is active ({0}): stop every replica before copying a state into etcd")]
    ReplicaActive(String),
    /// A write or the read-back failed.
    #[error("copying into etcd: {0}")]
    Store(String),
}

/// Copies `source` into etcd under `settings.prefix`. Returns what etcd
/// holds afterwards (equal to `source`).
pub fn copy_into_etcd(
    settings: &EtcdSettings,
    source: &Snapshot,
) -> Result<Snapshot, MigrateError> {
    let etcd = Etcd::new(settings)?;
    let prefix = settings.prefix.trim_end_matches('/').to_string();
    let reader = EtcdStore::new(etcd.clone(), &prefix, None);
    let there = reader
        .load()
        .map_err(|e| MigrateError::Store(e.to_string()))?;
    if there != Snapshot::default() {
        return Err(MigrateError::NotEmpty {
            prefix,
            counter: there.counter,
            channels: there.channels.len(),
        });
    }
    let leader_key = format!("{prefix}/leader").into_bytes();
    let leadership = take_leadership(&etcd, &leader_key)?;
    let lease = leadership.1;
    let result = write_all(&etcd, &prefix, leadership.0, source);
    // The lease ends with the copy (a copy that died lets it lapse).
    let e = etcd.clone();
    let _ = etcd.block(async move { e.revoke(lease).await });
    result
}

/// Creates the leadership key under a lease of our own, if nobody holds
/// it: a replica started during the copy stands by.
fn take_leadership(etcd: &Etcd, key: &[u8]) -> Result<(Leadership, i64), MigrateError> {
    let e = etcd.clone();
    let owned = key.to_vec();
    let (r, lease) = etcd
        .block(async move {
            let lease = e.grant(IMPORT_LEASE.as_secs() as i64).await?;
            let value = b"copy-state (importing a state)".to_vec();
            let r = e.campaign(&owned, value, lease.id).await?;
            Ok::<_, EtcdError>((r, lease.id))
        })
        .ok_or_else(|| MigrateError::Store("etcd client stopped".into()))??;
    if !r.succeeded {
        let holder = crate::etcd::holder(&r)
            .map(|kv| String::from_utf8_lossy(&kv.value).to_string())
            .unwrap_or_else(|| "unknown".into());
        return Err(MigrateError::ReplicaActive(holder));
    }
    let create_revision = r.header.map(|h| h.revision).unwrap_or(0);
    Ok((
        Leadership {
            key: key.to_vec(),
            create_revision,
        },
        lease,
    ))
}

/// Writes the records, then meta and counter, and reads everything back.
fn write_all(
    etcd: &Etcd,
    prefix: &str,
    leadership: Leadership,
    source: &Snapshot,
) -> Result<Snapshot, MigrateError> {
    let mut store = EtcdStore::new(etcd.clone(), prefix, Some(leadership));
    let store_err = |e: lnpd_signer_core::store::StoreError| MigrateError::Store(e.to_string());
    let records: Vec<Write> = source
        .channels
        .iter()
        .map(|(id, bytes)| Write::Channel(*id, bytes.clone()))
        .collect();
    for chunk in records.chunks(CHUNK) {
        store.commit(chunk.to_vec()).map_err(store_err)?;
    }
    let mut last = Vec::new();
    if let Some(meta) = &source.meta {
        last.push(Write::Meta(meta.clone()));
    }
    last.push(Write::Counter(source.counter));
    store.commit(last).map_err(store_err)?;
    let copied = EtcdStore::new(etcd.clone(), prefix, None)
        .load()
        .map_err(store_err)?;
    if copied != *source {
        return Err(MigrateError::Store(format!(
            "what etcd holds under {prefix:?} differs from the source (counter {} vs {}, {} vs {} channel records)",
            copied.counter,
            source.counter,
            copied.channels.len(),
            source.channels.len()
        )));
    }
    Ok(copied)
}
