//! The wallet on synthetic blocks: receives, spends, locks, reorgs, fee
//! bumps, forgetting, the migration from the old store, and reopening.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, Block, BlockHash, CompactTarget, FeeRate,
    Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use lightning::util::persist::KVStoreSync;

use super::*;

static DIR_SEQ: AtomicU32 = AtomicU32::new(0);

/// A store in a directory of its own, removed on drop.
struct TempStore {
    dir: PathBuf,
}

impl TempStore {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "lnpd-wallet-test-{}-{}",
            std::process::id(),
            DIR_SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempStore { dir }
    }
    fn open(&self) -> Arc<SqliteStore> {
        Arc::new(SqliteStore::open(&self.dir.join("node.sqlite")).unwrap())
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The signer's descriptors for a fixed seed, and the account key.
fn descriptors() -> (String, String, Xpub) {
    descriptors_of(7)
}

/// The descriptors of a signer whose seed is 32 times `seed`.
fn descriptors_of(seed: u8) -> (String, String, Xpub) {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    let path: DerivationPath = "m/84'/1'/0'".parse().unwrap();
    let account = Xpub::from_priv(&secp, &master.derive_priv(&secp, &path).unwrap());
    let fp = master.fingerprint(&secp);
    let d = |c: u32| format!("wpkh([{fp}/84h/1h/0h]{account}/{c}/*)");
    (d(0), d(1), account)
}

/// The wallet's script at `chain/index`.
fn script(chain: u32, index: u32) -> ScriptBuf {
    let secp = Secp256k1::new();
    let (_, _, account) = descriptors();
    let path: DerivationPath = format!("m/{chain}/{index}").parse().unwrap();
    let k = account.derive_pub(&secp, &path).unwrap();
    ScriptBuf::new_p2wpkh(&bitcoin::CompressedPublicKey(k.public_key).wpubkey_hash())
}

fn stranger() -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([9u8; 20]))
}

/// A transaction from a coin outside the wallet paying `outputs`.
fn pay(seed: u8, outputs: &[(ScriptBuf, u64)]) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([seed; 32]),
                vout: 0,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs
            .iter()
            .map(|(s, v)| TxOut {
                value: Amount::from_sat(*v),
                script_pubkey: s.clone(),
            })
            .collect(),
    }
}

fn coinbase(height: u32, to: ScriptBuf, value: u64) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(height.to_le_bytes().to_vec()),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(value),
            script_pubkey: to,
        }],
    }
}

fn block(prev: BlockHash, height: u32, branch: u32, txs: Vec<Transaction>) -> Block {
    let mut txdata = vec![coinbase(height * 100 + branch, stranger(), 5_000_000_000)];
    txdata.extend(txs);
    Block {
        header: Header {
            version: BlockVersion::ONE,
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time: 1_700_000_000 + height * 600 + branch,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: branch,
        },
        txdata,
    }
}

/// A chain of blocks for the wallet to read; records the heights fetched.
struct FakeChain {
    blocks: Mutex<Vec<Block>>,
    fetched: Mutex<Vec<u32>>,
}

impl FakeChain {
    /// Genesis and `n` empty blocks.
    fn new(n: u32) -> Self {
        let genesis = block(BlockHash::all_zeros(), 0, 0, Vec::new());
        let c = FakeChain {
            blocks: Mutex::new(vec![genesis]),
            fetched: Mutex::new(Vec::new()),
        };
        for _ in 0..n {
            c.mine(Vec::new());
        }
        c
    }
    /// A block on top of the tip; returns it and its height.
    fn mine(&self, txs: Vec<Transaction>) -> (Block, u32) {
        let mut b = self.blocks.lock().unwrap();
        let h = b.len() as u32;
        let blk = block(b[h as usize - 1].block_hash(), h, 0, txs);
        b.push(blk.clone());
        (blk, h)
    }
    /// Replaces the blocks above `fork` with a branch of `n` blocks.
    fn reorg(&self, fork: u32, branch: Vec<Vec<Transaction>>) -> Vec<(Block, u32)> {
        let mut b = self.blocks.lock().unwrap();
        b.truncate(fork as usize + 1);
        let mut out = Vec::new();
        for txs in branch {
            let h = b.len() as u32;
            let blk = block(b[h as usize - 1].block_hash(), h, 1, txs);
            b.push(blk.clone());
            out.push((blk, h));
        }
        out
    }
    fn tip_hash(&self) -> BlockHash {
        self.blocks.lock().unwrap().last().unwrap().block_hash()
    }
}

