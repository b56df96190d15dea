//! The node's on-chain wallet: watch-only, on BDK (`bdk_wallet`). It is
//! built from the signer's two exported descriptors (BIP 84 `wpkh`,
//! external and internal chains), fed by the blocks the node already
//! follows and by the transactions it broadcasts, and persisted in the
//! node's SQLite file through BDK's own change sets (tables `bdk_*`, beside
//! LDK's `kv`). The node never holds a wallet private key: every spend is a
//! PSBT the signer checks against its policy and signs.
//!
//! `bdk_wallet` was picked over the hand-written wallet it replaces: branch
//! and bound coin selection, a transaction graph that knows unconfirmed
//! spends and replacements, reorg handling by checkpoints, fee bumping and
//! persisted coin locks, with no chain client of its own (the node hands it
//! blocks) and the SQLite the node already links.
//!
//! - [`spend`]: building spends, coin locks (one owner per coin), fee bumps.
//! - [`sync`]: blocks in, rebroadcast of the wallet's unconfirmed spends.
//! - [`migrate`]: the store of the previous hand-written wallet, read once.

mod migrate;
mod spend;
mod sync;

pub use migrate::ChainBlocks;
pub use spend::SpendAmount;
pub use sync::FORGET_AFTER_TIPS;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bdk_wallet::chain::{BlockId, ChainPosition};
use bdk_wallet::{ChangeSet, KeychainKind};
use bitcoin::{Address, BlockHash, Network, Psbt, Transaction, Txid, Witness};

use crate::store::SqliteStore;

/// Scripts watched beyond the last one used, on each chain: as far as the
/// signer looks ahead on its internal chain (change, close and sweep
/// destinations it hands out itself).
const LOOKAHEAD: u32 = 1000;
/// Key-value namespace of the wallet's own records (coin owners).
const FUNDING_NS: &str = "wallet_funding";

/// Why a wallet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The descriptors from the signer do not fit this wallet (or the
    /// wallet stored here was made for other descriptors or another chain).
    #[error("wallet descriptor: {0}")]
    Descriptor(String),
    /// Not enough confirmed coins.
    #[error("insufficient funds: {available} sat spendable, {needed} sat needed")]
    Insufficient {
        /// Spendable.
        available: u64,
        /// Needed.
        needed: u64,
    },
    /// A request the wallet cannot build.
    #[error("{0}")]
    Invalid(String),
    /// Store error.
    #[error("wallet store: {0}")]
    Store(String),
    /// The chain backend did not answer (start-up, migration).
    #[error("chain backend: {0}")]
    Chain(String),
}

/// Balances, in satoshis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Confirmed, mature and free to spend.
    pub confirmed_sat: u64,
    /// In transactions not yet in a block (change of our spends, receives).
    pub unconfirmed_sat: u64,
    /// Coinbase outputs not yet 100 blocks deep.
    pub immature_sat: u64,
    /// Confirmed coins held for a channel funding or a spend being signed.
    pub reserved_sat: u64,
}

/// One transaction of the wallet's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxSummary {
    /// Its id.
    pub txid: Txid,
    /// Height of the block holding it, if any.
    pub height: Option<u32>,
    /// Blocks on top of it and its own (0: unconfirmed).
    pub confirmations: u32,
    /// Paid to the wallet's scripts.
    pub received_sat: u64,
    /// Taken from the wallet's coins.
    pub sent_sat: u64,
    /// Its fee, when every input's amount is known.
    pub fee_sat: Option<u64>,
}

/// The watch-only wallet.
pub struct Wallet {
    inner: Mutex<bdk_wallet::Wallet>,
    store: Arc<SqliteStore>,
    /// LDK's anchor and HTLC bump transactions signed from this wallet's
    /// coins: while unconfirmed, their coins are still offered to LDK, which
    /// replaces its own bumps (in memory: after a restart LDK picks other
    /// coins, and the replacement frees these).
    bumps: Mutex<HashSet<Txid>>,
    /// Tips in a row at which each unconfirmed wallet transaction was
    /// missing from the backend's mempool with an input spent elsewhere.
    missing: Mutex<HashMap<Txid, u32>>,
    /// Coins locked for LDK bumps being signed, with the tips seen since.
    bump_claims: Mutex<Vec<(Vec<bitcoin::OutPoint>, u32)>>,
    /// Blocks connected since the last write (the chain's checkpoints are
    /// written every few blocks when nothing of the wallet's changed).
    unsaved_blocks: Mutex<u32>,
}

