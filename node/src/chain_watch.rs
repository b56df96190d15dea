//! The transactions of the node's channels, as blocks bring them, for the
//! signer's proofs: it takes no amount on trust, so a sweep, a justice or a
//! fee-bump request carries the transactions its inputs spend, and a
//! channel's funding is proven to it by a merkle block once confirmed.
//!
//! Kept: each channel's funding transaction, and every transaction that
//! spends an output of a kept one (commitments, closes, HTLC transactions,
//! their sweeps), in the node's store. Wallet coins' transactions come from
//! the wallet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bitcoin::hashes::Hash;
use bitcoin::{Block, Transaction, Txid};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BestBlock, Listen};
use lightning::util::persist::KVStoreSync;
use lnpd_proto::signer as pb;
use prost::Message;

use crate::store::SqliteStore;
use crate::wallet::Wallet;

const NS: &str = "chain_watch";
const TXS: &str = "txs";
const FUNDING_KEY: &str = "funding";
const PROOFS_KEY: &str = "proofs";

/// Looks up transactions the node kept, for the signer's proofs.
pub trait TxSource: Send + Sync {
    /// The transaction with this txid, if kept.
    fn transaction(&self, txid: &Txid) -> Option<Transaction>;
    /// Follows a channel's funding transaction (from its set-up on).
    fn watch_funding(&self, txid: Txid, channel_keys_id: [u8; 32]);
}

/// Keeps the channels' transactions and the funding proofs to deliver.
pub struct ChainWatch {
    store: Arc<SqliteStore>,
    known: Mutex<HashMap<Txid, Transaction>>,
    funding: Mutex<HashMap<Txid, [u8; 32]>>,
    proofs: Mutex<Vec<pb::ProveFundingRequest>>,
    wallet: OnceLock<Arc<Wallet>>,
}