impl ChainBlocks for FakeChain {
    async fn tip(&self) -> Result<(BlockHash, u32), String> {
        let b = self.blocks.lock().unwrap();
        Ok((b.last().unwrap().block_hash(), b.len() as u32 - 1))
    }
    async fn hash_at(&self, height: u32) -> Result<BlockHash, String> {
        let b = self.blocks.lock().unwrap();
        b.get(height as usize)
            .map(|b| b.block_hash())
            .ok_or_else(|| format!("no block {height}"))
    }
    async fn block(&self, hash: &BlockHash) -> Result<Block, String> {
        let b = self.blocks.lock().unwrap();
        let (h, blk) = b
            .iter()
            .enumerate()
            .find(|(_, b)| b.block_hash() == *hash)
            .ok_or("unknown block")?;
        self.fetched.lock().unwrap().push(h as u32);
        Ok(blk.clone())
    }
}

fn open(store: &TempStore, chain: &FakeChain) -> Wallet {
    let (ext, int, _) = descriptors();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(Wallet::open(
        &ext,
        &int,
        Network::Regtest,
        store.open(),
        chain,
    ))
    .unwrap()
}

fn rate(sat_per_vb: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(sat_per_vb).unwrap()
}

/// A confirmed coin of `value` at external index 0 (in a new block).
fn funded(value: u64) -> (TempStore, FakeChain, Wallet) {
    let store = TempStore::new();
    let chain = FakeChain::new(3);
    let w = open(&store, &chain);
    let addr = w.new_address().unwrap();
    assert_eq!(addr.script_pubkey(), script(0, 0));
    let (b, h) = chain.mine(vec![pay(1, &[(script(0, 0), value)])]);
    w.connect_block(&b, h);
    (store, chain, w)
}

/// 30 000 sat to a stranger at 2 sat/vB, change to internal 0, broadcast.
fn spend_30k(w: &Wallet) -> Transaction {
    let psbt = w
        .build_spend(
            stranger(),
            SpendAmount::Exact(Amount::from_sat(30_000)),
            rate(2),
            script(1, 0),
        )
        .unwrap();
    w.note_broadcast(&[&psbt.unsigned_tx], None);
    psbt.unsigned_tx
}

