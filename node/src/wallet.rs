//! The node's on-chain wallet: watch-only. It knows the signer's account
//! xpub (BIP 84, `wpkh`), follows the same blocks as LDK, keeps its coins in
//! the node's store, builds spends as PSBTs, and has the signer sign them.
//! The node never holds a wallet private key.
//!
//! Written here rather than with BDK: the wallet only needs wpkh coins found
//! in blocks the node already fetches, and BDK would bring a second chain
//! client and database for it.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{
    absolute::LockTime, transaction::Version, Address, Amount, BlockHash, CompressedPublicKey,
    Network, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BestBlock, Listen};
use lightning::util::persist::KVStoreSync;
use serde::{Deserialize, Serialize};

use crate::store::SqliteStore;

/// Coinbase outputs spendable after this many confirmations.
const COINBASE_MATURITY: u32 = 100;
/// Addresses watched beyond the last one handed out.
const LOOKAHEAD: u32 = 100;
const STORE_NS: &str = "wallet";
const STORE_KEY: &str = "state";

/// Why a wallet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The descriptor from the signer is not one this wallet understands.
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
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
    /// Store error.
    #[error("wallet store: {0}")]
    Store(String),
}

/// A coin of the wallet.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Coin {
    /// `txid:vout`.
    outpoint: String,
    value_sat: u64,
    chain: u32,
    index: u32,
    height: u32,
    coinbase: bool,
    /// The whole previous transaction (hex): the signer needs it to trust the amount.
    prev_tx: String,
    /// Height at which it was spent, if it was.
    spent_at: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    next_external: u32,
    next_internal: u32,
    coins: Vec<Coin>,
    best_height: u32,
    best_hash: Option<String>,
}

/// Balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Confirmed and mature.
    pub spendable_sat: u64,
    /// Immature coinbase.
    pub immature_sat: u64,
}

/// The watch-only wallet.
pub struct Wallet {
    secp: Secp256k1<All>,
    network: Network,
    account: Xpub,
    fingerprint: Fingerprint,
    coin_type: u32,
    scripts: Mutex<BTreeMap<ScriptBuf, (u32, u32)>>,
    state: Mutex<State>,
    store: std::sync::Arc<SqliteStore>,
    /// Coins put in a transaction not yet seen in a block (`txid:vout`), so
    /// two spends built close together never pick the same coin.
    reserved: Mutex<HashSet<String>>,
}

