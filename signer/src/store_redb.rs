//! The daemon's durable store: redb, an embedded ACID key-value database.
//! Each `commit` is one write transaction with immediate durability (fsync)
//! before it returns.
//!
//! redb was picked over SQLite (C, bundled build) and sled (unmaintained):
//! pure Rust, crash-safe copy-on-write B-trees, one file.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use lnpd_signer_core::store::{Snapshot, Store, StoreError, Write};

const CHANNELS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("channels");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The state counter's key in the meta table (8 bytes, big-endian).
const COUNTER: &str = "counter";

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
        txn.open_table(CHANNELS).map_err(err)?;
        txn.open_table(META).map_err(err)?;
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
            snap.channels.insert(*k.value(), v.value().to_vec());
        }
        let meta = txn.open_table(META).map_err(err)?;
        snap.meta = meta.get("meta").map_err(err)?.map(|v| v.value().to_vec());
        snap.counter = match meta.get(COUNTER).map_err(err)? {
            Some(v) => u64::from_be_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| StoreError("the state counter is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        Ok(snap)
    }

    fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut channels = txn.open_table(CHANNELS).map_err(err)?;
            let mut meta = txn.open_table(META).map_err(err)?;
            for w in &writes {
                match w {
                    Write::Channel(id, bytes) => {
                        channels.insert(id, bytes.as_slice()).map_err(err)?;
                    }
                    Write::Meta(bytes) => {
                        meta.insert("meta", bytes.as_slice()).map_err(err)?;
                    }
                    Write::DeleteChannel(id) => {
                        channels.remove(id).map_err(err)?;
                    }
                    Write::Counter(n) => {
                        meta.insert(COUNTER, n.to_be_bytes().as_slice())
                            .map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }
}