#[test]
fn receives_spends_and_reopens_with_the_same_state() {
    let (store, chain, w) = funded(100_000);
    assert_eq!(
        w.balance(),
        Balance {
            confirmed_sat: 100_000,
            ..Default::default()
        }
    );
    let psbt = w
        .build_spend(
            stranger(),
            SpendAmount::Exact(Amount::from_sat(30_000)),
            rate(2),
            script(1, 7),
        )
        .unwrap();
    // What the signer needs: the previous transaction and the key origin
    // of each input, the origin of the change; RBF signalled.
    let input = &psbt.inputs[0];
    assert!(input.non_witness_utxo.is_some() && input.witness_utxo.is_some());
    let (_, (fp, path)) = input.bip32_derivation.iter().next().unwrap();
    assert_eq!(
        *fp,
        Xpriv::new_master(Network::Regtest, &[7u8; 32])
            .unwrap()
            .fingerprint(&Secp256k1::new())
    );
    assert_eq!(path.to_string(), "84'/1'/0'/0/0");
    assert!(psbt.unsigned_tx.is_explicitly_rbf());
    let change = psbt
        .unsigned_tx
        .output
        .iter()
        .position(|o| o.script_pubkey == script(1, 7))
        .expect("change to the given script");
    assert!(!psbt.outputs[change].bip32_derivation.is_empty());
    let fee = 100_000
        - psbt
            .unsigned_tx
            .output
            .iter()
            .map(|o| o.value.to_sat())
            .sum::<u64>();
    assert!(
        (2 * 110..2 * 150).contains(&fee),
        "fee {fee} for ~141 vB at 2 sat/vB"
    );
    // The coin is reserved: a second spend finds nothing.
    assert_eq!(w.balance().reserved_sat, 100_000);
    assert_eq!(w.balance().confirmed_sat, 0);
    assert!(matches!(
        w.build_spend(
            stranger(),
            SpendAmount::Exact(Amount::from_sat(1_000)),
            rate(2),
            script(1, 8)
        ),
        Err(WalletError::Insufficient { .. })
    ));
    let tx = psbt.unsigned_tx.clone();
    w.note_broadcast(&[&tx], None);
    let change_value = tx.output[change].value.to_sat();
    assert_eq!(
        w.balance(),
        Balance {
            unconfirmed_sat: change_value,
            ..Default::default()
        }
    );
    let history = w.transactions();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].txid, tx.compute_txid());
    assert_eq!(history[0].confirmations, 0);
    assert_eq!(history[0].sent_sat, 100_000);
    assert_eq!(history[0].received_sat, change_value);
    assert_eq!(history[0].fee_sat, Some(fee));
    assert_eq!(history[1].confirmations, 1);
    assert_eq!(w.unconfirmed_txs(), vec![tx.clone()]);
    assert_eq!(
        w.previous_tx(&tx.input[0].previous_output.txid)
            .unwrap()
            .compute_txid(),
        tx.input[0].previous_output.txid
    );

    // Reopened from the store: the same wallet, and no address given twice.
    let before = (w.balance(), w.transactions(), w.best_block());
    drop(w);
    let w = open(&store, &chain);
    assert_eq!((w.balance(), w.transactions(), w.best_block()), before);
    assert_eq!(w.new_address().unwrap().script_pubkey(), script(0, 1));

    let (b, h) = chain.mine(vec![tx.clone()]);
    w.connect_block(&b, h);
    assert_eq!(w.balance().confirmed_sat, change_value);
    assert_eq!(w.transactions()[0].confirmations, 1);
    assert!(w.unconfirmed_txs().is_empty());
}

#[test]
fn withdraw_all_takes_every_free_coin_without_change() {
    let (_store, chain, w) = funded(100_000);
    let (b, h) = chain.mine(vec![pay(2, &[(script(0, 0), 40_000)])]);
    w.connect_block(&b, h);
    let psbt = w
        .build_spend(stranger(), SpendAmount::All, rate(3), stranger())
        .unwrap();
    assert_eq!(psbt.unsigned_tx.input.len(), 2);
    assert_eq!(psbt.unsigned_tx.output.len(), 1);
    assert_eq!(psbt.unsigned_tx.output[0].script_pubkey, stranger());
    assert!(psbt.unsigned_tx.output[0].value.to_sat() > 139_000);
    w.release(&psbt, None);
    assert_eq!(w.balance().confirmed_sat, 140_000);
}

