//! `lnpd-signer-sim`: the hardware signer's firmware (`lnpd-signer-firmware`)
//! run on the host, for development and tests where no device is attached.
//! Its flash is a file, its USB HID link a local socket carrying the same
//! 64-byte reports, its button the terminal (or a flag). `lnpd-signer run
//! --device sim:<socket>` bridges a node to it exactly as to a real device.
//!
//! It is a simulator: the seed sits in a plain file in its data directory.

mod file_flash;
mod sim_ui;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use clap::Parser;
use lnpd_proto::hid::REPORT_SIZE;
use lnpd_signer::{PolicyConfig, Seed};
use lnpd_signer_firmware::device::Device;

use crate::file_flash::FileFlash;
use crate::sim_ui::{Approve, SimUi};

/// Size of the simulated flash (two slots of 2 MiB).
const FLASH_SIZE: usize = 4 * 1024 * 1024;
/// Its erase page.
const FLASH_PAGE: usize = 4096;

#[derive(Parser)]
#[command(
    name = "lnpd-signer-sim",
    version,
    about = "Simulated lnpd hardware signer: flash in a file, HID reports over a Unix socket"
)]
struct Cli {
    /// Where the simulated device keeps its seed (seed.hex) and flash (flash.bin).
    #[arg(long)]
    data_dir: PathBuf,
    /// The Unix socket the host connects to (`lnpd-signer run --device sim:<path>`).
    #[arg(long)]
    socket: PathBuf,
    /// Bitcoin network: bitcoin, testnet, signet or regtest.
    #[arg(long, default_value = "regtest")]
    network: String,
    /// The device's button: "ask" prompts on this terminal, "yes" confirms
    /// and "no" denies everything (pairing, payments above the threshold).
    #[arg(long, default_value = "ask")]
    approve: Approve,
    /// Seconds the button waits before it counts as a denial.
    #[arg(long, default_value_t = 60)]
    approve_timeout: u64,
    /// Own payments above this (sat) ask the button (`payment-approval`).
    #[arg(long)]
    approval_above_sat: Option<u64>,
}

fn network(s: &str) -> Result<Network> {
    Network::from_core_arg(s)
        .map_err(|_| anyhow!("unknown network {s:?}: use bitcoin, testnet, signet or regtest"))
}

/// The device's seed, made on first start.
fn seed(dir: &Path) -> Result<Seed> {
    let path = dir.join("seed.hex");
    let bytes = match std::fs::read_to_string(&path) {
        Ok(s) => hex::decode(s.trim()).with_context(|| format!("{} is not hex", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = vec![0u8; 32];
            getrandom::fill(&mut b).map_err(|e| anyhow!("no OS randomness: {e}"))?;
            std::fs::write(&path, hex::encode(&b))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("new simulated device: seed written to {}", path.display());
            b
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Seed::new(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut b) {
        eprintln!("fatal: no OS randomness: {e}");
        std::process::exit(1);
    }
    b
}

/// Serves one host connection until it closes.
fn serve<U: lnpd_signer_firmware::ui::Ui>(
    device: &mut Device<FileFlash, U>,
    mut conn: UnixStream,
) -> std::io::Result<()> {
    let mut report = [0u8; REPORT_SIZE];
    loop {
        match conn.read_exact(&mut report) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        for out in device.on_report(&report) {
            conn.write_all(&out)?;
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let network = network(&cli.network)?;
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let seed = seed(&cli.data_dir)?;
    let flash_path = cli.data_dir.join("flash.bin");
    let flash = FileFlash::open(&flash_path, FLASH_SIZE, FLASH_PAGE)
        .with_context(|| format!("opening {}", flash_path.display()))?;
    let policy = PolicyConfig {
        approval_above_sat: cli.approval_above_sat,
        ..PolicyConfig::default()
    };
    let ui = SimUi::new(cli.approve, Duration::from_secs(cli.approve_timeout));
    let mut device = Device::new(&seed, network, policy, flash, ui, Box::new(random32))
        .map_err(|e| anyhow!("device start: {e}"))?;
    if cli.socket.exists() {
        std::fs::remove_file(&cli.socket)
            .with_context(|| format!("removing the stale socket {}", cli.socket.display()))?;
    }
    let listener = UnixListener::bind(&cli.socket)
        .with_context(|| format!("listening on {}", cli.socket.display()))?;
    eprintln!(
        "simulated device {} ({} channels) on {}",
        device.identity(),
        device.signer().channels().count(),
        cli.socket.display()
    );
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => bail!("accepting a host: {e}"),
        };
        eprintln!("host connected");
        if let Err(e) = serve(&mut device, conn) {
            eprintln!("host link failed: {e}");
        }
        eprintln!("host disconnected");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
