//! `lnpd` node processes for end-to-end tests, each with its own signer
//! process, on free loopback ports, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::process::{bin, wait_for_start, SignerProcess, TempDir};
use anyhow::{Context, Result};

use crate::regtest::Bcoin;

/// A node and its signer.
pub struct NodeProcess {
    /// The node's signer.
    pub signer: SignerProcess,
    /// More replicas of the same signer (etcd store), listed after
    /// `signer` in `--signer`.
    pub replicas: Vec<SignerProcess>,
    dir: TempDir,
    child: Option<Child>,
    tag: String,
    bcoin_url: String,
    bcoin_key: String,
    /// `--signer-listen`: the node accepts its signer's connection here
    /// (the signer runs `--connect`); "127.0.0.1:0" until first bound.
    signer_listen: Option<String>,
}

impl NodeProcess {
    /// Starts a signer, then `lnpd` against it and `bcoin`, in temporary directories.
    pub fn start(tag: &str, bcoin: &Bcoin) -> Result<Self> {
        Self::start_in(None, tag, bcoin)
    }

    /// Like [`NodeProcess::start`]; with `base`, the data is kept in
    /// `base/<tag>/signer` and `base/<tag>/node`.
    pub fn start_in(base: Option<&std::path::Path>, tag: &str, bcoin: &Bcoin) -> Result<Self> {
        let (signer_dir, dir) = match base {
            Some(b) => (
                TempDir::kept(b.join(tag).join("signer"))?,
                TempDir::kept(b.join(tag).join("node"))?,
            ),
            None => (TempDir::new(&format!("{tag}-signer")), TempDir::new(tag)),
        };
        Self::start_with(SignerProcess::init_in(signer_dir)?, dir, tag, bcoin)
    }

    /// Starts `signer` (already initialised), then `lnpd` in `dir`.
    pub fn start_with(
        signer: SignerProcess,
        dir: TempDir,
        tag: &str,
        bcoin: &Bcoin,
    ) -> Result<Self> {
        Self::start_with_args(signer, dir, tag, bcoin, &[])
    }

    /// Like [`NodeProcess::start`], with extra `lnpd` flags.
    pub fn start_args(tag: &str, bcoin: &Bcoin, extra: &[&str]) -> Result<Self> {
        let signer = SignerProcess::init_in(TempDir::new(&format!("{tag}-signer")))?;
        Self::start_with_args(signer, TempDir::new(tag), tag, bcoin, extra)
    }

    /// Starts `signer` (already initialised), then `lnpd` in `dir` with
    /// extra flags.
    pub fn start_with_args(
        mut signer: SignerProcess,
        dir: TempDir,
        tag: &str,
        bcoin: &Bcoin,
        extra: &[&str],
    ) -> Result<Self> {
        signer.start()?;
        let mut node = Self::unstarted(signer, dir, tag, bcoin);
        node.spawn(extra)?;
        Ok(node)
    }

    /// A node not started yet, with its signer.
    fn unstarted(signer: SignerProcess, dir: TempDir, tag: &str, bcoin: &Bcoin) -> Self {
        NodeProcess {
            signer,
            replicas: Vec::new(),
            dir,
            child: None,
            tag: tag.to_string(),
            bcoin_url: bcoin.url.clone(),
            bcoin_key: bcoin.api_key.clone(),
            signer_listen: None,
        }
    }

    /// Starts `lnpd --signer-listen` and a signer that dials it
    /// (`lnpd-signer run --connect`): the signer listens nowhere.
    pub fn start_dialled(tag: &str, bcoin: &Bcoin) -> Result<Self> {
        let signer = SignerProcess::init_in(TempDir::new(&format!("{tag}-signer")))?;
        let mut node = Self::unstarted(signer, TempDir::new(tag), tag, bcoin);
        node.signer_listen = Some("127.0.0.1:0".into());
        node.spawn(&[])?;
        Ok(node)
    }

    /// Where the node accepts its signer (a node started by
    /// [`Self::start_dialled`]).
    pub fn signer_listen_addr(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir().join("signer-listen.addr")).ok()
    }

    /// Starts `lnpd` in `dir` served by signer replicas (`--signer A,B,..`):
    /// `signer` is started first and becomes active before the others
    /// start and stand by.
    pub fn start_replicated(
        signer: SignerProcess,
        mut replicas: Vec<SignerProcess>,
        dir: TempDir,
        tag: &str,
        bcoin: &Bcoin,
    ) -> Result<Self> {
        let mut node = Self::unstarted(signer, dir, tag, bcoin);
        node.signer.start()?;
        node.signer.wait_serving(Duration::from_secs(30))?;
        for r in &mut replicas {
            r.start()?;
        }
        node.replicas = replicas;
        node.spawn(&[])?;
        Ok(node)
    }

    /// Stops `lnpd` (its signer keeps running) and starts it again on the
    /// same data with `extra` flags.
    pub fn restart_node(&mut self, extra: &[&str]) -> Result<()> {
        self.stop_node();
        self.spawn(extra)
    }

    /// Stops `lnpd` (its signer keeps running); [`Self::restart_node`]
    /// starts it again.
    pub fn stop_node(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn(&mut self, extra: &[&str]) -> Result<()> {
        let data = self.data_dir();
        let signer_args: Vec<String> = match &self.signer_listen {
            Some(listen) => {
                let _ = std::fs::remove_file(data.join("signer-listen.addr"));
                vec!["--signer-listen".into(), listen.clone()]
            }
            None => {
                let mut signer_addr = self
                    .signer
                    .addr
                    .clone()
                    .context("the signer is not running")?;
                for r in &self.replicas {
                    signer_addr.push(',');
                    signer_addr.push_str(r.last_addr().context("a replica never started")?);
                }
                vec!["--signer".into(), signer_addr]
            }
        };
        let addr = data.join("admin.addr");
        let _ = std::fs::remove_file(&addr);
        let log_path = self.dir.path.join("lnpd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(bin("lnpd"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--network",
                "regtest",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--alias",
                &self.tag,
            ])
            .args([
                "--bitcoind-rpc-url",
                &self.bcoin_url,
                "--bitcoind-rpc-password",
                &self.bcoin_key,
            ])
            .args(&signer_args)
            .arg("--signer-tls-dir")
            .arg(self.signer.data_dir().join("tls"))
            .args(["--log", "info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lnpd")?;
        self.child = Some(child);
        if self.signer_listen.is_some() {
            // The signer dials the address the node bound (kept for restarts).
            let listen_file = data.join("signer-listen.addr");
            let bound = wait_for_start(
                &mut self.child,
                "lnpd",
                Duration::from_secs(30),
                Duration::from_millis(20),
                || {
                    std::fs::read_to_string(&listen_file)
                        .ok()
                        .filter(|a| !a.is_empty())
                },
                || std::fs::read_to_string(&log_path).unwrap_or_default(),
            )?;
            self.signer_listen = Some(bound.clone());
            if self.signer.pid().is_none() {
                self.signer.start_connecting(&bound)?;
            }
        }
        wait_for_start(
            &mut self.child,
            "lnpd",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || addr.exists().then_some(()),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path.join("node")
    }

    /// The node's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("lnpd.log")).unwrap_or_default()
    }

    /// Runs `lnpd-cli` against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("lnpd-cli"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("lnpd-cli runs")
    }

    /// The peer-to-peer address.
    pub fn p2p_addr(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("p2p.addr")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