#[test]
fn a_reorg_moves_confirmed_transactions_back_and_follows_the_new_branch() {
    let (store, chain, w) = funded(100_000);
    let spend = spend_30k(&w);
    let fork = chain.blocks.lock().unwrap().len() as u32 - 1;
    // Block fork+1 holds our spend and a new receive.
    let receive = pay(3, &[(script(0, 0), 55_000)]);
    let (b, h) = chain.mine(vec![spend.clone(), receive.clone()]);
    w.connect_block(&b, h);
    let change = w.balance().confirmed_sat;
    assert_eq!(
        change,
        55_000
            + spend
                .output
                .iter()
                .find(|o| o.script_pubkey == script(1, 0))
                .unwrap()
                .value
                .to_sat()
    );
    assert_eq!(w.transactions().len(), 3);

    // Two empty blocks on another branch from the fork.
    for (b, h) in chain.reorg(fork, vec![Vec::new(), Vec::new()]) {
        w.connect_block(&b, h);
    }
    assert_eq!(w.best_block(), Some((chain.tip_hash(), fork + 2)));
    // Both transactions of the stale block are unconfirmed again; the
    // spent coin stays spent.
    let bal = w.balance();
    assert_eq!(bal.confirmed_sat, 0);
    assert_eq!(bal.unconfirmed_sat, change);
    let history = w.transactions();
    assert_eq!(history.len(), 3);
    assert_eq!(
        history[..2]
            .iter()
            .map(|t| t.confirmations)
            .collect::<Vec<_>>(),
        [0, 0]
    );
    let pending: HashSet<Txid> = w
        .unconfirmed_txs()
        .iter()
        .map(|t| t.compute_txid())
        .collect();
    assert_eq!(
        pending,
        HashSet::from([spend.compute_txid(), receive.compute_txid()])
    );

    // The reorganised view is what was written (at most the blocks since
    // the last write to read again, as a restart's sync does).
    drop(w);
    let w = open(&store, &chain);
    let (_, from) = w.best_block().unwrap();
    assert!(
        from > fork,
        "the stale block is not the reopened wallet's tip"
    );
    let blocks = chain.blocks.lock().unwrap().clone();
    for (h, b) in blocks.iter().enumerate().skip(from as usize + 1) {
        w.connect_block(b, h as u32);
    }
    assert_eq!(w.balance(), bal);
    assert_eq!(w.transactions(), history);
    // The receive never comes back (double-spent on the new branch): once
    // forgotten, the balance no longer counts it.
    let gone = HashSet::from([receive.compute_txid()]);
    for _ in 1..FORGET_AFTER_TIPS {
        w.note_missing(&gone);
    }
    assert_eq!(w.note_missing(&gone), vec![receive.compute_txid()]);
    assert_eq!(w.balance().unconfirmed_sat, change - 55_000);
    assert_eq!(w.unconfirmed_txs(), vec![spend.clone()]);
    let (b, h) = chain.mine(vec![spend.clone()]);
    w.connect_block(&b, h);
    assert_eq!(w.transactions()[0].confirmations, 1);
    assert_eq!(w.balance().confirmed_sat, change - 55_000);
}

#[test]
fn funding_coins_stay_reserved_across_restarts_until_reconciled() {
    let (store, chain, w) = funded(100_000);
    let psbt = w
        .build_funding(
            7,
            stranger(),
            Amount::from_sat(50_000),
            rate(2),
            script(1, 0),
        )
        .unwrap();
    assert_eq!(w.balance().reserved_sat, 100_000);
    drop(w);
    let w = open(&store, &chain);
    assert_eq!(w.balance().reserved_sat, 100_000);
    assert_eq!(w.funding_psbt(7).unwrap(), psbt);
    // Its channel still exists: kept.
    w.reconcile_locks(&HashSet::from([7])).unwrap();
    assert_eq!(w.balance().reserved_sat, 100_000);
    // A funding refused for being a channel's.
    let txid = psbt.unsigned_tx.compute_txid();
    assert!(matches!(
        w.bump_fee(txid, rate(5), false, script(1, 9)),
        Err(WalletError::Invalid(_))
    ));
    // Gone: the coins are free, the record dropped.
    w.reconcile_locks(&HashSet::new()).unwrap();
    assert_eq!(w.balance().reserved_sat, 0);
    assert_eq!(w.balance().confirmed_sat, 100_000);
    assert!(w.funding_psbt(7).is_none());

    // A withdrawal interrupted before its broadcast frees its coin at the
    // next start; a broadcast funding ends its reservation.
    w.build_spend(
        stranger(),
        SpendAmount::Exact(Amount::from_sat(1_000)),
        rate(2),
        script(1, 1),
    )
    .unwrap();
    // Its lock is written with the next change (here, a block).
    let (b, h) = chain.mine(vec![pay(5, &[(script(0, 0), 1_000)])]);
    w.connect_block(&b, h);
    drop(w);
    let w = open(&store, &chain);
    assert_eq!(w.balance().reserved_sat, 100_000, "the lock was written");
    w.reconcile_locks(&HashSet::new()).unwrap();
    assert_eq!(w.balance().reserved_sat, 0);
    assert_eq!(w.balance().confirmed_sat, 101_000);
    let funding = w
        .build_funding(
            8,
            stranger(),
            Amount::from_sat(50_000),
            rate(2),
            script(1, 2),
        )
        .unwrap();
    w.note_broadcast(&[&funding.unsigned_tx], Some(8));
    assert!(w.funding_psbt(8).is_none());
    assert_eq!(w.balance().reserved_sat, 0);
    assert!(w.balance().unconfirmed_sat > 0);
}

