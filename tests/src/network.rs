//! Scenarios with several lnpd nodes on one bcoin regtest chain: a miner,
//! funding, channel opening and payments, all through `lnpd-cli` as an
//! operator would do it, plus reading back what landed on chain.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, CompressedPublicKey, Network, OutPoint, Transaction, Txid};
use lnpd_node::chain::ChainRpc;

use crate::node_process::NodeProcess;
use crate::regtest::{Bcoin, SEGWIT_ACTIVATION_HEIGHT};

/// Standard output of a command, trimmed.
pub fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs `lnpd-cli args` on `n`; panics with the node's log if it fails.
pub fn ok(n: &NodeProcess, args: &[&str]) -> String {
    let o = n.cli(args);
    assert!(
        o.status.success(),
        "lnpd-cli {args:?}: {}\n--- node log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        n.log()
    );
    text(&o)
}

/// A field of a one-line JSON object, as text.
pub fn field(out: &str, name: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(out) {
        Ok(v) => v,
        Err(_) => panic!("not JSON: {out}"),
    };
    match &v[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => panic!("{name} not in {out}"),
        other => other.to_string(),
    }
}

/// The node id of `n`.
pub fn node_id(n: &NodeProcess) -> String {
    field(&ok(n, &["--json", "getinfo"]), "node_id")
}

/// Spendable on-chain balance of `n`, in sat.
pub fn onchain_sat(n: &NodeProcess) -> u64 {
    field(&ok(n, &["--json", "balance"]), "onchain_spendable_sat")
        .parse()
        .unwrap_or(0)
}

