//! The signer: keys, per-channel state and policy over a durable store,
//! and how its state changes are made durable (one write per request, or
//! per batch, before any reply leaves). One `Signer` serves one node;
//! request handling is in `crate::ops`.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::Network;
use lnpd_proto::signer::{reply, request};
use prost::Message;

use crate::error::SignerError;
use crate::keys::{KeyRing, Seed};
use crate::policy::PolicyConfig;
use crate::state::{ChannelRecord, MetaRecord};
use crate::store::{Store, Write};
use crate::ChannelKeysId;

/// Largest encoded request the signer accepts (a PSBT or a spend of many
/// outputs fits well within it).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Source of randomness for the few things that need it (channel keys ids).
pub trait Entropy: Send {
    /// 32 fresh random bytes.
    fn random_bytes(&mut self) -> [u8; 32];
}

impl<F: FnMut() -> [u8; 32] + Send> Entropy for F {
    fn random_bytes(&mut self) -> [u8; 32] {
        self()
    }
}

/// The signer: keys, per-channel state and policy over a durable store.
pub struct Signer<S: Store> {
    pub(crate) secp: Secp256k1<All>,
    pub(crate) keys: KeyRing,
    pub(crate) policy: PolicyConfig,
    pub(crate) store: S,
    pub(crate) channels: BTreeMap<ChannelKeysId, ChannelRecord>,
    pub(crate) meta: MetaRecord,
    pub(crate) entropy: Box<dyn Entropy>,
    pub(crate) wallet_scripts: crate::wallet::WalletScripts,
    /// Our channel public keys by keys id: public data, derived once (five
    /// point multiplications saved on every request).
    pub(crate) pubkeys:
        core::cell::RefCell<BTreeMap<ChannelKeysId, lightning::ln::chan_utils::ChannelPublicKeys>>,
    /// Channel parameters as parsed from a recorded set-up (and the set-up
    /// they came from): public data, parsed once instead of on every
    /// request (each public key costs a square root to decompress).
    pub(crate) params: core::cell::RefCell<
        BTreeMap<
            ChannelKeysId,
            (
                crate::state::SetupRecord,
                lightning::ln::chan_utils::ChannelTransactionParameters,
            ),
        >,
    >,
    /// Our latest per-commitment points by channel (public; a validation
    /// hands out the point two states ahead, which the next but one
    /// validation needs again).
    pub(crate) points:
        core::cell::RefCell<BTreeMap<ChannelKeysId, Vec<(u64, bitcoin::secp256k1::PublicKey)>>>,
    /// The funding output script of every set-up channel (derived from
    /// the records: public data).
    pub(crate) funding_scripts: BTreeMap<bitcoin::ScriptBuf, ChannelKeysId>,
    /// While a batch runs: its writes, and the state before it to undo.
    pub(crate) batch: Option<PendingBatch>,
    /// Unix time (seconds) as the host last told it (no clock in no_std).
    pub(crate) now: u64,
    /// The state counter of the latest durable write (anti-rollback).
    pub(crate) state_counter: u64,
    /// Set when this state is known to be older than one the signer
    /// acknowledged before: why. Nothing is signed or written then.
    pub(crate) rollback: Option<alloc::string::String>,
    /// Channels a request showed to be ahead of their record (the record
    /// is older than what the signer signed): refused until restart.
    pub(crate) rolled_back_channels: alloc::collections::BTreeSet<ChannelKeysId>,
    /// The operator accepts an older state (see [`Signer::accept_older_states`]).
    pub(crate) accept_older: bool,
}

/// Writes of a batch not yet durable, and what they replaced in memory.
#[derive(Default)]
pub(crate) struct PendingBatch {
    writes: Vec<Write>,
    channels_before: BTreeMap<ChannelKeysId, Option<ChannelRecord>>,
    meta_before: Option<MetaRecord>,
}

use lnpd_proto::MAX_BATCH;