#[test]
fn bump_fee_replaces_an_unconfirmed_spend() {
    let (_store, chain, w) = funded(100_000);
    let old = spend_30k(&w);
    let old_fee = w.transactions()[0].fee_sat.unwrap();
    // Too low a rate is refused by BIP 125's rules.
    assert!(w
        .bump_fee(old.compute_txid(), rate(2), false, script(1, 1))
        .is_err());
    // A channel's funding txid is refused.
    assert!(matches!(
        w.bump_fee(old.compute_txid(), rate(9), true, script(1, 1)),
        Err(WalletError::Invalid(_))
    ));
    let bumped = w
        .bump_fee(old.compute_txid(), rate(9), false, script(1, 1))
        .unwrap();
    let new = bumped.unsigned_tx.clone();
    assert_eq!(new.input[0].previous_output, old.input[0].previous_output);
    // The change moves to the script given (one the signer handed out).
    assert!(new.output.iter().any(|o| o.script_pubkey == script(1, 1)));
    assert!(!new.output.iter().any(|o| o.script_pubkey == script(1, 0)));
    assert!(new
        .output
        .iter()
        .any(|o| o.script_pubkey == stranger() && o.value.to_sat() == 30_000));
    w.note_replacement(&new, old.compute_txid());
    let history = w.transactions();
    assert_eq!(history.len(), 2, "the replaced one leaves the history");
    assert_eq!(history[0].txid, new.compute_txid());
    assert!(history[0].fee_sat.unwrap() > old_fee * 4);
    assert_eq!(w.unconfirmed_txs(), vec![new.clone()]);
    let (b, h) = chain.mine(vec![new]);
    w.connect_block(&b, h);
    assert_eq!(w.transactions()[0].confirmations, 1);
    // Confirmed: nothing left to bump.
    assert!(w
        .bump_fee(history[0].txid, rate(20), false, script(1, 2))
        .is_err());
}

