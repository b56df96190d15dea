//! The store of the hand-written wallet lnpd had before BDK (one JSON
//! record, `wallet//state`), read once into a new BDK wallet.
//!
//! That record kept its coins (with the transactions that created them and
//! the height of the block that spent them) but not the spending
//! transactions, so inserting its coins alone would bring spent coins
//! back. Instead the blocks at every height it names (where a coin was
//! created or spent, and its last block) are fetched again and applied to
//! the new wallet: BDK finds the coins, the spends, their confirmations and
//! the full previous transactions the signer needs, at one block fetch per
//! height. Address indexes are revealed up to those the old wallet handed
//! out, so no address is given twice. The new wallet and the removal of the
//! old record are written in one transaction: a crash in between redoes the
//! migration.

use std::collections::BTreeSet;

use bdk_wallet::KeychainKind;
use bitcoin::{Block, BlockHash};
use lightning::util::persist::KVStoreSync;
use serde::Deserialize;

use super::WalletError;
use crate::store::SqliteStore;

const OLD_NS: &str = "wallet";
const OLD_KEY: &str = "state";

/// The blocks a wallet is built from (the node's chain backend).
#[allow(async_fn_in_trait)]
pub trait ChainBlocks {
    /// The best block: hash and height.
    async fn tip(&self) -> Result<(BlockHash, u32), String>;
    /// The hash of the best chain's block at `height`.
    async fn hash_at(&self, height: u32) -> Result<BlockHash, String>;
    /// A whole block.
    async fn block(&self, hash: &BlockHash) -> Result<Block, String>;
}

#[derive(Deserialize)]
struct OldCoin {
    outpoint: String,
    value_sat: u64,
    chain: u32,
    index: u32,
    height: u32,
    spent_at: Option<u32>,
}

#[derive(Deserialize)]
struct OldState {
    next_external: u32,
    next_internal: u32,
    coins: Vec<OldCoin>,
    best_height: u32,
    best_hash: Option<String>,
}

/// The key-value change that removes the old record once migrated.
pub(super) fn old_store_removal(migrated: bool) -> Vec<(&'static str, String, Option<Vec<u8>>)> {
    if migrated {
        vec![(OLD_NS, OLD_KEY.to_string(), None)]
    } else {
        Vec::new()
    }
}

/// Fills the new wallet `w` from the old record, if the store has one;
/// returns whether it had. Nothing is written here.
pub(super) async fn from_old_store<C: ChainBlocks>(
    w: &mut bdk_wallet::Wallet,
    store: &SqliteStore,
    chain: &C,
) -> Result<bool, WalletError> {
    let bytes = match store.read(OLD_NS, "", OLD_KEY) {
        Ok(b) => b,
        Err(e) if e.kind() == lightning::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(WalletError::Store(e.to_string())),
    };
    let old: OldState = serde_json::from_slice(&bytes).map_err(|e| {
        WalletError::Store(format!(
            "the previous wallet's record ({OLD_NS}//{OLD_KEY}) is unreadable: {e}"
        ))
    })?;
    tracing::info!(
        coins = old.coins.len(),
        best_height = old.best_height,
        "moving the previous wallet's record to the BDK wallet"
    );
    for (keychain, chain_no, next) in [
        (KeychainKind::External, 0, old.next_external),
        (KeychainKind::Internal, 1, old.next_internal),
    ] {
        let used = old
            .coins
            .iter()
            .filter(|c| c.chain == chain_no)
            .map(|c| c.index + 1)
            .chain([next])
            .max()
            .unwrap_or(0);
        if let Some(last) = used.checked_sub(1) {
            let _ = w.reveal_addresses_to(keychain, last).count();
        }
    }
    let (_, tip) = chain.tip().await.map_err(WalletError::Chain)?;
    let heights: BTreeSet<u32> = old
        .coins
        .iter()
        .flat_map(|c| [Some(c.height), c.spent_at])
        .flatten()
        .chain([old.best_height])
        .filter(|h| *h > 0 && *h <= tip)
        .collect();
    for h in &heights {
        let hash = chain.hash_at(*h).await.map_err(WalletError::Chain)?;
        let block = chain.block(&hash).await.map_err(WalletError::Chain)?;
        let below = w.latest_checkpoint().block_id();
        w.apply_block_connected_to(&block, *h, below)
            .map_err(|e| WalletError::Chain(format!("block {h} does not connect: {e}")))?;
    }
    if old.best_height > tip {
        tracing::warn!(
            old = old.best_height,
            tip,
            "the chain is shorter than the previous wallet's last block; following the chain"
        );
    } else if let Some(best) = &old.best_hash {
        let now = chain
            .hash_at(old.best_height)
            .await
            .map_err(WalletError::Chain)?;
        if now.to_string() != *best {
            tracing::warn!(
                height = old.best_height,
                "the previous wallet's last block is no longer on the best chain; following the chain"
            );
        }
    }
    let unspent: Vec<_> = w.list_unspent().collect();
    for c in old.coins.iter().filter(|c| c.spent_at.is_none()) {
        match unspent
            .iter()
            .find(|u| u.outpoint.to_string() == c.outpoint)
        {
            Some(u) if u.txout.value.to_sat() == c.value_sat => {}
            Some(u) => tracing::warn!(
                outpoint = c.outpoint,
                old = c.value_sat,
                now = u.txout.value.to_sat(),
                "a migrated coin's amount differs; the chain's is kept"
            ),
            None => tracing::warn!(
                outpoint = c.outpoint,
                "a coin of the previous wallet is not unspent on the best chain"
            ),
        }
    }
    Ok(true)
}
