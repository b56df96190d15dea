//! Real `lnpd-signer` processes on free loopback ports, in temporary
//! directories removed afterwards, and a blocking client for them (std only).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lnpd_proto::client::{self as signer_client, SignerTls};
use lnpd_proto::signer::signer_client::SignerClient;
use lnpd_proto::signer::{reply, request};
use tonic::transport::Channel;

use lnpd_signer_core::testing::SignerHandle;
use lnpd_signer_core::SignerError;

/// Path of a binary of this workspace: next to the running executable
/// (a binary) or one directory up (a test, which runs from `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let here = exe.parent().expect("executable directory");
    let candidates = [
        here.join(name),
        here.parent().map(|p| p.join(name)).unwrap_or_default(),
    ];
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => p.clone(),
        None => panic!(
            "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
            candidates[1].display()
        ),
    }
}

/// Waits until `ready` gives a value, failing with `log` if `child` exits
/// first or `timeout` passes; `what` names the program in the error.
pub fn wait_for_start<T>(
    child: &mut Option<Child>,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Option<T>,
    log: impl Fn() -> String,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return Ok(v);
        }
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("{what} exited early ({status}): {}", log());
        }
        if Instant::now() > deadline {
            bail!("{what} did not start: {}", log());
        }
        std::thread::sleep(every);
    }
}