#[test]
fn fee_bump_coins_are_free_mature_and_one_owner_at_a_time() {
    let (_store, chain, w) = funded(100_000);
    // A coinbase to the wallet: immature for 100 blocks.
    let (b, h) = {
        let mut blocks = chain.blocks.lock().unwrap();
        let h = blocks.len() as u32;
        let mut blk = block(blocks[h as usize - 1].block_hash(), h, 0, Vec::new());
        blk.txdata[0] = coinbase(h * 100, script(0, 1), 5_000_000_000);
        blocks.push(blk.clone());
        (blk, h)
    };
    w.connect_block(&b, h);
    assert_eq!(w.balance().immature_sat, 5_000_000_000);
    let coins = w.bump_coins();
    assert_eq!(coins.len(), 1, "the immature coinbase is not offered");
    let (op, out, _) = coins[0].clone();
    assert_eq!(out.value.to_sat(), 100_000);

    // LDK's bump spending it: locked from signature to broadcast, so a
    // withdrawal cannot take it meanwhile; a second claim is refused.
    let mut bump = pay(4, &[(stranger(), 1_000)]);
    bump.input.push(TxIn {
        previous_output: op,
        ..bump.input[0].clone()
    });
    let psbt = bitcoin::Psbt::from_unsigned_tx(bump.clone()).unwrap();
    w.claim_for_bump(&psbt).unwrap();
    assert!(w.bump_coins().is_empty());
    assert!(w.claim_for_bump(&psbt).is_err());
    assert!(w
        .build_spend(
            stranger(),
            SpendAmount::Exact(Amount::from_sat(1_000)),
            rate(2),
            script(1, 0)
        )
        .is_err());
    // Broadcast: spent by LDK's own bump, which LDK may replace: offered
    // to LDK again, never to a withdrawal.
    w.note_bump(&bump);
    w.note_broadcast(&[&bump], None);
    assert_eq!(w.bump_coins().len(), 1);
    assert!(w
        .build_spend(
            stranger(),
            SpendAmount::Exact(Amount::from_sat(1_000)),
            rate(2),
            script(1, 0)
        )
        .is_err());
    let mut described = bitcoin::Psbt::from_unsigned_tx(bump).unwrap();
    assert_eq!(w.describe_own_inputs(&mut described).unwrap(), 1);
    assert!(described.inputs[1].non_witness_utxo.is_some());
    assert!(described.inputs[0].bip32_derivation.is_empty());
}

#[test]
fn a_bump_claim_refuses_a_coin_another_spend_took_and_ends_unbroadcast() {
    let (_store, chain, w) = funded(100_000);
    let (b, h) = chain.mine(vec![pay(6, &[(script(0, 0), 70_000)])]);
    w.connect_block(&b, h);
    let coins = w.bump_coins();
    assert_eq!(coins.len(), 2);
    let claim_of = |op: OutPoint| {
        let mut tx = pay(7, &[(stranger(), 1_000)]);
        tx.input.push(TxIn {
            previous_output: op,
            ..tx.input[0].clone()
        });
        bitcoin::Psbt::from_unsigned_tx(tx).unwrap()
    };
    // A withdrawal takes the 100 000 coin after LDK listed both: LDK's
    // claim on it is refused.
    let spend = spend_30k(&w);
    let taken = spend.input[0].previous_output;
    assert!(coins.iter().any(|c| c.0 == taken));
    assert!(w.claim_for_bump(&claim_of(taken)).is_err());
    // The other coin: claimed, never broadcast; free again two tips later.
    let other = coins.iter().find(|c| c.0 != taken).unwrap().0;
    w.claim_for_bump(&claim_of(other)).unwrap();
    assert!(w.bump_coins().is_empty());
    assert!(w.note_missing(&HashSet::new()).is_empty());
    assert!(w.bump_coins().is_empty());
    w.note_missing(&HashSet::new());
    assert_eq!(w.bump_coins().len(), 1);
}

#[test]
fn change_scripts_the_signer_hands_out_are_watched_however_far() {
    let (_store, chain, w) = funded(100_000);
    // Far past the look-ahead (1 000): found, and watched from then on.
    w.adopt_change_script(&script(1, 1_500)).unwrap();
    let (b, h) = chain.mine(vec![pay(8, &[(script(1, 2_400), 5_000)])]);
    w.connect_block(&b, h);
    assert_eq!(w.balance().confirmed_sat, 105_000);
    // Not the wallet's internal chain: refused.
    assert!(w.adopt_change_script(&script(0, 3)).is_err());
    assert!(w.adopt_change_script(&stranger()).is_err());
}

#[test]
fn a_spend_missing_from_the_mempool_is_forgotten_after_enough_tips() {
    let (_store, _chain, w) = funded(100_000);
    let tx = spend_30k(&w);
    let missing = HashSet::from([tx.compute_txid()]);
    for _ in 1..FORGET_AFTER_TIPS {
        assert!(w.note_missing(&missing).is_empty());
    }
    // Found once: the count starts again.
    assert!(w.note_missing(&HashSet::new()).is_empty());
    for _ in 1..FORGET_AFTER_TIPS {
        assert!(w.note_missing(&missing).is_empty());
    }
    assert_eq!(w.note_missing(&missing), vec![tx.compute_txid()]);
    assert_eq!(w.balance().confirmed_sat, 100_000);
    assert!(w.unconfirmed_txs().is_empty());
}

