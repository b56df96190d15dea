//! The daemon's durable store: redb, an embedded ACID key-value database.
//! Each `commit` is one write transaction with immediate durability (fsync)
//! before it returns.
//!
//! redb was picked over SQLite (C, bundled build) and sled (unmaintained):
//! pure Rust, crash-safe copy-on-write B-trees, one file.
//!
//! The state counter, written by every commit, lives in the channel table
//! under a key no channel has: a commit that changes one channel then
//! rewrites one table's pages, not two (a second table measured +15% on a
//! 4 KiB commit here, more when the meta record beside it is large).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use lnpd_signer_core::store::{Snapshot, Store, StoreError, Write};

const CHANNELS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("channels");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The state counter's key in the channel table (8 bytes, big-endian): all
/// zeros, which no channel keys id is (each is a SHA-256 output).
const COUNTER_KEY: [u8; 32] = [0; 32];
/// Where stores before this release kept the counter (meta table); moved
/// to [`COUNTER_KEY`] when such a store is opened.
const OLD_COUNTER: &str = "counter";

fn counter_value(bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError("the state counter is not 8 bytes".into()))
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The signer state in a redb file.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the store. Fails if another process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                "{} is in use by another lnpd-signer process",
                path.display()
            )),
            e => StoreError(format!("cannot open {}: {e}", path.display())),
        })?;
        let txn = db.begin_write().map_err(err)?;
        {
            let mut channels = txn.open_table(CHANNELS).map_err(err)?;
            let mut meta = txn.open_table(META).map_err(err)?;
            let old = meta.remove(OLD_COUNTER).map_err(err)?;
            if let Some(old) = old {
                let old = counter_value(old.value())?;
                let current = match channels.get(&COUNTER_KEY).map_err(err)? {
                    Some(v) => counter_value(v.value())?,
                    None => 0,
                };
                let moved = old.max(current).to_be_bytes();
                channels
                    .insert(&COUNTER_KEY, moved.as_slice())
                    .map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut snap = Snapshot::default();
        let channels = txn.open_table(CHANNELS).map_err(err)?;
        for row in channels.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if *k.value() == COUNTER_KEY {
                snap.counter = counter_value(v.value())?;
            } else {
                snap.channels.insert(*k.value(), v.value().to_vec());
            }
        }
        let meta = txn.open_table(META).map_err(err)?;
        snap.meta = meta.get("meta").map_err(err)?.map(|v| v.value().to_vec());
        Ok(snap)
    }

    fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let done = self.commit_now(writes);
        metrics::histogram!("lnpd_signer_durable_write_duration_seconds", "store" => "redb")
            .record(started.elapsed().as_secs_f64());
        done
    }
}

impl RedbStore {
    fn commit_now(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut channels = txn.open_table(CHANNELS).map_err(err)?;
            // The meta table is opened only by a commit that writes it.
            let mut meta = None;
            for w in &writes {
                match w {
                    Write::Channel(id, _) | Write::DeleteChannel(id) if *id == COUNTER_KEY => {
                        return Err(StoreError(
                            "a channel keys id of all zeros is the state counter's key".into(),
                        ));
                    }
                    Write::Channel(id, bytes) => {
                        channels.insert(id, bytes.as_slice()).map_err(err)?;
                    }
                    Write::Meta(bytes) => {
                        let table = match &mut meta {
                            Some(t) => t,
                            None => meta.insert(txn.open_table(META).map_err(err)?),
                        };
                        table.insert("meta", bytes.as_slice()).map_err(err)?;
                    }
                    Write::DeleteChannel(id) => {
                        channels.remove(id).map_err(err)?;
                    }
                    Write::Counter(n) => {
                        channels
                            .insert(&COUNTER_KEY, n.to_be_bytes().as_slice())
                            .map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lnpd-store-redb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.redb")
    }

    /// Rows of a table: key, value.
    type Rows<K> = Vec<(K, Vec<u8>)>;

    /// Every key and value of both tables, read with redb alone.
    fn raw(path: &Path) -> (Rows<Vec<u8>>, Rows<String>) {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let channels = txn.open_table(CHANNELS).unwrap();
        let meta = txn.open_table(META).unwrap();
        (
            channels
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                })
                .collect(),
            meta.iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value().to_string(), v.value().to_vec())
                })
                .collect(),
        )
    }

    #[test]
    fn a_counter_kept_in_the_meta_table_moves_to_the_channel_table() {
        let path = temp_path("old-counter");
        // A store as the previous release wrote it: a channel, the meta
        // record and the counter in the meta table.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut channels = txn.open_table(CHANNELS).unwrap();
                channels.insert(&[7u8; 32], b"channel".as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("meta", b"meta".as_slice()).unwrap();
                meta.insert(OLD_COUNTER, 41u64.to_be_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let mut store = RedbStore::open(&path).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.counter, 41);
        assert_eq!(snap.channels.len(), 1, "the counter is not a channel");
        assert_eq!(snap.channels[&[7u8; 32]], b"channel");
        assert_eq!(snap.meta.as_deref(), Some(&b"meta"[..]));
        store
            .commit(vec![
                Write::Channel([7u8; 32], b"channel 2".to_vec()),
                Write::Counter(42),
            ])
            .unwrap();
        drop(store);
        let (channels, meta) = raw(&path);
        assert_eq!(
            channels,
            vec![
                (vec![0u8; 32], 42u64.to_be_bytes().to_vec()),
                (vec![7u8; 32], b"channel 2".to_vec()),
            ]
        );
        assert_eq!(meta, vec![("meta".to_string(), b"meta".to_vec())]);
        assert_eq!(RedbStore::open(&path).unwrap().load().unwrap().counter, 42);
    }

    #[test]
    fn a_channel_cannot_take_the_counters_key() {
        let path = temp_path("reserved");
        let mut store = RedbStore::open(&path).unwrap();
        store.commit(vec![Write::Counter(5)]).unwrap();
        let before = store.load().unwrap();
        for w in [
            Write::Channel([0; 32], b"x".to_vec()),
            Write::DeleteChannel([0; 32]),
        ] {
            assert!(store.commit(vec![Write::Counter(6), w]).is_err());
            assert_eq!(store.load().unwrap(), before, "nothing written");
        }
    }
}