/// The `lnpd-signer` binary: `LNPD_SIGNER_BIN` if set, else next to the test executable.
pub fn signer_bin() -> PathBuf {
    std::env::var_os("LNPD_SIGNER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin("lnpd-signer"))
}

/// A working directory, removed when dropped unless it was made to be kept.
pub struct TempDir {
    /// Where it is.
    pub path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// A new empty directory.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "lnpd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir {
            path: p,
            keep: false,
        }
    }

    /// A directory at `path`, emptied first and kept afterwards.
    pub fn kept(path: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path, keep: true })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // `LNPD_TEST_KEEP=1` keeps every directory (logs) for a post-mortem.
        if !self.keep && std::env::var_os("LNPD_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A signer data directory and, while running, its process.
pub struct SignerProcess {
    /// The data directory.
    pub dir: TempDir,
    passphrase: PathBuf,
    child: Option<Child>,
    /// The address it listens on, once started.
    pub addr: Option<String>,
    /// The address it listened on last (kept across a kill, for restart).
    last_addr: Option<String>,
    /// `run --device` value: a bridge to a hardware signer.
    device: Option<String>,
    /// More arguments for `run` (e.g. `--store etcd://...`).
    extra: Vec<String>,
    /// Environment of every `lnpd-signer` command (e.g. `SOFTHSM2_CONF`).
    env: Vec<(String, std::ffi::OsString)>,
    /// `run --connect`: the node's address this signer dials.
    connect: Option<String>,
}

impl SignerProcess {
    /// Runs `lnpd-signer init` in a new directory (regtest, light KDF for speed).
    pub fn init(tag: &str) -> Result<Self> {
        Self::init_in(TempDir::new(tag))
    }

    /// Runs `lnpd-signer init --restore` with `mnemonic` in a new directory.
    pub fn init_restored(tag: &str, mnemonic: &str) -> Result<Self> {
        Self::run_init(TempDir::new(tag), Some(mnemonic))
    }

    /// The file holding the test passphrase.
    pub fn passphrase_file(&self) -> PathBuf {
        self.passphrase.clone()
    }

    /// Runs `lnpd-signer init` in `dir`.
    pub fn init_in(dir: TempDir) -> Result<Self> {
        Self::run_init(dir, None)
    }

    /// `lnpd-signer init` (regtest, light KDF) in `dir`: a new seed, or
    /// `--restore` from `mnemonic` given on standard input.
    fn run_init(dir: TempDir, mnemonic: Option<&str>) -> Result<Self> {
        Self::init_with(dir, mnemonic, &[], Vec::new())
    }

    /// `lnpd-signer init` with more arguments (e.g. `--seal pkcs11 ...`)
    /// and an environment kept for every later command of this signer.
    pub fn init_with(
        dir: TempDir,
        mnemonic: Option<&str>,
        args: &[&std::ffi::OsStr],
        env: Vec<(String, std::ffi::OsString)>,
    ) -> Result<Self> {
        use std::io::Write;
        let passphrase = dir.path.join("passphrase");
        std::fs::write(&passphrase, "test passphrase\n")?;
        let mut cmd = Command::new(signer_bin());
        cmd.args([
            "init",
            "--network",
            "regtest",
            "--listen",
            "127.0.0.1:0",
            "--kdf-memory-kib",
            "8192",
        ])
        .arg(if mnemonic.is_some() {
            "--restore"
        } else {
            "--no-show-mnemonic"
        })
        .arg("--data-dir")
        .arg(dir.path.join("signer"))
        .arg("--passphrase-file")
        .arg(&passphrase)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running lnpd-signer init")?;
        if let (Some(words), Some(mut stdin)) = (mnemonic, child.stdin.take()) {
            // A broken pipe means init stopped early; its status says why.
            let _ = writeln!(stdin, "{words}");
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "lnpd-signer init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut me = Self::stopped(dir, passphrase, None);
        me.env = env;
        Ok(me)
    }

    /// A signer set up in `dir`, not running.
    fn stopped(dir: TempDir, passphrase: PathBuf, device: Option<String>) -> Self {
        SignerProcess {
            dir,
            passphrase,
            child: None,
            addr: None,
            last_addr: None,
            device,
            extra: Vec::new(),
            env: Vec::new(),
            connect: None,
        }
    }

    /// Adds arguments to `run`.
    pub fn with_run_args(mut self, args: &[&str]) -> Self {
        self.add_run_args(args);
        self
    }

    /// Sets the environment of this signer's later commands.
    pub fn set_env(&mut self, env: Vec<(String, std::ffi::OsString)>) {
        self.env = env;
    }

    /// Adds arguments to `run` (for the next start).
    pub fn add_run_args(&mut self, args: &[&str]) {
        self.extra.extend(args.iter().map(|a| a.to_string()));
    }

    /// Runs `lnpd-signer COMMAND ...` on this data directory (with the
    /// passphrase file), and returns its output.
    pub fn tool(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(signer_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--passphrase-file")
            .arg(&self.passphrase)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("running lnpd-signer")
    }

    /// Another replica of this signer: a new data directory holding the
    /// same sealed seed, TLS material and configuration (not the state,
    /// which lives in etcd, nor this machine's witness), with the same
    /// `run` arguments.
    pub fn replica(&self, tag: &str) -> Result<Self> {
        let dir = TempDir::new(tag);
        let from = self.data_dir();
        let to = dir.path.join("signer");
        std::fs::create_dir_all(to.join("tls"))?;
        for f in ["seed.enc", "signer.toml"] {
            std::fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {f}"))?;
        }
        for e in std::fs::read_dir(from.join("tls"))? {
            let e = e?;
            std::fs::copy(e.path(), to.join("tls").join(e.file_name()))?;
        }
        let passphrase = dir.path.join("passphrase");
        std::fs::copy(&self.passphrase, &passphrase)?;
        let mut r = Self::stopped(dir, passphrase, self.device.clone());
        r.extra = self.extra.clone();
        r.env = self.env.clone();
        Ok(r)
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the running daemon.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("signer not running"))?;
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// A bridge to the hardware signer `device` (`run --device` value):
    /// `init --for-device`, then `pair --yes` (the device's button must
    /// confirm, e.g. a simulator started with `--approve yes`).
    pub fn init_for_device(dir: TempDir, device: &str) -> Result<Self> {
        let data = dir.path.join("signer");
        for args in [
            vec![
                "init",
                "--for-device",
                "--network",
                "regtest",
                "--listen",
                "127.0.0.1:0",
            ],
            vec!["pair", "--device", device, "--yes"],
        ] {
            let out = Command::new(signer_bin())
                .args(&args)
                .arg("--data-dir")
                .arg(&data)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running lnpd-signer {}", args[0]))?;
            if !out.status.success() {
                bail!(
                    "lnpd-signer {} failed: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let passphrase = dir.path.join("passphrase");
        Ok(Self::stopped(dir, passphrase, Some(device.to_string())))
    }

    /// The signer's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path.join("signer")
    }

    /// The address of the running daemon's metrics endpoint (started with
    /// `--metrics-listen 127.0.0.1:0`), as it writes it to its data
    /// directory; waits for it at most `within`.
    pub fn metrics_addr(&self, within: Duration) -> Result<String> {
        let file = self.data_dir().join("metrics.addr");
        let until = Instant::now() + within;
        loop {
            match std::fs::read_to_string(&file) {
                Ok(a) if !a.trim().is_empty() => return Ok(a.trim().to_string()),
                _ if Instant::now() > until => {
                    bail!("the daemon wrote no {} within {within:?}", file.display())
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The TLS files a node uses to reach this signer.
    pub fn node_tls(&self) -> SignerTls {
        SignerTls::from_signer_dir(&self.data_dir().join("tls"))
    }

    /// Starts `lnpd-signer run` on a free port and waits until it listens.
    pub fn start(&mut self) -> Result<String> {
        self.start_on("127.0.0.1:0")
    }

    /// Starts `lnpd-signer run --connect NODE` (the signer dials the node,
    /// listens nowhere) and waits until it says so.
    pub fn start_connecting(&mut self, node: &str) -> Result<()> {
        self.connect = Some(node.to_string());
        self.spawn_run(&["--connect", node])?;
        let log_path = self.dir.path.join("signer.log");
        let from = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0) as usize;
        wait_for_start(
            &mut self.child,
            "lnpd-signer",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                log.get(from.min(log.len())..)
                    .is_some_and(|l| l.contains("dialling the node at"))
                    .then_some(())
            },
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        )
    }

    /// Starts the daemon again on the address it had (after [`Self::kill9`]),
    /// so a node configured with that address finds it back; a signer that
    /// dials its node dials it again.
    pub fn restart(&mut self) -> Result<String> {
        if let Some(node) = self.connect.clone() {
            self.start_connecting(&node)?;
            return Ok(node);
        }
        let addr = self
            .last_addr
            .clone()
            .ok_or_else(|| anyhow!("signer never started"))?;
        self.start_on(&addr)
    }

    /// Spawns `lnpd-signer run` with `reach` (`--listen ...` or
    /// `--connect ...`), its log appended to signer.log.
    fn spawn_run(&mut self, reach: &[&str]) -> Result<()> {
        // Appended: a restarted daemon's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("signer.log"))?;
        let child = Command::new(signer_bin())
            .arg("run")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--passphrase-file")
            .arg(&self.passphrase)
            .args(reach)
            .args(["--log", "info"])
            .args(self.device.iter().flat_map(|d| ["--device", d.as_str()]))
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lnpd-signer run")?;
        self.child = Some(child);
        Ok(())
    }

    fn start_on(&mut self, listen: &str) -> Result<String> {
        let addr_file = self.data_dir().join("signer.addr");
        let _ = std::fs::remove_file(&addr_file);
        self.spawn_run(&["--listen", listen])?;
        let log_path = self.dir.path.join("signer.log");
        let a = wait_for_start(
            &mut self.child,
            "lnpd-signer",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                std::fs::read_to_string(&addr_file)
                    .ok()
                    .filter(|a| !a.is_empty())
            },
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        )?;
        self.addr = Some(a.clone());
        self.last_addr = Some(a.clone());
        Ok(a)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("signer.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused daemon dies as well; resumed first so nothing lingers.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        self.addr = None;
    }

    /// The address the daemon listens (or last listened) on.
    pub fn last_addr(&self) -> Option<&str> {
        self.last_addr.as_deref()
    }

    /// Waits until the daemon answers a ping (a replica: until it is the
    /// active one and loaded the state). Callable from async code (the
    /// blocking client runs on a thread of its own).
    pub fn wait_serving(&self, within: Duration) -> Result<()> {
        let addr = self
            .addr
            .clone()
            .ok_or_else(|| anyhow!("signer not started"))?;
        let tls = self.node_tls();
        let waited = std::thread::spawn(move || {
            let until = std::time::Instant::now() + within;
            loop {
                let answer = RemoteSigner::connect(&addr, &tls).and_then(|mut c| {
                    c.call(request::Body::Ping(lnpd_proto::signer::PingRequest {
                        nonce: vec![1],
                    }))
                    .map_err(|e| anyhow!("{e}"))
                });
                match answer {
                    Ok(_) => return Ok(()),
                    Err(e) if std::time::Instant::now() > until => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .join()
        .map_err(|_| anyhow!("the waiting thread panicked"))?;
        waited.map_err(|e| anyhow!("the signer does not serve: {e}\n{}", self.log()))
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A client over mutual TLS with the node's certificate.
    pub fn client(&self) -> Result<RemoteSigner> {
        let addr = self
            .addr
            .clone()
            .ok_or_else(|| anyhow!("signer not started"))?;
        RemoteSigner::connect(&addr, &self.node_tls())
    }
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A signer process seen through [`SignerHandle`], with blocking calls.
pub struct RemoteSigner {
    rt: tokio::runtime::Runtime,
    client: SignerClient<Channel>,
}

impl RemoteSigner {
    /// Connects with the given TLS files, and greets the daemon.
    pub fn connect(addr: &str, tls: &SignerTls) -> Result<Self> {
        let mut s = Self::connect_ungreeted(addr, tls)?;
        // The daemon signs only once greeted (`AWAITING_GREETING`); a
        // standby's refusal shows on the next call.
        let _ = s.call(request::Body::Info(lnpd_proto::signer::InfoRequest {
            protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
            ..Default::default()
        }));
        Ok(s)
    }

    /// Connects without the greeting (`Info`) a daemon waits for before it
    /// answers anything else.
    pub fn connect_ungreeted(addr: &str, tls: &SignerTls) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(signer_client::connect(addr, tls))?;
        Ok(RemoteSigner { rt, client })
    }

    /// The daemon's `Info` (also the node's greeting).
    pub fn info(&mut self) -> Result<lnpd_proto::signer::InfoReply, SignerError> {
        match self.call(request::Body::Info(lnpd_proto::signer::InfoRequest {
            protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
            ..Default::default()
        }))? {
            reply::Body::Info(r) => Ok(r),
            _ => Err(SignerError::internal("unexpected reply variant")),
        }
    }

    /// Sends every request at once, each on its own stream of this
    /// connection (as several channels of a node do); their results in
    /// order.
    pub fn call_together(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Vec<Result<reply::Body, SignerError>> {
        self.rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, body) in bodies.into_iter().enumerate() {
                let mut client = self.client.clone();
                tasks.spawn(async move {
                    let r = signer_client::call(&mut client, body)
                        .await
                        .unwrap_or_else(|s| Err(transport_error(&s)));
                    (i, r)
                });
            }
            let mut results: Vec<_> = tasks.join_all().await;
            results.sort_by_key(|(i, _)| *i);
            results.into_iter().map(|(_, r)| r).collect()
        })
    }

    /// One call; a transport failure (the request may not have reached
    /// the signer) reads as `Unavailable`.
    pub fn call(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        self.rt
            .block_on(signer_client::call(&mut self.client, body))
            .unwrap_or_else(|s| Err(transport_error(&s)))
    }
}

/// A gRPC status: the request did not reach the signer's handler.
pub fn transport_error(s: &tonic::Status) -> SignerError {
    SignerError::unavailable(format!("transport: {}", s.message()))
}

impl SignerHandle for RemoteSigner {
    fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        self.call(body)
    }
    fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        self.rt
            .block_on(signer_client::call_batch(&mut self.client, bodies))
            .map_err(|s| transport_error(&s))
    }
}