#[test]
fn the_old_wallet_store_is_migrated_by_reading_its_blocks_again() {
    let store = TempStore::new();
    let chain = FakeChain::new(1);
    // Height 2: coin A (external 0). 3: coin B at internal 4 (a close
    // destination the signer handed out). 4: A spent, change C to internal 5.
    let a_tx = pay(1, &[(script(0, 0), 50_000)]);
    chain.mine(vec![a_tx.clone()]);
    let b_tx = pay(2, &[(script(1, 4), 20_000)]);
    chain.mine(vec![b_tx.clone()]);
    let mut spend = pay(3, &[(stranger(), 39_000), (script(1, 5), 10_000)]);
    spend.input[0].previous_output = OutPoint {
        txid: a_tx.compute_txid(),
        vout: 0,
    };
    chain.mine(vec![spend.clone()]);
    chain.mine(Vec::new());
    chain.mine(Vec::new());
    let best = chain.tip_hash();
    let old = serde_json::json!({
        "next_external": 3,
        "next_internal": 6,
        "coins": [
            {"outpoint": format!("{}:0", a_tx.compute_txid()), "value_sat": 50_000, "chain": 0, "index": 0,
             "height": 2, "coinbase": false, "prev_tx": "", "spent_at": 4},
            {"outpoint": format!("{}:0", b_tx.compute_txid()), "value_sat": 20_000, "chain": 1, "index": 4,
             "height": 3, "coinbase": false, "prev_tx": "", "spent_at": null},
            {"outpoint": format!("{}:1", spend.compute_txid()), "value_sat": 10_000, "chain": 1, "index": 5,
             "height": 4, "coinbase": false, "prev_tx": "", "spent_at": null},
        ],
        "best_height": 6,
        "best_hash": best.to_string(),
    });
    store
        .open()
        .write("wallet", "", "state", serde_json::to_vec(&old).unwrap())
        .unwrap();
    let w = open(&store, &chain);
    // One fetch per height the old record names, nothing else.
    assert_eq!(*chain.fetched.lock().unwrap(), vec![2, 3, 4, 6]);
    assert_eq!(w.balance().confirmed_sat, 30_000);
    assert_eq!(w.best_block(), Some((best, 6)));
    let history = w.transactions();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0].txid, spend.compute_txid());
    assert_eq!(history[0].confirmations, 3);
    assert_eq!(history[0].sent_sat, 50_000);
    // The previous transactions the signer needs are there.
    assert!(w.previous_tx(&b_tx.compute_txid()).is_some());
    // Addresses: the next one is past those the old wallet handed out.
    assert_eq!(w.new_address().unwrap().script_pubkey(), script(0, 3));
    // The old record is gone, in the same write as the new wallet.
    assert!(store.open().read("wallet", "", "state").is_err());
    // Reopened: loaded, not migrated again (no block fetched).
    drop(w);
    chain.fetched.lock().unwrap().clear();
    let w = open(&store, &chain);
    assert!(chain.fetched.lock().unwrap().is_empty());
    assert_eq!(w.balance().confirmed_sat, 30_000);
    // Blocks follow on from the old wallet's last one.
    let (b, h) = chain.mine(vec![pay(4, &[(script(0, 2), 5_000)])]);
    w.connect_block(&b, h);
    assert_eq!(w.balance().confirmed_sat, 35_000);
}

#[test]
fn a_store_of_other_descriptors_is_refused() {
    let store = TempStore::new();
    let chain = FakeChain::new(2);
    drop(open(&store, &chain));
    let (ext, int, _) = descriptors_of(8);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt.block_on(Wallet::open(
        &ext,
        &int,
        Network::Regtest,
        store.open(),
        &chain,
    ));
    assert!(matches!(r, Err(WalletError::Descriptor(_))));
}