/// Parses `wpkh([fingerprint/84h/coin'h/0h]xpub/0/*)#checksum`.
fn parse_descriptor(desc: &str) -> Result<(Fingerprint, u32, Xpub), WalletError> {
    let bad = || WalletError::Descriptor(format!("unexpected form {desc:?}"));
    let inner = desc.strip_prefix("wpkh([").ok_or_else(bad)?;
    let (origin, rest) = inner.split_once(']').ok_or_else(bad)?;
    let mut parts = origin.split('/');
    let fp = Fingerprint::from_str(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let coin: u32 = parts
        .nth(1)
        .and_then(|c| c.trim_end_matches(['h', '\'']).parse().ok())
        .ok_or_else(bad)?;
    let xpub = Xpub::from_str(rest.split('/').next().ok_or_else(bad)?).map_err(|_| bad())?;
    Ok((fp, coin, xpub))
}

impl Wallet {
    /// A wallet for the signer's external descriptor, with its saved state.
    pub fn new(
        external_descriptor: &str,
        network: Network,
        store: std::sync::Arc<SqliteStore>,
    ) -> Result<Self, WalletError> {
        let (fingerprint, coin_type, account) = parse_descriptor(external_descriptor)?;
        let state: State = match store.read(STORE_NS, "", STORE_KEY) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| WalletError::Store(e.to_string()))?
            }
            Err(_) => State::default(),
        };
        let w = Wallet {
            secp: Secp256k1::new(),
            network,
            account,
            fingerprint,
            coin_type,
            scripts: Mutex::new(BTreeMap::new()),
            state: Mutex::new(state),
            store,
            reserved: Mutex::new(HashSet::new()),
        };
        let (ext, int) = w
            .state
            .lock()
            .map(|s| (s.next_external, s.next_internal))
            .map_err(|_| WalletError::Store("lock".into()))?;
        w.watch(0, ext + LOOKAHEAD)?;
        w.watch(1, int + LOOKAHEAD)?;
        Ok(w)
    }

    fn key(&self, chain: u32, index: u32) -> Result<CompressedPublicKey, WalletError> {
        let path = [
            ChildNumber::from_normal_idx(chain),
            ChildNumber::from_normal_idx(index),
        ];
        let path: Vec<ChildNumber> = path
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| WalletError::Invalid(e.to_string()))?;
        let x = self
            .account
            .derive_pub(&self.secp, &path)
            .map_err(|e| WalletError::Invalid(e.to_string()))?;
        Ok(CompressedPublicKey(x.public_key))
    }

    fn watch(&self, chain: u32, through: u32) -> Result<(), WalletError> {
        let mut scripts = self
            .scripts
            .lock()
            .map_err(|_| WalletError::Store("lock".into()))?;
        let have = scripts.values().filter(|(c, _)| *c == chain).count() as u32;
        for i in have..through {
            scripts.insert(
                ScriptBuf::new_p2wpkh(&self.key(chain, i)?.wpubkey_hash()),
                (chain, i),
            );
        }
        Ok(())
    }

    fn save(&self, state: &State) {
        match serde_json::to_vec(state) {
            Ok(bytes) => {
                if let Err(e) = self.store.write(STORE_NS, "", STORE_KEY, bytes) {
                    tracing::error!("cannot save the wallet: {e}");
                }
            }
            Err(e) => tracing::error!("cannot encode the wallet: {e}"),
        }
    }

    /// The block the wallet has seen last (to sync it on start).
    pub fn best_block_hash(&self) -> Option<BlockHash> {
        self.state.lock().ok()?.best_hash.as_ref()?.parse().ok()
    }

    /// A new receive address.
    pub fn new_address(&self) -> Result<Address, WalletError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| WalletError::Store("lock".into()))?;
        let i = st.next_external;
        st.next_external += 1;
        self.save(&st);
        drop(st);
        self.watch(0, i + 1 + LOOKAHEAD)?;
        Ok(Address::p2wpkh(&self.key(0, i)?, self.network))
    }

    /// Balances at the current height.
    pub fn balance(&self) -> Balance {
        let Ok(st) = self.state.lock() else {
            return Balance::default();
        };
        let mut b = Balance::default();
        for c in st.coins.iter().filter(|c| c.spent_at.is_none()) {
            if c.coinbase && st.best_height + 1 < c.height + COINBASE_MATURITY {
                b.immature_sat += c.value_sat;
            } else {
                b.spendable_sat += c.value_sat;
            }
        }
        b
    }

    /// Builds a PSBT paying `amount` (or everything with `all`) to `script`
    /// at `feerate_sat_per_vb`, change to a new internal address. Returns the
    /// PSBT for the signer.
    pub fn build_spend(
        &self,
        script: ScriptBuf,
        amount_sat: u64,
        all: bool,
        feerate_sat_per_vb: u64,
    ) -> Result<Psbt, WalletError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| WalletError::Store("lock".into()))?;
        let mut coins = self.available_coins(&st);
        coins.sort_by_key(|c| std::cmp::Reverse(c.value_sat));
        let available: u64 = coins.iter().map(|c| c.value_sat).sum();
        // Weights: 11 vB overhead, 68 vB per wpkh input, 31 vB per wpkh/34 per wsh output.
        let fee_for = |inputs: usize, outputs: usize| {
            feerate_sat_per_vb * (11 + 68 * inputs as u64 + 34 * outputs as u64)
        };
        let mut chosen = Vec::new();
        let mut total = 0u64;
        for c in coins {
            if !all && total >= amount_sat + fee_for(chosen.len(), 2) {
                break;
            }
            total += c.value_sat;
            chosen.push(c);
        }
        let (send, change) = if all {
            let fee = fee_for(chosen.len(), 1);
            (
                total
                    .checked_sub(fee)
                    .filter(|v| *v > 546)
                    .ok_or(WalletError::Insufficient {
                        available,
                        needed: fee + 547,
                    })?,
                0,
            )
        } else {
            let fee = fee_for(chosen.len(), 2);
            let change = total
                .checked_sub(amount_sat + fee)
                .ok_or(WalletError::Insufficient {
                    available,
                    needed: amount_sat + fee,
                })?;
            (amount_sat, change)
        };
        let mut outputs = vec![TxOut {
            value: Amount::from_sat(send),
            script_pubkey: script,
        }];
        if change > 546 {
            let i = st.next_internal;
            st.next_internal += 1;
            self.save(&st);
            outputs.push(TxOut {
                value: Amount::from_sat(change),
                script_pubkey: ScriptBuf::new_p2wpkh(&self.key(1, i)?.wpubkey_hash()),
            });
        }
        drop(st);
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: chosen
                .iter()
                .map(|c| {
                    Ok(TxIn {
                        previous_output: c
                            .outpoint
                            .parse()
                            .map_err(|_| WalletError::Store("bad outpoint".into()))?,
                        script_sig: ScriptBuf::new(),
                        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                        witness: Witness::new(),
                    })
                })
                .collect::<Result<_, WalletError>>()?,
            output: outputs,
        };
        let mut psbt =
            Psbt::from_unsigned_tx(tx).map_err(|e| WalletError::Invalid(e.to_string()))?;
        for (input, c) in psbt.inputs.iter_mut().zip(&chosen) {
            self.describe_input(input, c)?;
        }
        if let Ok(mut r) = self.reserved.lock() {
            r.extend(chosen.iter().map(|c| c.outpoint.clone()));
        }
        Ok(psbt)
    }

    /// Confirmed, mature, unspent and unreserved coins.
    fn available_coins(&self, st: &State) -> Vec<Coin> {
        let reserved = self.reserved.lock().map(|r| r.clone()).unwrap_or_default();
        st.coins
            .iter()
            .filter(|c| {
                c.spent_at.is_none()
                    && !(c.coinbase && st.best_height + 1 < c.height + COINBASE_MATURITY)
                    && !reserved.contains(&c.outpoint)
            })
            .cloned()
            .collect()
    }

    /// Adds what the signer needs to sign for `coin` (previous transaction,
    /// BIP 32 origin) to a PSBT input.
    fn describe_input(
        &self,
        input: &mut bitcoin::psbt::Input,
        c: &Coin,
    ) -> Result<(), WalletError> {
        let prev: Transaction = bitcoin::consensus::encode::deserialize_hex(&c.prev_tx)
            .map_err(|e| WalletError::Store(e.to_string()))?;
        let vout = c
            .outpoint
            .rsplit(':')
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        input.witness_utxo = prev.output.get(vout).cloned();
        input.non_witness_utxo = Some(prev);
        let key = self.key(c.chain, c.index)?;
        let path = DerivationPath::from_str(&format!(
            "m/84'/{}'/0'/{}/{}",
            self.coin_type, c.chain, c.index
        ))
        .map_err(|e| WalletError::Invalid(e.to_string()))?;
        input
            .bip32_derivation
            .insert(key.0, (self.fingerprint, path));
        Ok(())
    }

    /// Gives back the coins of a spend that will not be broadcast.
    pub fn release(&self, psbt: &Psbt) {
        if let Ok(mut r) = self.reserved.lock() {
            for i in &psbt.unsigned_tx.input {
                r.remove(&i.previous_output.to_string());
            }
        }
    }

    /// Spendable coins as (outpoint, output), for fee bumping.
    pub fn spendable_outputs(&self) -> Vec<(OutPoint, TxOut, CompressedPublicKey)> {
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        self.available_coins(&st)
            .iter()
            .filter_map(|c| {
                let prev: Transaction =
                    bitcoin::consensus::encode::deserialize_hex(&c.prev_tx).ok()?;
                let op: OutPoint = c.outpoint.parse().ok()?;
                let out = prev.output.get(op.vout as usize)?.clone();
                Some((op, out, self.key(c.chain, c.index).ok()?))
            })
            .collect()
    }

    /// The transaction that created one of the wallet's coins (spent or
    /// not), for the signer's proof of its amount.
    pub fn previous_tx(&self, txid: &bitcoin::Txid) -> Option<Transaction> {
        let st = self.state.lock().ok()?;
        let prefix = format!("{txid}:");
        let coin = st.coins.iter().find(|c| c.outpoint.starts_with(&prefix))?;
        bitcoin::consensus::encode::deserialize_hex(&coin.prev_tx).ok()
    }

    /// A fresh change script (internal chain).
    pub fn new_change_script(&self) -> Result<ScriptBuf, WalletError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| WalletError::Store("lock".into()))?;
        let i = st.next_internal;
        st.next_internal += 1;
        self.save(&st);
        drop(st);
        self.watch(1, i + 1 + LOOKAHEAD)?;
        Ok(ScriptBuf::new_p2wpkh(&self.key(1, i)?.wpubkey_hash()))
    }

    /// Describes the inputs of a PSBT built elsewhere (LDK's fee bumping)
    /// that spend this wallet's coins; returns how many it found.
    pub fn describe_own_inputs(&self, psbt: &mut Psbt) -> Result<usize, WalletError> {
        let st = self
            .state
            .lock()
            .map_err(|_| WalletError::Store("lock".into()))?;
        let mut found = 0;
        for (txin, input) in psbt.unsigned_tx.input.iter().zip(psbt.inputs.iter_mut()) {
            let op = txin.previous_output.to_string();
            if let Some(c) = st.coins.iter().find(|c| c.outpoint == op) {
                self.describe_input(input, c)?;
                found += 1;
            }
        }
        Ok(found)
    }

    /// Puts the signer's signatures into witnesses and extracts the transaction.
    pub fn finalize(&self, psbt: Psbt) -> Result<Transaction, WalletError> {
        let psbt = Self::finalize_inputs(psbt, false)?;
        psbt.extract_tx()
            .map_err(|e| WalletError::Invalid(e.to_string()))
    }

    /// Like [`Wallet::finalize`] for a transaction with inputs of others
    /// (left unsigned, for their owner to complete): only the wallet's own
    /// inputs must carry a signature.
    pub fn finalize_own(&self, psbt: Psbt) -> Result<Transaction, WalletError> {
        Ok(Self::finalize_inputs(psbt, true)?.extract_tx_unchecked_fee_rate())
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
}

