//! `lnpd-signer-sim` as a process: the simulated hardware signer, its flash
//! in a file, its HID reports on a Unix socket.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{bin, wait_for_start, TempDir};
use anyhow::{Context, Result};

/// A simulated device and, while running, its process.
pub struct SimProcess {
    /// Its data directory (seed.hex, flash.bin, sim.log).
    pub dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl SimProcess {
    /// Starts a new device; `args` are extra flags (e.g. `--approve yes`).
    pub fn start(tag: &str, args: &[&str]) -> Result<Self> {
        let mut sim = SimProcess {
            dir: TempDir::new(tag),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        sim.restart()?;
        Ok(sim)
    }

    /// The socket the host connects to.
    pub fn socket(&self) -> PathBuf {
        self.dir.path.join("sim.sock")
    }

    /// The `--device` value for `lnpd-signer`.
    pub fn spec(&self) -> String {
        format!("sim:{}", self.socket().display())
    }

    /// Starts the process (again) on the same flash and waits for its socket.
    pub fn restart(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("sim.log"))?;
        let child = Command::new(bin("lnpd-signer-sim"))
            .arg("--data-dir")
            .arg(&self.dir.path)
            .arg("--socket")
            .arg(self.socket())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lnpd-signer-sim (cargo build --workspace --bins first)")?;
        self.child = Some(child);
        let socket = self.socket();
        let log = self.dir.path.join("sim.log");
        wait_for_start(
            &mut self.child,
            "lnpd-signer-sim",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || socket.exists().then_some(()),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    /// Kills the process with SIGKILL, wherever it is (a power cut).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("sim.log")).unwrap_or_default()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The host's end of the simulator's socket.
pub struct SimSocket(pub std::os::unix::net::UnixStream);

impl lnpd_proto::device_client::ReportLink for SimSocket {
    type Error = std::io::Error;
    fn send(&mut self, report: &lnpd_proto::hid::Report) -> std::io::Result<()> {
        use std::io::Write;
        self.0.write_all(report)
    }
    fn receive(&mut self) -> std::io::Result<lnpd_proto::hid::Report> {
        use std::io::Read;
        let mut r = [0u8; lnpd_proto::hid::REPORT_SIZE];
        self.0.read_exact(&mut r)?;
        Ok(r)
    }
}

impl SimProcess {
    /// Its process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A raw connection to the device.
    pub fn connect(&self, cid: u32) -> Result<lnpd_proto::device_client::DeviceClient<SimSocket>> {
        // The socket file appears at bind, a moment before the simulator
        // listens: a refusal right after a (re)start is retried briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        let s = loop {
            match std::os::unix::net::UnixStream::connect(self.socket()) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("connecting to {}", self.socket().display()))
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(lnpd_proto::device_client::DeviceClient::new(
            SimSocket(s),
            cid,
        ))
    }
}