impl<S: Store> core::fmt::Debug for Signer<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Signer")
            .field("network", &self.keys.network())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Signer<S> {
    /// Opens a signer over `store`, loading the state it holds.
    pub fn new(
        seed: &Seed,
        network: Network,
        policy: PolicyConfig,
        store: S,
        entropy: Box<dyn Entropy>,
    ) -> Result<Self, SignerError> {
        let secp = Secp256k1::new();
        if network != Network::Regtest
            && policy
                .chain_checkpoint
                .is_none_or(|c| c.height % crate::chain::RETARGET_INTERVAL != 0)
        {
            // From genesis, a node feeding headers could keep the signer's
            // height wherever it likes until it catches up: a checkpoint of
            // recent work is required where blocks cost real work.
            return Err(SignerError::invalid(format!(
                "on {network} the signer needs a recent chain checkpoint ([chain] checkpoint = \"HEIGHT:HEADER\", at a height that is a multiple of 2016)"
            )));
        }
        let keys = KeyRing::from_seed(seed, network, &secp)?;
        let snapshot = store.load()?;
        let mut meta = match &snapshot.meta {
            Some(b) => MetaRecord::decode_record(b)?,
            None => MetaRecord::default(),
        };
        if meta.schema_version > crate::state::SCHEMA_VERSION {
            return Err(SignerError::internal(format!(
                "the state was written by a newer release (schema {}; this release reads up to {}): run that release or a newer one",
                meta.schema_version,
                crate::state::SCHEMA_VERSION
            )));
        }
        let mut channels = BTreeMap::new();
        for (id, bytes) in &snapshot.channels {
            let mut record = ChannelRecord::decode_record(bytes)?;
            if !record.ledger_ready && record.setup.is_some() {
                // Written before the HTLC ledger: its HTLCs are taken as
                // they are (made durable by the migration below).
                record.outgoing = crate::policy::ledger::initial_entries(&record);
                record.ledger_ready = true;
            }
            channels.insert(ChannelKeysId(*id), record);
        }
        let stored = snapshot.meta.is_some() || !channels.is_empty();
        let migrate_from = (stored && meta.schema_version < crate::state::SCHEMA_VERSION)
            .then_some(meta.schema_version);
        meta.schema_version = crate::state::SCHEMA_VERSION;
        let mut store = store;
        let mut state_counter = snapshot.counter;
        if let Some(from) = migrate_from {
            // Every record rewritten in this release's schema, with the
            // version, in one durable write: all or nothing.
            let mut writes: Vec<Write> = channels
                .iter()
                .map(|(id, r): (&ChannelKeysId, &ChannelRecord)| {
                    Write::Channel(id.0, r.encode_record())
                })
                .collect();
            writes.push(Write::Meta(meta.encode_to_vec()));
            state_counter += 1;
            writes.push(Write::Counter(state_counter));
            store.commit(writes)?;
            tracing::info!(
                channels = channels.len(),
                "state migrated from schema {from} to {}",
                crate::state::SCHEMA_VERSION
            );
        }
        let wallet_scripts =
            crate::wallet::WalletScripts::new(&keys, &secp, meta.next_internal_index)?;
        let mut signer = Signer {
            secp,
            keys,
            policy,
            store,
            channels,
            meta,
            entropy,
            wallet_scripts,
            pubkeys: Default::default(),
            params: Default::default(),
            points: Default::default(),
            funding_scripts: BTreeMap::new(),
            batch: None,
            now: 0,
            state_counter,
            rollback: None,
            rolled_back_channels: Default::default(),
            accept_older: false,
        };
        let set_up: Vec<(ChannelKeysId, crate::state::ChannelRecord)> = signer
            .channels
            .iter()
            .filter(|(_, c)| c.setup.is_some())
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        for (id, c) in set_up {
            if let Some(script) = c
                .setup
                .as_ref()
                .and_then(|s| signer.funding_script_of(&id, s))
            {
                signer.funding_scripts.insert(script, id);
            }
        }
        Ok(signer)
    }

    /// The signer's own facts, for a validator.
    pub(crate) fn facts(&self) -> crate::policy::facts::Facts<'_> {
        crate::policy::facts::Facts {
            policy: &self.policy,
            height: self.chain_height(),
            now: self.now,
            wallet: &self.wallet_scripts,
            meta: &self.meta,
            channels: &self.channels,
        }
    }

    /// Sets the time (unix seconds) payment controls measure windows with;
    /// the daemon calls it before each request.
    pub fn set_time(&mut self, unix_secs: u64) {
        self.now = unix_secs;
    }

    /// The node id this signer signs for.
    pub fn node_id(&self) -> bitcoin::secp256k1::PublicKey {
        self.keys.node_id(&self.secp)
    }

    /// Uses explicit secrets for a channel (tests with published key material only).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn set_channel_secrets_for_tests(
        &mut self,
        id: ChannelKeysId,
        secrets: crate::keys::ChannelSecrets,
    ) {
        self.pubkeys.borrow_mut().remove(&id);
        self.params.borrow_mut().remove(&id);
        self.points.borrow_mut().remove(&id);
        self.keys.set_channel_secrets(id, secrets);
    }

    /// The network of the keys.
    pub fn network(&self) -> Network {
        self.keys.network()
    }

    /// The policy in force.
    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    /// Replaces the operator's allow-list (destinations and payees).
    pub fn set_allowlist(
        &mut self,
        scripts: alloc::collections::BTreeSet<Vec<u8>>,
        payees: alloc::collections::BTreeSet<[u8; 33]>,
    ) {
        self.policy.allowed_scripts = scripts;
        self.policy.allowed_payees = payees;
    }

    /// Applies the allow-list kept with the state (see [`Self::allow`]).
    pub fn load_kept_allowlist(&mut self) {
        let scripts = self.meta.allowed_scripts.iter().cloned().collect();
        let payees = self
            .meta
            .allowed_payees
            .iter()
            .filter_map(|p| <[u8; 33]>::try_from(p.as_slice()).ok())
            .collect();
        self.set_allowlist(scripts, payees);
    }

    /// Adds an output script or (33 bytes) a payee node id to the
    /// allow-list kept with the state, durably. For a hardware signer,
    /// after its user confirmed the entry; never from a node's request.
    pub fn allow(
        &mut self,
        script: Option<Vec<u8>>,
        payee: Option<[u8; 33]>,
    ) -> Result<(), SignerError> {
        let mut meta = self.meta.clone();
        if let Some(s) = script.filter(|s| !meta.allowed_scripts.contains(s)) {
            meta.allowed_scripts.push(s);
        }
        if let Some(p) = payee.filter(|p| !meta.allowed_payees.iter().any(|q| q == p)) {
            meta.allowed_payees.push(p.to_vec());
        }
        self.commit_meta(meta)?;
        self.load_kept_allowlist();
        Ok(())
    }

    /// Stops the signer, handing its store back.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Hosts paired with this signer when it runs on a hardware device.
    pub fn paired_hosts(&self) -> &[Vec<u8>] {
        &self.meta.paired_hosts
    }

    /// Records a paired host (durably); the device calls it once its user
    /// confirmed the pairing code.
    pub fn pair_host(&mut self, host_key: &[u8]) -> Result<(), SignerError> {
        if self.meta.paired_hosts.iter().any(|h| h == host_key) {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.paired_hosts.push(host_key.to_vec());
        self.commit_meta(meta)
    }

    /// Known channels, by keys id.
    pub fn channels(&self) -> impl Iterator<Item = (&ChannelKeysId, &ChannelRecord)> {
        self.channels.iter()
    }

    /// The store (for the daemon's maintenance commands).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether the store takes a durable write now: commits an empty set of
    /// writes (nothing changes). For the daemon's health check.
    pub fn probe_store(&mut self) -> Result<(), crate::store::StoreError> {
        self.store.commit(Vec::new())
    }

    /// The store, to inject failures (tests only).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Persists a channel record (and optionally the meta record) durably,
    /// then makes it the in-memory state. On error nothing changes.
    pub(crate) fn commit_channel(
        &mut self,
        id: ChannelKeysId,
        record: ChannelRecord,
        meta: Option<MetaRecord>,
    ) -> Result<(), SignerError> {
        self.commit_records(alloc::vec![(id, record)], Vec::new(), meta)
    }

    /// Persists channel records, removals and optionally the meta record in
    /// one durable write, then makes them the in-memory state. On error
    /// nothing changes.
    pub(crate) fn commit_records(
        &mut self,
        records: Vec<(ChannelKeysId, ChannelRecord)>,
        deleted: Vec<ChannelKeysId>,
        meta: Option<MetaRecord>,
    ) -> Result<(), SignerError> {
        let mut writes = Vec::with_capacity(records.len() + deleted.len() + 1);
        for (id, record) in &records {
            writes.push(Write::Channel(id.0, record.encode_record()));
        }
        for id in &deleted {
            writes.push(Write::DeleteChannel(id.0));
        }
        if let Some(m) = &meta {
            writes.push(Write::Meta(m.encode_to_vec()));
        }
        if let Some(batch) = self.batch.as_mut() {
            // Made durable at the end of the batch, before any reply leaves.
            for id in records.iter().map(|(id, _)| id).chain(&deleted) {
                let before = self.channels.get(id).cloned();
                batch.channels_before.entry(*id).or_insert(before);
            }
            if meta.is_some() && batch.meta_before.is_none() {
                batch.meta_before = Some(self.meta.clone());
            }
            batch.writes.extend(writes);
        } else {
            self.durable(writes)?;
        }
        for (id, record) in records {
            self.channels.insert(id, record);
        }
        for id in deleted {
            self.channels.remove(&id);
        }
        if let Some(m) = meta {
            self.meta = m;
        }
        Ok(())
    }

    /// Persists the meta record alone.
    pub(crate) fn commit_meta(&mut self, meta: MetaRecord) -> Result<(), SignerError> {
        let write = Write::Meta(meta.encode_to_vec());
        if let Some(batch) = self.batch.as_mut() {
            if batch.meta_before.is_none() {
                batch.meta_before = Some(self.meta.clone());
            }
            batch.writes.push(write);
        } else {
            self.durable(alloc::vec![write])?;
        }
        self.meta = meta;
        Ok(())
    }

    /// Handles requests in order and makes all their state changes durable
    /// in one write before returning any reply. A request refused or failed
    /// changes nothing, as alone; if the final write fails, no request of
    /// the batch keeps any effect and every reply is that error.
    pub fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Vec<Result<reply::Body, SignerError>> {
        if bodies.len() > MAX_BATCH {
            let e = SignerError::invalid(format!("a batch holds at most {MAX_BATCH} requests"));
            return bodies.iter().map(|_| Err(e.clone())).collect();
        }
        // A batch a panic cut short leaves nothing behind.
        self.abort_batch();
        self.batch = Some(PendingBatch::default());
        let mut results: Vec<_> = bodies
            .into_iter()
            .map(|b| {
                if b.batchable() {
                    self.handle(b)
                } else {
                    Err(SignerError::invalid(format!(
                        "{} cannot be part of a batch",
                        b.name()
                    )))
                }
            })
            .collect();
        let batch = self.batch.take().unwrap_or_default();
        if !batch.writes.is_empty() {
            if let Err(e) = self.durable(batch.writes) {
                self.restore(batch.channels_before, batch.meta_before);
                tracing::error!("batch not saved, none of it applied: {}", e.message);
                results = results.iter().map(|_| Err(e.clone())).collect();
            }
        }
        results
    }

    /// Writes `writes` and the next state counter in one durable write.
    /// Never on a state known to be older than one acknowledged before: a
    /// write would raise the counter past the evidence.
    fn durable(&mut self, mut writes: Vec<Write>) -> Result<(), SignerError> {
        if let Some(why) = &self.rollback {
            return Err(SignerError::policy(
                crate::RuleId::StateRollbackDetected,
                why.clone(),
            ));
        }
        let next = self
            .state_counter
            .checked_add(1)
            .ok_or_else(|| SignerError::internal("the state counter is exhausted"))?;
        writes.push(Write::Counter(next));
        self.store.commit(writes)?;
        self.state_counter = next;
        Ok(())
    }

    /// The state counter: one more with every durable write. The daemon
    /// keeps the highest it acknowledged apart from the state, and the
    /// node the highest it saw, to tell an older copy of the state.
    pub fn state_counter(&self) -> u64 {
        self.state_counter
    }

    /// Why this signer refuses to sign (its state is older than one it
    /// acknowledged), if it does.
    pub fn rollback(&self) -> Option<&str> {
        self.rollback.as_deref()
    }

    /// Compares the state with a counter this signer acknowledged before
    /// (`seen`, as kept by `who`): if the state is older, the signer refuses
    /// every request but `Ping` and `Info` from now on
    /// (`state-rollback-detected`), and says why.
    pub fn check_acknowledged(&mut self, seen: u64, who: &str) -> Result<(), SignerError> {
        if seen <= self.state_counter {
            return Ok(());
        }
        if self.accept_older {
            tracing::warn!(
                rule = crate::RuleId::StateRollbackDetected.as_str(),
                "{who} has seen state #{seen}, this state is #{}: accepted as the operator asked; \
                 channels that moved on since are still refused one by one",
                self.state_counter
            );
            match self.accept_older_state(seen) {
                Ok(()) => return Ok(()),
                // Not accepted after all: refused as without the flag.
                Err(e) => tracing::error!("the older state could not be accepted: {}", e.message),
            }
        }
        let why = format!(
            "the signer's state is older than one it acknowledged: {who} has seen state #{seen}, this state is #{}. \
             Restore the latest copy of the state and restart; do not sign from this one (a revoked \
             commitment signed or broadcast from it could lose the channel). If the latest state is lost, \
             have each peer close its channel (its commitment pays this node's balance to a static key \
             the signer can always sweep)",
            self.state_counter
        );
        if self.rollback.is_none() {
            tracing::error!(
                rule = crate::RuleId::StateRollbackDetected.as_str(),
                "{why}"
            );
        }
        self.rollback = Some(why.clone());
        Err(SignerError::policy(
            crate::RuleId::StateRollbackDetected,
            why,
        ))
    }

    /// From now on, a counter acknowledged before and higher than this
    /// state's is accepted ([`Signer::accept_older_state`]) instead of
    /// refused: the operator's decision when the latest state is lost.
    pub fn accept_older_states(&mut self) {
        self.accept_older = true;
    }

    /// Accepts this state although it is older than one acknowledged
    /// before (the operator's decision, once the latest is known lost): the
    /// counter moves past `seen` in one durable write. Channels that moved
    /// on since this state are still refused one by one
    /// (`state-rollback-detected`), from their commitment numbers.
    /// Nothing changes unless that write succeeds.
    pub fn accept_older_state(&mut self, seen: u64) -> Result<(), SignerError> {
        let before = (self.rollback.take(), self.state_counter);
        if seen > self.state_counter {
            self.state_counter = seen;
            if let Err(e) = self.durable(Vec::new()) {
                (self.rollback, self.state_counter) = before;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undoes a batch that did not finish (a panic inside one of its
    /// requests): its buffered writes are dropped and the records it
    /// changed in memory are restored. Nothing of it was written.
    pub fn abort_batch(&mut self) {
        if let Some(batch) = self.batch.take() {
            if !batch.writes.is_empty() {
                tracing::error!("a batch was cut short: none of it applied");
            }
            self.restore(batch.channels_before, batch.meta_before);
        }
    }

    fn restore(
        &mut self,
        channels_before: BTreeMap<ChannelKeysId, Option<ChannelRecord>>,
        meta_before: Option<MetaRecord>,
    ) {
        for (id, before) in channels_before {
            match before {
                Some(r) => self.channels.insert(id, r),
                None => self.channels.remove(&id),
            };
        }
        if let Some(m) = meta_before {
            self.meta = m;
        }
    }

    /// The record of a channel the signer knows.
    pub(crate) fn channel(&self, id: &ChannelKeysId) -> Result<&ChannelRecord, SignerError> {
        self.channels
            .get(id)
            .ok_or_else(|| SignerError::not_found(format!("unknown channel {id}")))
    }

    /// Every record the signer holds, encoded: equal digests mean equal state.
    pub fn state_digest(&self) -> Vec<u8> {
        let mut out = self.meta.encode_to_vec();
        for (id, c) in &self.channels {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&c.encode_record());
        }
        out
    }
}