impl ChainWatch {
    /// Loads what the store holds.
    pub fn open(store: Arc<SqliteStore>) -> Self {
        let mut known = HashMap::new();
        if let Ok(keys) = store.list(NS, TXS) {
            for key in keys {
                let tx = store
                    .read(NS, TXS, &key)
                    .ok()
                    .and_then(|b| bitcoin::consensus::deserialize::<Transaction>(&b).ok());
                if let Some(tx) = tx {
                    known.insert(tx.compute_txid(), tx);
                }
            }
        }
        let funding = store
            .read(NS, "", FUNDING_KEY)
            .ok()
            .map(|b| {
                b.chunks_exact(64)
                    .filter_map(|c| {
                        let txid = Txid::from_slice(&c[..32]).ok()?;
                        let id: [u8; 32] = c[32..].try_into().ok()?;
                        Some((txid, id))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let proofs = store
            .read(NS, "", PROOFS_KEY)
            .ok()
            .and_then(|b| pb::BatchRequest::decode(&b[..]).ok())
            .map(|b| {
                b.requests
                    .into_iter()
                    .filter_map(|r| match r.body {
                        Some(pb::request::Body::ProveFunding(p)) => Some(p),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ChainWatch {
            store,
            known: Mutex::new(known),
            funding: Mutex::new(funding),
            proofs: Mutex::new(proofs),
            wallet: OnceLock::new(),
        }
    }

    /// Lets lookups fall back on the wallet's coins.
    pub fn set_wallet(&self, wallet: Arc<Wallet>) {
        let _ = self.wallet.set(wallet);
    }

    fn keep(&self, tx: &Transaction) {
        let txid = tx.compute_txid();
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if known.contains_key(&txid) {
            return;
        }
        if let Err(e) = self.store.write(
            NS,
            TXS,
            &txid.to_string(),
            bitcoin::consensus::serialize(tx),
        ) {
            tracing::error!(%txid, "cannot keep a channel transaction: {e}");
        }
        known.insert(txid, tx.clone());
    }

    fn save_proofs(&self, proofs: &[pb::ProveFundingRequest]) {
        let batch = pb::BatchRequest {
            requests: proofs
                .iter()
                .map(|p| pb::Request {
                    id: 0,
                    body: Some(pb::request::Body::ProveFunding(p.clone())),
                })
                .collect(),
        };
        if let Err(e) = self.store.write(NS, "", PROOFS_KEY, batch.encode_to_vec()) {
            tracing::error!("cannot keep the funding proofs to deliver: {e}");
        }
    }

    /// Whether `txid` funds a channel this node has had (closed ones too).
    pub fn is_funding(&self, txid: &Txid) -> bool {
        self.funding.lock().is_ok_and(|f| f.contains_key(txid))
    }

    /// Funding proofs waiting for the signer (oldest first).
    pub fn pending_proofs(&self) -> Vec<pb::ProveFundingRequest> {
        self.proofs.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// A proof the signer took, or can never take: no longer delivered.
    pub fn proof_done(&self, proof: &pb::ProveFundingRequest) {
        if let Ok(mut p) = self.proofs.lock() {
            p.retain(|x| x != proof);
            self.save_proofs(&p);
        }
    }
}

impl TxSource for ChainWatch {
    fn transaction(&self, txid: &Txid) -> Option<Transaction> {
        if let Some(tx) = self.known.lock().ok()?.get(txid) {
            return Some(tx.clone());
        }
        self.wallet.get()?.previous_tx(txid)
    }

    fn watch_funding(&self, txid: Txid, channel_keys_id: [u8; 32]) {
        let Ok(mut funding) = self.funding.lock() else {
            return;
        };
        if funding.insert(txid, channel_keys_id) == Some(channel_keys_id) {
            return;
        }
        let bytes: Vec<u8> = funding
            .iter()
            .flat_map(|(t, id)| t.to_byte_array().into_iter().chain(*id))
            .collect();
        if let Err(e) = self.store.write(NS, "", FUNDING_KEY, bytes) {
            tracing::error!("cannot keep the channels' funding txids: {e}");
        }
    }
}

impl Listen for ChainWatch {
    fn filtered_block_connected(
        &self,
        _header: &bitcoin::block::Header,
        txdata: &TransactionData,
        _height: u32,
    ) {
        // Without the whole block there is no merkle proof; follow the
        // channels' transactions all the same.
        for (_, tx) in txdata {
            self.follow(tx);
        }
    }

    fn block_connected(&self, block: &Block, height: u32) {
        let funding = self.funding.lock().map(|f| f.clone()).unwrap_or_default();
        let txids: Vec<Txid> = block.txdata.iter().map(|t| t.compute_txid()).collect();
        let mut new_proofs = Vec::new();
        for (tx, txid) in block.txdata.iter().zip(&txids) {
            if let Some(id) = funding.get(txid) {
                let proof = bitcoin::MerkleBlock::from_header_txids_with_predicate(
                    &block.header,
                    &txids,
                    |t| t == txid,
                );
                new_proofs.push(pb::ProveFundingRequest {
                    channel_keys_id: id.to_vec(),
                    funding_transaction: bitcoin::consensus::serialize(tx),
                    merkle_block: bitcoin::consensus::serialize(&proof),
                    later_headers: Vec::new(),
                });
                tracing::info!(%txid, height, "channel funding confirmed; proving it to the signer");
                self.keep(tx);
            }
            self.follow(tx);
        }
        if !new_proofs.is_empty() {
            if let Ok(mut p) = self.proofs.lock() {
                p.extend(new_proofs);
                self.save_proofs(&p);
            }
        }
    }

    fn blocks_disconnected(&self, _fork_point: BestBlock) {
        // Kept transactions stay: a reorganised one may come back, and a
        // lookup by txid is right whichever block holds it.
    }
}

impl ChainWatch {
    /// Keeps `tx` if it spends a kept transaction or funds a channel.
    fn follow(&self, tx: &Transaction) {
        let spends_kept = self.known.lock().is_ok_and(|k| {
            tx.input
                .iter()
                .any(|i| k.contains_key(&i.previous_output.txid))
        });
        let funds = self
            .funding
            .lock()
            .is_ok_and(|f| f.contains_key(&tx.compute_txid()));
        if spends_kept || funds {
            self.keep(tx);
        }
    }
}
