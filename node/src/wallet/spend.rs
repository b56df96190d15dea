//! Spends: BDK's coin selection (branch and bound, then a fallback), RBF
//! signalled, change only above dust, confirmed coins only. One owner per
//! coin: a coin put in a spend is locked in BDK until the spend is
//! broadcast (then the transaction graph knows it spent) or given up; a
//! channel's funding coins stay locked across restarts with the funding
//! PSBT, under the channel's user id, until the funding is broadcast or the
//! channel closes. LDK's fee bumping takes its coins from the same wallet.

use std::collections::HashSet;

use bdk_wallet::error::CreateTxError;
use bdk_wallet::KeychainKind;
use bitcoin::hashes::Hash;
use bitcoin::{Amount, FeeRate, OutPoint, Psbt, ScriptBuf, Transaction, TxOut, Txid, WPubkeyHash};
use lightning::util::persist::KVStoreSync;

use super::{Wallet, WalletError, FUNDING_NS};
use crate::node::now_secs;

/// How much a spend pays its recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendAmount {
    /// This amount; change (above dust) back to the wallet.
    Exact(Amount),
    /// Every confirmed, free coin, less the fee.
    All,
}

/// Coinbase outputs are spendable after this many confirmations.
const COINBASE_MATURITY: u32 = 100;
/// How far past the wallet's look-ahead a change script is looked for.
const MAX_SCRIPT_SEARCH: u32 = 20_000;

fn funding_key(owner: u128) -> String {
    format!("{owner:032x}")
}

/// The key-value change that drops the channel `owner`'s funding record.
fn funding_removal(owner: Option<u128>) -> Vec<(&'static str, String, Option<Vec<u8>>)> {
    owner
        .map(|o| (FUNDING_NS, funding_key(o), None))
        .into_iter()
        .collect()
}

fn create_error(e: CreateTxError) -> WalletError {
    match e {
        CreateTxError::CoinSelection(i) => WalletError::Insufficient {
            available: i.available.to_sat(),
            needed: i.needed.to_sat(),
        },
        CreateTxError::NoRecipients | CreateTxError::NoUtxosSelected => WalletError::Insufficient {
            available: 0,
            needed: 1,
        },
        other => WalletError::Invalid(other.to_string()),
    }
}

impl Wallet {
    /// Builds a PSBT paying `amount` to `to` at `fee_rate` from confirmed
    /// coins, change to `change` (a script the signer handed out, so no
    /// script is given twice), and locks its inputs until
    /// [`Wallet::note_broadcast`] or [`Wallet::release`].
    pub fn build_spend(
        &self,
        to: ScriptBuf,
        amount: SpendAmount,
        fee_rate: FeeRate,
        change: ScriptBuf,
    ) -> Result<Psbt, WalletError> {
        let mut w = self.inner()?;
        build_locked(&mut w, to, amount, fee_rate, change)
    }

    /// Builds a channel's funding transaction and reserves its coins for
    /// the channel `owner` (its user channel id): locks and the PSBT are
    /// written together, so a restart keeps both until the funding is
    /// broadcast ([`Wallet::note_broadcast`]) or the channel goes away.
    pub fn build_funding(
        &self,
        owner: u128,
        to: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
        change: ScriptBuf,
    ) -> Result<Psbt, WalletError> {
        let mut w = self.inner()?;
        let psbt = build_locked(&mut w, to, SpendAmount::Exact(amount), fee_rate, change)?;
        let record = (FUNDING_NS, funding_key(owner), Some(psbt.serialize()));
        if let Err(e) = self.commit(&mut w, &[record]) {
            for i in &psbt.unsigned_tx.input {
                w.unlock_outpoint(i.previous_output);
            }
            return Err(e);
        }
        Ok(psbt)
    }

    /// The funding PSBT kept for the channel `owner`, if any.
    pub fn funding_psbt(&self, owner: u128) -> Option<Psbt> {
        let bytes = self.store.read(FUNDING_NS, "", &funding_key(owner)).ok()?;
        Psbt::deserialize(&bytes).ok()
    }

