//! A bcoin full node on regtest, for end-to-end tests and the demo: started
//! on a free loopback port, in-memory, killed when dropped.
//!
//! bcoin is installed by `npm ci` in `regtest/` (the test script does it;
//! [`Bcoin::start`] does it too when `node_modules` is missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Address;
use lnpd_node::chain::ChainRpc;
use lnpd_signer::testing::process::TempDir;

/// Blocks after which bcoin's regtest activates segwit (version bits).
pub const SEGWIT_ACTIVATION_HEIGHT: u32 = 432;

/// The `regtest/` directory of the workspace.
pub fn regtest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("regtest")
}

/// Installs bcoin with `npm ci` unless it is there already.
pub fn ensure_installed() -> Result<()> {
    let dir = regtest_dir();
    if dir.join("node_modules/bcoin/bin/node").exists() {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("running npm ci in regtest/ (is Node.js with npm installed?)")?;
    if !status.success() {
        bail!("npm ci in {} failed", dir.display());
    }
    Ok(())
}

/// A running bcoin regtest node.
pub struct Bcoin {
    child: Option<Child>,
    dir: TempDir,
    /// JSON-RPC URL.
    pub url: String,
    /// RPC password (bcoin's API key); any user name is accepted.
    pub api_key: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Bcoin {
    /// Starts bcoin and waits until its RPC answers.
    pub async fn start() -> Result<Self> {
        ensure_installed()?;
        let dir = TempDir::new("bcoin");
        let port = free_port()?;
        let api_key = format!("lnpd-{port}");
        let log = std::fs::File::create(dir.path.join("bcoin.log"))?;
        let child = Command::new("node")
            .arg(regtest_dir().join("node_modules/bcoin/bin/node"))
            .args([
                "--network=regtest",
                "--memory=true",
                "--workers=false",
                "--listen=false",
                "--only=127.0.0.1:1",
                "--log-level=warning",
            ])
            .arg(format!("--http-port={port}"))
            .arg(format!("--api-key={api_key}"))
            .arg(format!("--prefix={}", dir.path.display()))
            .env("NODE_BACKEND", "js")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting bcoin (node)")?;
        let mut b = Bcoin {
            child: Some(child),
            dir,
            url: format!("http://127.0.0.1:{port}/"),
            api_key,
        };
        let rpc = b.rpc(1000)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rpc.best_block().await.is_ok() {
                return Ok(b);
            }
            if let Some(status) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("bcoin exited ({status}): {}", b.log());
            }
            if Instant::now() > deadline {
                bail!("bcoin did not answer RPC within 60 s: {}", b.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An RPC client (inside the tokio runtime).
    pub fn rpc(&self, fallback_sat_per_kw: u32) -> Result<Arc<ChainRpc>> {
        ChainRpc::new(&self.url, "lnpd", &self.api_key, fallback_sat_per_kw)
            .map_err(|e| anyhow!("{e}"))
    }

    /// bcoin's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("bcoin.log")).unwrap_or_default()
    }

    /// Mines `n` blocks to `address`, in batches.
    pub async fn mine(&self, rpc: &ChainRpc, n: u32, address: &Address) -> Result<()> {
        let to = bcoin_address(address)?;
        let mut left = n;
        while left > 0 {
            let batch = left.min(100);
            rpc.generate_to_address(batch, &to)
                .await
                .map_err(|e| anyhow!("mining: {e}"))?;
            left -= batch;
        }
        Ok(())
    }
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The same address as bcoin's regtest spells it: bech32 with the `rb`
/// prefix instead of `bcrt` (other address kinds are passed as they are).
pub fn bcoin_address(address: &Address) -> Result<String> {
    use bitcoin::bech32::{segwit, Fe32, Hrp};
    let Some(program) = address.witness_program() else {
        return Ok(address.to_string());
    };
    let hrp = Hrp::parse("rb").map_err(|e| anyhow!("{e}"))?;
    let version = Fe32::try_from(program.version().to_num()).map_err(|e| anyhow!("{e}"))?;
    segwit::encode(hrp, version, program.program().as_bytes()).map_err(|e| anyhow!("{e}"))
}