/// The channels of `n`, one JSON object each.
pub fn channels(n: &NodeProcess) -> Vec<serde_json::Value> {
    ok(n, &["--json", "channels"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The channel of `n` with `peer` (a node id), if any.
pub fn channel_with(n: &NodeProcess, peer: &str) -> Option<serde_json::Value> {
    channels(n)
        .into_iter()
        .find(|c| c["counterparty_node_id"] == peer)
}

/// Whether `n` has a usable channel with `peer`.
pub fn usable_with(n: &NodeProcess, peer: &str) -> bool {
    channel_with(n, peer).is_some_and(|c| c["is_usable"] == true)
}

/// Has `payee` make an invoice for `amount_msat` and `payer` pay it.
/// Returns the `pay` output (JSON) or the error text.
pub fn pay(
    payer: &NodeProcess,
    payee: &NodeProcess,
    amount_msat: u64,
    what: &str,
) -> Result<String> {
    let amount = amount_msat.to_string();
    let inv = ok(payee, &["invoice", &amount, "--description", what]);
    let o = payer.cli(&["--json", "pay", &inv, "--timeout", "30"]);
    if !o.status.success() {
        bail!(
            "{what}: {}{}",
            text(&o),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(text(&o))
}

/// `lnpd-cli ARGS` against `n` on a pseudo-terminal (util-linux `script`),
/// as an operator runs it: what it writes to the terminal (progress lines
/// included) comes out of the child's standard output.
pub fn cli_on_terminal(n: &NodeProcess, args: &[&str]) -> Result<std::process::Child> {
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let mut line = quote(&crate::process::bin("lnpd-cli").display().to_string());
    line.push_str(" --data-dir ");
    line.push_str(&quote(&n.data_dir().display().to_string()));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running lnpd-cli under `script` (util-linux)")
}

/// Polls `cond` every 100 ms for up to `secs` seconds.
pub fn wait_for(secs: u64, cond: impl Fn() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A regtest chain with a miner address that belongs to no node.
pub struct Chain {
    /// The bcoin process.
    pub bcoin: Bcoin,
    /// JSON-RPC client.
    pub rpc: Arc<ChainRpc>,
    /// Where blocks are mined when no node should get the reward.
    pub miner: Address,
}

impl Chain {
    /// Starts bcoin.
    pub async fn start() -> Result<Self> {
        Self::on(Bcoin::start().await?)
    }

    /// Starts bcoin answering in Bitcoin Core's shape (see
    /// [`Bcoin::start_core_shaped`]), for an independent peer.
    pub async fn start_core_shaped() -> Result<Self> {
        Self::on(Bcoin::start_core_shaped().await?)
    }

    fn on(bcoin: Bcoin) -> Result<Self> {
        let rpc = bcoin.rpc(2500)?;
        let key = SecretKey::from_slice(&[9; 32])?;
        let miner = Address::p2wpkh(
            &CompressedPublicKey(PublicKey::from_secret_key(&Secp256k1::new(), &key)),
            Network::Regtest,
        );
        Ok(Chain { bcoin, rpc, miner })
    }

    /// Mines `n` blocks to the miner.
    pub async fn mine(&self, n: u32) -> Result<()> {
        self.bcoin.mine(&self.rpc, n, &self.miner).await
    }

    /// Mines 10 blocks to each node's wallet, then past segwit activation
    /// (which also matures the coinbase), and waits until every node sees
    /// its coins.
    pub async fn fund(&self, nodes: &[&NodeProcess]) -> Result<()> {
        for n in nodes {
            let addr =
                Address::from_str(&ok(n, &["newaddress"]))?.require_network(Network::Regtest)?;
            self.bcoin.mine(&self.rpc, 10, &addr).await?;
        }
        self.mine(SEGWIT_ACTIVATION_HEIGHT).await?;
        self.sync(nodes).await?;
        for n in nodes {
            if onchain_sat(n) == 0 {
                bail!("node never saw its coins\n{}", n.log());
            }
        }
        Ok(())
    }

    /// Waits until every node has processed the chain up to the tip (and
    /// a little longer, for the wallet that follows the same blocks).
    pub async fn sync(&self, nodes: &[&NodeProcess]) -> Result<()> {
        let (_, tip) = self.rpc.best_block().await.map_err(|e| anyhow!("{e}"))?;
        for n in nodes {
            let at_tip = || {
                field(&ok(n, &["--json", "getinfo"]), "block_height")
                    .parse::<u32>()
                    .is_ok_and(|h| h >= tip)
            };
            if !wait_for(120, at_tip) {
                bail!("node did not reach height {tip}\n{}", n.log());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// Connects `from` to `to`, opens a channel of `sat` funded by `from`
    /// and mines until both sides call it usable. Returns the channel id.
    pub async fn open_channel(
        &self,
        from: &NodeProcess,
        to: &NodeProcess,
        sat: u64,
    ) -> Result<String> {
        let to_id = node_id(to);
        let from_id = node_id(from);
        ok(from, &["connect", &format!("{to_id}@{}", to.p2p_addr())]);
        let id = ok(from, &["openchannel", &to_id, &sat.to_string()]);
        for _ in 0..60 {
            self.mine(1).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if usable_with(from, &to_id) && usable_with(to, &from_id) {
                // The id `openchannel` printed was the temporary one.
                let chan = channel_with(from, &to_id).context("channel")?;
                return Ok(chan["channel_id"]
                    .as_str()
                    .context("channel id")?
                    .to_string());
            }
        }
        bail!(
            "channel {id} never became usable\n--- funder ---\n{}\n--- fundee ---\n{}",
            from.log(),
            to.log()
        )
    }

    /// Mines one block at a time (up to `max`) until `cond` holds.
    pub async fn mine_until(&self, max: u32, what: &str, cond: impl Fn() -> bool) -> Result<()> {
        for _ in 0..max {
            if cond() {
                return Ok(());
            }
            self.mine(1).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        if cond() {
            return Ok(());
        }
        bail!("{what}: not after {max} blocks")
    }

    /// Whether `outpoint` is spent by a confirmed transaction (or never
    /// existed): the chain's view, without the mempool.
    pub async fn spent_on_chain(&self, outpoint: &OutPoint) -> Result<bool> {
        let v = self
            .rpc
            .call(
                "gettxout",
                &[
                    serde_json::json!(outpoint.txid.to_string()),
                    serde_json::json!(outpoint.vout),
                    serde_json::json!(false),
                ],
            )
            .await
            .map_err(|e| anyhow!("gettxout {outpoint}: {e}"))?;
        Ok(v.is_null())
    }

    /// Every transaction of the chain from `from_height` to the tip.
    pub async fn transactions(&self, from_height: u32) -> Result<HashMap<Txid, Transaction>> {
        let (_, tip) = self.rpc.best_block().await.map_err(|e| anyhow!("{e}"))?;
        let mut txs = HashMap::new();
        for h in from_height..=tip {
            let hash = self
                .rpc
                .call("getblockhash", &[serde_json::json!(h)])
                .await
                .map_err(|e| anyhow!("getblockhash {h}: {e}"))?;
            let hash = hash
                .as_str()
                .context("block hash")?
                .parse()
                .context("block hash")?;
            let block = self.rpc.block(&hash).await.map_err(|e| anyhow!("{e}"))?;
            for tx in block.txdata {
                txs.insert(tx.compute_txid(), tx);
            }
        }
        Ok(txs)
    }
}

/// The confirmed transaction spending `outpoint`, if any.
pub fn spender<'a>(
    txs: &'a HashMap<Txid, Transaction>,
    outpoint: &OutPoint,
) -> Option<&'a Transaction> {
    txs.values()
        .find(|tx| tx.input.iter().any(|i| i.previous_output == *outpoint))
}

/// The fee `tx` paid (its inputs must be among `txs`).
pub fn fee_of(txs: &HashMap<Txid, Transaction>, tx: &Transaction) -> Result<u64> {
    let mut inputs = 0u64;
    for i in &tx.input {
        let prev = txs
            .get(&i.previous_output.txid)
            .with_context(|| format!("input {} not in the scanned blocks", i.previous_output))?;
        inputs += prev
            .output
            .get(i.previous_output.vout as usize)
            .context("input index")?
            .value
            .to_sat();
    }
    let outputs: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    inputs
        .checked_sub(outputs)
        .ok_or_else(|| anyhow!("outputs exceed inputs"))
}