    /// The funding records: key, and the PSBT when it reads.
    fn funding_records(&self) -> Result<Vec<(String, Option<Psbt>)>, WalletError> {
        let keys = self
            .store
            .list(FUNDING_NS, "")
            .map_err(|e| WalletError::Store(e.to_string()))?;
        Ok(keys
            .into_iter()
            .map(|k| {
                let psbt = self
                    .store
                    .read(FUNDING_NS, "", &k)
                    .ok()
                    .and_then(|b| Psbt::deserialize(&b).ok());
                (k, psbt)
            })
            .collect())
    }

    /// Txids of the funding transactions kept for channels.
    fn funding_txids(&self) -> HashSet<Txid> {
        self.funding_records()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, p)| p.map(|p| p.unsigned_tx.compute_txid()))
            .collect()
    }

    /// Gives back the coins of a spend that will not be broadcast (and
    /// drops the channel `owner`'s record).
    pub fn release(&self, psbt: &Psbt, owner: Option<u128>) {
        let Ok(mut w) = self.inner() else { return };
        for i in &psbt.unsigned_tx.input {
            w.unlock_outpoint(i.previous_output);
        }
        if let Err(e) = self.commit(&mut w, &funding_removal(owner)) {
            tracing::error!("wallet: cannot write the released coins: {e}");
        }
    }

    /// Records transactions just broadcast (the wallet's, or LDK's closes,
    /// sweeps and bumps): those that pay or spend the wallet enter its
    /// graph as unconfirmed, so their coins are spent and their change
    /// pending; their inputs' locks are dropped (the graph now guards the
    /// coins) with the channel `owner`'s funding record.
    pub fn note_broadcast(&self, txs: &[&Transaction], owner: Option<u128>) {
        let Ok(mut w) = self.inner() else { return };
        let now = now_secs();
        w.apply_unconfirmed_txs(txs.iter().map(|t| ((*t).clone(), now)));
        for tx in txs {
            for i in &tx.input {
                w.unlock_outpoint(i.previous_output);
            }
        }
        if let Err(e) = self.commit(&mut w, &funding_removal(owner)) {
            tracing::error!("wallet: cannot write a broadcast transaction: {e}");
        }
    }

    /// Builds a replacement of the wallet's unconfirmed transaction `txid`
    /// paying `fee_rate` (BIP 125: at least the old rate plus 1 sat/vB; the
    /// change, now to `change`, pays the difference, or more coins are
    /// added; its inputs are locked until [`Wallet::note_replacement`] or
    /// [`Wallet::release`]). A channel's funding transaction is refused
    /// (`is_channel_funding`, or one the wallet keeps for a channel): the
    /// channel is bound to its txid.
    pub fn bump_fee(
        &self,
        txid: Txid,
        fee_rate: FeeRate,
        is_channel_funding: bool,
        change: ScriptBuf,
    ) -> Result<Psbt, WalletError> {
        if is_channel_funding || self.funding_txids().contains(&txid) {
            return Err(WalletError::Invalid(format!(
                "{txid} funds a channel: its txid is the channel's, so it cannot be replaced"
            )));
        }
        let mut w = self.inner()?;
        let mut b = w
            .build_fee_bump(txid)
            .map_err(|e| WalletError::Invalid(format!("cannot replace {txid}: {e}")))?;
        b.fee_rate(fee_rate).drain_to(change);
        let psbt = b.finish().map_err(create_error)?;
        for i in &psbt.unsigned_tx.input {
            w.lock_outpoint(i.previous_output);
        }
        Ok(psbt)
    }

    /// Records a broadcast replacement of `replaced`: seen after it, so the
    /// wallet's view prefers it.
    pub fn note_replacement(&self, tx: &Transaction, replaced: Txid) {
        let Ok(mut w) = self.inner() else { return };
        let old_seen = w.get_tx(replaced).and_then(|t| match t.chain_position {
            bdk_wallet::chain::ChainPosition::Unconfirmed { last_seen, .. } => last_seen,
            _ => None,
        });
        let seen = now_secs().max(old_seen.map_or(0, |s| s + 1));
        w.apply_unconfirmed_txs([(tx.clone(), seen)]);
        for i in &tx.input {
            w.unlock_outpoint(i.previous_output);
        }
        if let Err(e) = self.commit(&mut w, &[]) {
            tracing::error!("wallet: cannot write a replacement: {e}");
        }
    }

    /// After a restart: drops funding records of channels that no longer
    /// exist (`live`: the user ids of the channels LDK has), and unlocks
    /// every coin no record owns (a spend interrupted before broadcast).
    pub fn reconcile_locks(&self, live: &HashSet<u128>) -> Result<(), WalletError> {
        let mut kv = Vec::new();
        let mut owned = HashSet::new();
        for (key, psbt) in self.funding_records()? {
            let owner = u128::from_str_radix(&key, 16).ok();
            match (psbt, owner) {
                (Some(p), Some(o)) if live.contains(&o) => {
                    owned.extend(p.unsigned_tx.input.iter().map(|i| i.previous_output));
                }
                _ => {
                    tracing::info!(
                        record = key,
                        "wallet: funding record of a channel that is gone; its coins are free again"
                    );
                    kv.push((FUNDING_NS, key, None));
                }
            }
        }
        let mut w = self.inner()?;
        let stale: Vec<OutPoint> = w
            .list_locked_outpoints()
            .filter(|o| !owned.contains(o))
            .collect();
        for o in &stale {
            w.unlock_outpoint(*o);
        }
        if !stale.is_empty() {
            tracing::info!(
                coins = stale.len(),
                "wallet: coins locked by an unfinished spend are free again"
            );
        }
        self.commit(&mut w, &kv)
    }

    /// Coins LDK may put in its fee bumps: confirmed, mature, not locked,
    /// and unspent or spent only by an unconfirmed bump of LDK's own (which
    /// it replaces with a higher fee when it bumps again).
    pub fn bump_coins(&self) -> Vec<(OutPoint, TxOut, WPubkeyHash)> {
        let Ok(w) = self.inner() else {
            return Vec::new();
        };
        self.free_for_bump(&w)
            .into_iter()
            .filter_map(|o| {
                o.txout.script_pubkey.is_p2wpkh().then_some(())?;
                let hash =
                    WPubkeyHash::from_slice(o.txout.script_pubkey.as_bytes().get(2..)?).ok()?;
                Some((o.outpoint, o.txout, hash))
            })
            .collect()
    }

    fn free_for_bump(&self, w: &bdk_wallet::Wallet) -> Vec<bdk_wallet::LocalOutput> {
        let bumps = self.bumps.lock().map(|b| b.clone()).unwrap_or_default();
        let tip = w.latest_checkpoint().height();
        w.list_output()
            .filter(|o| {
                let Some(height) = o.chain_position.confirmation_height_upper_bound() else {
                    return false;
                };
                let coinbase = w
                    .tx_graph()
                    .get_tx(o.outpoint.txid)
                    .is_some_and(|t| t.is_coinbase());
                let mature = !coinbase || tip + 1 >= height + COINBASE_MATURITY;
                let spent_by_bump_only = || {
                    w.tx_graph().outspends(o.outpoint).iter().all(|t| {
                        bumps.contains(t)
                            && !w
                                .get_tx(*t)
                                .is_some_and(|c| c.chain_position.is_confirmed())
                    })
                };
                mature && !w.is_outpoint_locked(o.outpoint) && (!o.is_spent || spent_by_bump_only())
            })
            .collect()
    }

    /// Describes the inputs of a PSBT built elsewhere (LDK's fee bumping)
    /// that spend this wallet's coins (previous transaction, BIP 32 origin
    /// for the signer); returns how many it found.
    pub fn describe_own_inputs(&self, psbt: &mut Psbt) -> Result<usize, WalletError> {
        let w = self.inner()?;
        let mut found = 0;
        let mut ours: std::collections::HashMap<OutPoint, bdk_wallet::LocalOutput> =
            w.list_output().map(|o| (o.outpoint, o)).collect();
        for (txin, input) in psbt.unsigned_tx.input.iter().zip(psbt.inputs.iter_mut()) {
            let Some(out) = ours.remove(&txin.previous_output) else {
                continue;
            };
            let described = w
                .get_psbt_input(out, None, false)
                .map_err(|e| WalletError::Invalid(e.to_string()))?;
            input.bip32_derivation.extend(described.bip32_derivation);
            if described.witness_utxo.is_some() {
                input.witness_utxo = described.witness_utxo;
            }
            if described.non_witness_utxo.is_some() {
                input.non_witness_utxo = described.non_witness_utxo;
            }
            found += 1;
        }
        Ok(found)
    }

    /// Locks the wallet's coins an LDK bump is about to spend, before the
    /// signer signs it; refused if one is no longer free for LDK (another
    /// spend locked or spent it since LDK listed it). The broadcast that
    /// follows ends the lock ([`Wallet::note_broadcast`]); a claim never
    /// broadcast ends two tips later, or with [`Wallet::release`].
    pub fn claim_for_bump(&self, psbt: &Psbt) -> Result<(), WalletError> {
        let mut w = self.inner()?;
        let free: HashSet<OutPoint> = self
            .free_for_bump(&w)
            .into_iter()
            .map(|o| o.outpoint)
            .collect();
        let ours: HashSet<OutPoint> = w.list_output().map(|o| o.outpoint).collect();
        let own: Vec<OutPoint> = psbt
            .unsigned_tx
            .input
            .iter()
            .map(|i| i.previous_output)
            .filter(|o| ours.contains(o))
            .collect();
        if let Some(taken) = own.iter().find(|o| !free.contains(o)) {
            return Err(WalletError::Invalid(format!(
                "coin {taken} is taken by another spend"
            )));
        }
        for o in &own {
            w.lock_outpoint(*o);
        }
        if let Ok(mut c) = self.bump_claims.lock() {
            c.push((own, 0));
        }
        Ok(())
    }

    /// Unlocks the coins of bump claims two tips old: LDK broadcasts a
    /// bump as soon as it is signed, or gave it up.
    pub(super) fn expire_bump_claims(&self) {
        let expired: Vec<OutPoint> = match self.bump_claims.lock() {
            Ok(mut c) => {
                for claim in c.iter_mut() {
                    claim.1 += 1;
                }
                let (old, young): (Vec<_>, Vec<_>) = c.drain(..).partition(|x| x.1 >= 2);
                *c = young;
                old.into_iter().flat_map(|x| x.0).collect()
            }
            Err(_) => return,
        };
        if expired.is_empty() {
            return;
        }
        let Ok(mut w) = self.inner() else { return };
        for o in expired {
            w.unlock_outpoint(o);
        }
        if let Err(e) = self.commit(&mut w, &[]) {
            tracing::error!("wallet: cannot write ended bump claims: {e}");
        }
    }

    /// Takes a change script the signer handed out: the wallet watches up
    /// to its index (and its look-ahead beyond), so an output to it is
    /// always found. Refused if it is not one of the wallet's internal
    /// scripts.
    pub fn adopt_change_script(&self, script: &ScriptBuf) -> Result<(), WalletError> {
        let mut w = self.inner()?;
        let index = match w.derivation_of_spk(script.clone()) {
            Some((KeychainKind::Internal, i)) => Some(i),
            Some((KeychainKind::External, _)) => None,
            None => {
                // Further than the look-ahead: the signer handed out many
                // scripts never used on chain (it hands out at most
                // `max_wallet_scripts`, 10 000 by default).
                let from = w.next_derivation_index(KeychainKind::Internal);
                (from..from.saturating_add(MAX_SCRIPT_SEARCH))
                    .find(|i| w.peek_address(KeychainKind::Internal, *i).script_pubkey() == *script)
            }
        };
        let index = index.ok_or_else(|| {
            WalletError::Invalid("the change script is not one of the wallet's".into())
        })?;
        let _ = w.reveal_addresses_to(KeychainKind::Internal, index).count();
        self.commit(&mut w, &[])
    }

    /// Remembers a bump transaction of LDK's signed from this wallet.
    pub fn note_bump(&self, tx: &Transaction) {
        if let Ok(mut b) = self.bumps.lock() {
            b.insert(tx.compute_txid());
        }
    }
}

fn build_locked(
    w: &mut bdk_wallet::Wallet,
    to: ScriptBuf,
    amount: SpendAmount,
    fee_rate: FeeRate,
    change: ScriptBuf,
) -> Result<Psbt, WalletError> {
    let mut b = w.build_tx();
    b.fee_rate(fee_rate).exclude_unconfirmed();
    match amount {
        SpendAmount::Exact(a) => {
            b.add_recipient(to, a).drain_to(change);
        }
        SpendAmount::All => {
            b.drain_wallet().drain_to(to);
        }
    }
    let psbt = b.finish().map_err(create_error)?;
    for i in &psbt.unsigned_tx.input {
        w.lock_outpoint(i.previous_output);
    }
    Ok(psbt)
}