impl Wallet {
    /// Opens the wallet kept in `store`, or creates it: from the store of
    /// the hand-written wallet if there is one (see [`migrate`]), else with
    /// its birthday at the chain's tip. The descriptors are the signer's;
    /// a store made for other descriptors or another chain is refused.
    pub async fn open<C: ChainBlocks>(
        external: &str,
        internal: &str,
        network: Network,
        store: Arc<SqliteStore>,
        chain: &C,
    ) -> Result<Self, WalletError> {
        let genesis = chain.hash_at(0).await.map_err(WalletError::Chain)?;
        let stored = store
            .in_transaction(|tx| {
                ChangeSet::init_sqlite_tables(tx)?;
                ChangeSet::from_sqlite(tx)
            })
            .map_err(|e| WalletError::Store(e.to_string()))?;
        let loaded = bdk_wallet::Wallet::load()
            .descriptor(KeychainKind::External, Some(external.to_string()))
            .descriptor(KeychainKind::Internal, Some(internal.to_string()))
            .check_network(network)
            .check_genesis_hash(genesis)
            .lookahead(LOOKAHEAD)
            .load_wallet_no_persist(stored)
            .map_err(|e| WalletError::Descriptor(e.to_string()))?;
        let (inner, kv) = match loaded {
            Some(w) => (w, Vec::new()),
            None => {
                let mut w = bdk_wallet::Wallet::create(external.to_string(), internal.to_string())
                    .network(network)
                    .genesis_hash(genesis)
                    .lookahead(LOOKAHEAD)
                    .create_wallet_no_persist()
                    .map_err(|e| WalletError::Descriptor(e.to_string()))?;
                let migrated = migrate::from_old_store(&mut w, &store, chain).await?;
                let top = w.latest_checkpoint().height();
                if top == 0 {
                    // New (or an old record that had seen no block): from the tip.
                    let (_, height) = chain.tip().await.map_err(WalletError::Chain)?;
                    anchor_recent(&mut w, chain, height).await?;
                    tracing::info!(height, "new wallet, watching from the chain's tip");
                } else {
                    anchor_recent(&mut w, chain, top).await?;
                }
                (w, migrate::old_store_removal(migrated))
            }
        };
        let wallet = Wallet {
            inner: Mutex::new(inner),
            store,
            bumps: Mutex::new(HashSet::new()),
            missing: Mutex::new(HashMap::new()),
            bump_claims: Mutex::new(Vec::new()),
            unsaved_blocks: Mutex::new(0),
        };
        {
            let mut w = wallet.inner()?;
            wallet.commit(&mut w, &kv)?;
        }
        Ok(wallet)
    }