impl Listen for Wallet {
    fn filtered_block_connected(
        &self,
        header: &bitcoin::block::Header,
        txdata: &TransactionData,
        height: u32,
    ) {
        let Ok(scripts) = self.scripts.lock() else {
            return;
        };
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut changed = false;
        let mut highest = [0u32; 2];
        for (_, tx) in txdata {
            for input in &tx.input {
                let op = input.previous_output.to_string();
                if let Some(c) = st
                    .coins
                    .iter_mut()
                    .find(|c| c.outpoint == op && c.spent_at.is_none())
                {
                    c.spent_at = Some(height);
                    changed = true;
                    if let Ok(mut r) = self.reserved.lock() {
                        r.remove(&op);
                    }
                }
            }
            for (vout, out) in tx.output.iter().enumerate() {
                if let Some((chain, index)) = scripts.get(&out.script_pubkey) {
                    let op = OutPoint {
                        txid: tx.compute_txid(),
                        vout: vout as u32,
                    }
                    .to_string();
                    if st.coins.iter().any(|c| c.outpoint == op) {
                        continue;
                    }
                    // The signer hands out addresses too (close and sweep
                    // destinations): keep watching beyond the highest one used.
                    if let Some(h) = highest.get_mut(*chain as usize) {
                        *h = (*h).max(*index + 1);
                    }
                    st.coins.push(Coin {
                        outpoint: op,
                        value_sat: out.value.to_sat(),
                        chain: *chain,
                        index: *index,
                        height,
                        coinbase: tx.is_coinbase(),
                        prev_tx: bitcoin::consensus::encode::serialize_hex(*tx),
                        spent_at: None,
                    });
                    changed = true;
                }
            }
        }
        st.best_height = height;
        st.best_hash = Some(header.block_hash().to_string());
        if changed || height.is_multiple_of(10) {
            self.save(&st);
        }
        drop(st);
        drop(scripts);
        for (chain, used) in highest.into_iter().enumerate() {
            if used > 0 {
                if let Err(e) = self.watch(chain as u32, used + LOOKAHEAD) {
                    tracing::warn!("wallet lookahead: {e}");
                }
            }
        }
    }

    fn blocks_disconnected(&self, fork_point: BestBlock) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.coins.retain(|c| c.height <= fork_point.height);
        for c in st.coins.iter_mut() {
            if c.spent_at.is_some_and(|h| h > fork_point.height) {
                c.spent_at = None;
            }
        }
        st.best_height = fork_point.height;
        st.best_hash = Some(fork_point.block_hash.to_string());
        self.save(&st);
    }
}
