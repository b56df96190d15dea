//! Blocks into the wallet (the same blocks LDK sees), and the wallet's
//! unconfirmed transactions kept in the backend's mempool.
//!
//! Reorganisations: BDK keeps a checkpoint per block. When the node's
//! chain source switches branch it disconnects to the fork and connects
//! the new blocks; the first new block names the fork as its parent, which
//! makes BDK drop the stale checkpoints above it. Transactions anchored
//! only in stale blocks fall back to unconfirmed (coinbases out of the
//! wallet) until a block of the new branch holds them; the node sends them
//! again if the backend's mempool lost them, and forgets one that stays
//! out of it with an input spent elsewhere (double-spent on the new
//! branch) for [`FORGET_AFTER_TIPS`] tips, so its other coins are the
//! wallet's again.

use std::collections::HashSet;

use bdk_wallet::chain::{BlockId, ChainPosition, Merge};
use bitcoin::{Block, Transaction, Txid};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BestBlock, Listen};

use super::Wallet;
use crate::node::now_secs;

/// Blocks connected without a wallet change between two writes of the
/// chain's checkpoints (a restart re-reads at most these).
const SAVE_EVERY_BLOCKS: u32 = 10;
/// New tips at which an unconfirmed wallet transaction may be missing from
/// the backend's mempool with an input spent elsewhere before the wallet
/// forgets it and its coins are spendable again.
pub const FORGET_AFTER_TIPS: u32 = 6;

impl Wallet {
    /// Connects a block at `height` on top of its parent.
    pub fn connect_block(&self, block: &Block, height: u32) {
        let Ok(mut w) = self.inner() else { return };
        let connected_to = match height.checked_sub(1) {
            Some(h) => BlockId {
                height: h,
                hash: block.header.prev_blockhash,
            },
            None => BlockId {
                height,
                hash: block.block_hash(),
            },
        };
        // A block at or below the tip replaces stale ones: written at once,
        // so a restart never starts from a block no longer on the chain.
        let reorg = height <= w.latest_checkpoint().height();
        if let Err(e) = w.apply_block_connected_to(block, height, connected_to) {
            tracing::error!(height, hash = %block.block_hash(), "wallet: block does not connect: {e}");
            return;
        }
        let worth_saving = reorg
            || w.staged().is_some_and(|s| {
                !s.tx_graph.is_empty() || !s.indexer.is_empty() || !s.locked_outpoints.is_empty()
            });
        let due = self.unsaved_blocks.lock().map_or(true, |mut n| {
            *n += 1;
            *n >= SAVE_EVERY_BLOCKS
        });
        if worth_saving || due {
            if let Err(e) = self.commit(&mut w, &[]) {
                tracing::error!("wallet: cannot write block {height}: {e}");
            }
        }
    }

    /// The wallet's unconfirmed transactions on its best chain (its spends,
    /// receives, and those of a stale block BDK keeps as unconfirmed),
    /// oldest first so parents precede children.
    pub fn unconfirmed_txs(&self) -> Vec<Transaction> {
        let Ok(w) = self.inner() else {
            return Vec::new();
        };
        let mut list: Vec<(u64, Transaction)> = w
            .transactions()
            .filter_map(|t| match t.chain_position {
                ChainPosition::Unconfirmed { first_seen, .. } => {
                    Some((first_seen.unwrap_or(0), (*t.tx_node.tx).clone()))
                }
                ChainPosition::Confirmed { .. } => None,
            })
            .collect();
        list.sort_by_key(|(seen, _)| *seen);
        list.into_iter().map(|(_, t)| t).collect()
    }

    /// After a new tip: `conflicted` were missing from the backend's
    /// mempool with an input the backend shows spent elsewhere or gone.
    /// One so for [`FORGET_AFTER_TIPS`] tips in a row is forgotten (BDK's
    /// eviction): its other coins come back to the wallet. One missing with
    /// every input still unspent is never forgotten (it stays valid, and is
    /// sent again). Also ends LDK bump claims never broadcast. Returns the
    /// forgotten ones.
    pub fn note_missing(&self, conflicted: &HashSet<Txid>) -> Vec<Txid> {
        self.expire_bump_claims();
        let mut forget = Vec::new();
        if let Ok(mut m) = self.missing.lock() {
            m.retain(|t, _| conflicted.contains(t));
            for t in conflicted {
                let n = m.entry(*t).or_insert(0);
                *n += 1;
                if *n >= FORGET_AFTER_TIPS {
                    forget.push(*t);
                }
            }
            for t in &forget {
                m.remove(t);
            }
        }
        if !forget.is_empty() {
            if let Ok(mut w) = self.inner() {
                let now = now_secs();
                w.apply_evicted_txs(forget.iter().map(|t| (*t, now)));
                if let Err(e) = self.commit(&mut w, &[]) {
                    tracing::error!("wallet: cannot write forgotten transactions: {e}");
                }
            }
        }
        forget
    }
}

impl Listen for Wallet {
    fn filtered_block_connected(
        &self,
        header: &bitcoin::block::Header,
        txdata: &TransactionData,
        height: u32,
    ) {
        let block = Block {
            header: *header,
            txdata: txdata.iter().map(|(_, t)| (*t).clone()).collect(),
        };
        self.connect_block(&block, height);
    }

    fn block_connected(&self, block: &Block, height: u32) {
        self.connect_block(block, height);
    }

    fn blocks_disconnected(&self, fork_point: BestBlock) {
        // Nothing to undo yet: the next block connected names the fork as
        // its parent, and BDK drops the stale checkpoints then.
        tracing::info!(
            height = fork_point.height,
            hash = %fork_point.block_hash,
            "wallet: chain reorganised; stale blocks are dropped with the next block"
        );
    }
}
