//! Where the signer's state lives. The core only sees this trait; the daemon
//! backs it with an embedded ACID database, the firmware with flash pages.
//!
//! Contract: `commit` returns only after every write of the batch is durable
//! (or none is). The signer replies to a request only after `commit` returned.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// A storage failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One record to write.
#[derive(Clone, Debug)]
pub enum Write {
    /// A channel record, keyed by its keys id.
    Channel([u8; 32], Vec<u8>),
    /// The signer-wide meta record.
    Meta(Vec<u8>),
    /// Removes a channel record (a keys id issued but never set up).
    DeleteChannel([u8; 32]),
    /// The state counter: one more with every durable write, so that an
    /// older copy of the state can be told from the latest (anti-rollback).
    Counter(u64),
}

/// Everything in a store, as read at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Channel records by keys id.
    pub channels: BTreeMap<[u8; 32], Vec<u8>>,
    /// The meta record, if one was written.
    pub meta: Option<Vec<u8>>,
    /// The state counter (0 for a store that never counted).
    pub counter: u64,
}

/// Durable storage of the signer's records.
pub trait Store {
    /// Reads every record.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Writes all of `writes` atomically and durably.
    fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError>;
}

/// A store in memory: for tests, benchmarks of the core, and the simulator's
/// volatile mode. Not durable.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    snapshot: Snapshot,
    /// When set, the next commit fails (tests that storage failures change nothing).
    pub fail_next_commit: bool,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot.clone())
    }

    fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        if core::mem::take(&mut self.fail_next_commit) {
            return Err(StoreError("injected failure".into()));
        }
        for w in writes {
            match w {
                Write::Channel(id, bytes) => {
                    self.snapshot.channels.insert(id, bytes);
                }
                Write::Meta(bytes) => self.snapshot.meta = Some(bytes),
                Write::DeleteChannel(id) => {
                    self.snapshot.channels.remove(&id);
                }
                Write::Counter(n) => self.snapshot.counter = n,
            }
        }
        Ok(())
    }
}