    fn inner(&self) -> Result<MutexGuard<'_, bdk_wallet::Wallet>, WalletError> {
        self.inner
            .lock()
            .map_err(|_| WalletError::Store("wallet lock poisoned".into()))
    }

    /// Writes what BDK staged, with `kv` records (`(namespace, key, value
    /// or None to remove)`), in one SQLite transaction. On failure the
    /// staged change stays and is written with the next commit.
    fn commit(
        &self,
        w: &mut bdk_wallet::Wallet,
        kv: &[(&str, String, Option<Vec<u8>>)],
    ) -> Result<(), WalletError> {
        let staged = w.staged();
        if staged.is_none() && kv.is_empty() {
            return Ok(());
        }
        self.store
            .in_transaction(|tx| {
                if let Some(cs) = staged {
                    cs.persist_to_sqlite(tx)?;
                }
                for (ns, key, value) in kv {
                    SqliteStore::put_in(tx, ns, "", key, value.as_deref())?;
                }
                Ok(())
            })
            .map_err(|e| WalletError::Store(e.to_string()))?;
        w.take_staged();
        if let Ok(mut n) = self.unsaved_blocks.lock() {
            *n = 0;
        }
        Ok(())
    }

    /// The block the wallet has seen last.
    pub fn best_block(&self) -> Option<(BlockHash, u32)> {
        let cp = self.inner().ok()?.latest_checkpoint();
        Some((cp.hash(), cp.height()))
    }

    /// A new receive address (external chain), written before it is shown.
    pub fn new_address(&self) -> Result<Address, WalletError> {
        let mut w = self.inner()?;
        let info = w.reveal_next_address(KeychainKind::External);
        self.commit(&mut w, &[])?;
        Ok(info.address)
    }

    /// Balances on the wallet's best chain.
    pub fn balance(&self) -> Balance {
        let Ok(w) = self.inner() else {
            return Balance::default();
        };
        let b = w.balance();
        let reserved: u64 = w
            .list_unspent()
            .filter(|o| w.is_outpoint_locked(o.outpoint) && o.chain_position.is_confirmed())
            .map(|o| o.txout.value.to_sat())
            .sum();
        Balance {
            confirmed_sat: b.confirmed.to_sat().saturating_sub(reserved),
            unconfirmed_sat: (b.trusted_pending + b.untrusted_pending).to_sat(),
            immature_sat: b.immature.to_sat(),
            reserved_sat: reserved,
        }
    }

    /// The wallet's transactions on its best chain, newest first
    /// (unconfirmed ones before any confirmed).
    pub fn transactions(&self) -> Vec<TxSummary> {
        let Ok(w) = self.inner() else {
            return Vec::new();
        };
        let tip = w.latest_checkpoint().height();
        let mut list: Vec<TxSummary> = w
            .transactions()
            .map(|t| {
                let (sent, received) = w.sent_and_received(&t.tx_node.tx);
                let height = match t.chain_position {
                    ChainPosition::Confirmed { anchor, .. } => Some(anchor.block_id.height),
                    ChainPosition::Unconfirmed { .. } => None,
                };
                TxSummary {
                    txid: t.tx_node.txid,
                    height,
                    confirmations: height.map_or(0, |h| tip.saturating_sub(h) + 1),
                    received_sat: received.to_sat(),
                    sent_sat: sent.to_sat(),
                    fee_sat: (!t.tx_node.tx.is_coinbase())
                        .then(|| w.calculate_fee(&t.tx_node.tx).ok())
                        .flatten()
                        .map(|f| f.to_sat()),
                }
            })
            .collect();
        list.sort_by_key(|t| (std::cmp::Reverse(t.height.unwrap_or(u32::MAX)), t.txid));
        list
    }

    /// A transaction the wallet knows (one that created or spent its
    /// coins), for the signer's proof of an amount.
    pub fn previous_tx(&self, txid: &Txid) -> Option<Transaction> {
        let w = self.inner().ok()?;
        let tx = w.tx_graph().get_tx(*txid)?;
        Some((*tx).clone())
    }

    /// Puts the signer's signatures into witnesses and extracts the transaction.
    pub fn finalize(&self, psbt: Psbt) -> Result<Transaction, WalletError> {
        let psbt = finalize_inputs(psbt, false)?;
        psbt.extract_tx()
            .map_err(|e| WalletError::Invalid(e.to_string()))
    }

    /// Like [`Wallet::finalize`] for a transaction with inputs of others
    /// (left unsigned, for their owner to complete): only the wallet's own
    /// inputs must carry a signature.
    pub fn finalize_own(&self, psbt: Psbt) -> Result<Transaction, WalletError> {
        Ok(finalize_inputs(psbt, true)?.extract_tx_unchecked_fee_rate())
    }
}

/// Blocks below the first one a wallet sees whose hashes it keeps: a
/// reorganisation of up to this depth still finds a common block.
const ANCHOR_DEPTH: u32 = 100;

/// Gives a new (or migrated) wallet the hashes of the blocks up to `top`
/// from [`ANCHOR_DEPTH`] below: BDK connects a block only to a chain it
/// shares a block with, and such a wallet has only the genesis and the
/// blocks it replayed.
async fn anchor_recent<C: ChainBlocks>(
    w: &mut bdk_wallet::Wallet,
    chain: &C,
    top: u32,
) -> Result<(), WalletError> {
    if top == 0 {
        return Ok(());
    }
    let mut cp = w.latest_checkpoint();
    for height in top.saturating_sub(ANCHOR_DEPTH).max(1)..=top {
        let hash = chain.hash_at(height).await.map_err(WalletError::Chain)?;
        cp = cp.insert(BlockId { height, hash });
    }
    w.apply_update(bdk_wallet::Update {
        chain: Some(cp),
        ..Default::default()
    })
    .map_err(|e| WalletError::Chain(format!("cannot anchor the wallet at block {top}: {e}")))
}

fn finalize_inputs(mut psbt: Psbt, only_own: bool) -> Result<Psbt, WalletError> {
    for (i, input) in psbt.inputs.iter_mut().enumerate() {
        if only_own && input.bip32_derivation.is_empty() {
            continue;
        }
        let (pk, sig) = input
            .partial_sigs
            .iter()
            .next()
            .ok_or_else(|| WalletError::Invalid(format!("input {i} was not signed")))?;
        input.final_script_witness = Some(Witness::p2wpkh(sig, &pk.inner));
        input.partial_sigs.clear();
        input.bip32_derivation.clear();
    }
    Ok(psbt)
}

#[cfg(test)]
mod tests;
