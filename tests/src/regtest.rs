//! A bcoin full node on regtest, for end-to-end tests and the demo: started
//! on a free loopback port, in-memory, killed when dropped.
//!
//! bcoin is installed by `npm ci` in `regtest/` (the test script does it;
//! [`Bcoin::start`] does it too when `node_modules` is missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::TempDir;
use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Address;
use lnpd_node::chain::ChainRpc;

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

/// How often [`Bcoin::start`] tries again when its port was taken.
const START_ATTEMPTS: u32 = 5;

/// What starts bcoin.
#[derive(Clone, Copy, Debug)]
enum Launcher {
    /// bcoin's own `bin/node`.
    Bcoin,
    /// `regtest/bcoin-core-rpc.js`: the same node, Core-shaped answers.
    CoreShaped,
}

/// Why one start attempt failed.
enum StartFailure {
    /// Another process bound the port between our probe and bcoin's bind.
    PortTaken(anyhow::Error),
    /// Anything else.
    Fatal(anyhow::Error),
}

impl Bcoin {
    /// Starts bcoin and waits until its RPC answers.
    ///
    /// bcoin cannot report a port it chose itself, so the port is probed
    /// free first; another process may take it before bcoin binds it
    /// (`EADDRINUSE`): then bcoin is started again on another port.
    pub async fn start() -> Result<Self> {
        Self::start_script(Launcher::Bcoin).await
    }

    /// Like [`Bcoin::start`], answering the RPC calls where bcoin's JSON
    /// differs from Bitcoin Core's in Core's shape (`regtest/bcoin-core-rpc.js`),
    /// for a peer whose block source expects Core exactly.
    pub async fn start_core_shaped() -> Result<Self> {
        Self::start_script(Launcher::CoreShaped).await
    }

    async fn start_script(launcher: Launcher) -> Result<Self> {
        ensure_installed()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match Self::start_on(port, launcher).await {
                Ok(b) => return Ok(b),
                Err(StartFailure::PortTaken(e)) => last = Some(e),
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("bcoin did not start")))
            .context(format!("bcoin's port was taken {START_ATTEMPTS} times"))
    }

    async fn start_on(port: u16, launcher: Launcher) -> Result<Self, StartFailure> {
        let dir = TempDir::new("bcoin");
        // Unique per start: a bcoin of another test that took this port
        // must refuse our calls rather than answer them.
        let api_key = format!(
            "lnpd-{port}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let log = std::fs::File::create(dir.path.join("bcoin.log"))
            .map_err(|e| StartFailure::Fatal(e.into()))?;
        let child = Command::new("node")
            .arg(match launcher {
                Launcher::Bcoin => regtest_dir().join("node_modules/bcoin/bin/node"),
                Launcher::CoreShaped => regtest_dir().join("bcoin-core-rpc.js"),
            })
            .args([
                "--network=regtest",
                "--memory=true",
                "--workers=false",
                // No wallet plugin: its HTTP server binds a fixed port
                // (48334), which two chains side by side would fight over.
                "--no-wallet=true",
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
            .context("starting bcoin (node)")
            .map_err(StartFailure::Fatal)?;
        let mut b = Bcoin {
            child: Some(child),
            dir,
            url: format!("http://127.0.0.1:{port}/"),
            api_key,
        };
        let rpc = b.rpc(1000).map_err(StartFailure::Fatal)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Bounded: a process that took the port may accept and never answer.
            let answered = tokio::time::timeout(Duration::from_secs(2), rpc.best_block()).await;
            if matches!(answered, Ok(Ok(_))) {
                return Ok(b);
            }
            if let Some(status) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = b.log();
                let e = anyhow!("bcoin exited ({status}): {log}");
                return Err(if log.contains("EADDRINUSE") {
                    StartFailure::PortTaken(e)
                } else {
                    StartFailure::Fatal(e)
                });
            }
            if Instant::now() > deadline {
                return Err(StartFailure::Fatal(anyhow!(
                    "bcoin did not answer RPC within 60 s: {}",
                    b.log()
                )));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A port taken by another process is reported as such (so that
    /// [`Bcoin::start`] tries another one), not as a fatal error.
    #[tokio::test]
    async fn a_taken_port_is_told_apart() -> Result<()> {
        ensure_installed()?;
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = taken.local_addr()?.port();
        match Bcoin::start_on(port, Launcher::Bcoin).await {
            Err(StartFailure::PortTaken(e)) => {
                assert!(format!("{e}").contains("EADDRINUSE"), "{e}");
            }
            Err(StartFailure::Fatal(e)) => bail!("fatal instead of port taken: {e}"),
            Ok(_) => bail!("bcoin started on a port another socket holds"),
        }
        drop(taken);
        let b = Bcoin::start().await?;
        b.rpc(1000)?
            .best_block()
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }
}
