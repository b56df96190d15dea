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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use clap::Parser;
use lnpd_proto::hid::{FIRST_PAYLOAD, MAX_MESSAGE, NEXT_PAYLOAD, REPORT_SIZE};
use lnpd_signer_core::{PolicyConfig, Seed};
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
    /// Where the device's header chain starts, `<height>:<header hex>`
    /// (default: the genesis block; on mainnet give a recent block).
    #[arg(long)]
    checkpoint: Option<String>,
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

/// How many reports the message starting with `first` takes (1 for a
/// report that starts none: the device answers it with an error).
fn reports_in_message(first: &[u8; REPORT_SIZE]) -> usize {
    let seq = u16::from_be_bytes([first[4], first[5]]);
    let len = u32::from_be_bytes([first[6], first[7], first[8], first[9]]) as usize;
    if seq != 0 || len > MAX_MESSAGE {
        return 1;
    }
    1 + len.saturating_sub(FIRST_PAYLOAD).div_ceil(NEXT_PAYLOAD)
}

/// Serves one host connection until it closes. Several hosts may be
/// connected (the bridge and an operator's command): each message is
/// handed to the device whole, under the lock, as one USB pipe would.
fn serve<U: lnpd_signer_firmware::ui::Ui>(
    device: &Mutex<Device<FileFlash, U>>,
    mut conn: UnixStream,
) -> std::io::Result<()> {
    let mut first = [0u8; REPORT_SIZE];
    loop {
        match conn.read_exact(&mut first) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut message = vec![first];
        for _ in 1..reports_in_message(&first) {
            let mut r = [0u8; REPORT_SIZE];
            conn.read_exact(&mut r)?;
            message.push(r);
        }
        let replies: Vec<_> = {
            let mut d = device
                .lock()
                .map_err(|_| std::io::Error::other("device lock poisoned"))?;
            message.iter().flat_map(|r| d.on_report(r)).collect()
        };
        for out in replies {
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
    let chain_checkpoint = match &cli.checkpoint {
        Some(c) => Some(
            lnpd_signer_core::chain::Checkpoint::parse(c)
                .map_err(|e| anyhow!("--checkpoint: {}", e.message))?,
        ),
        None => None,
    };
    let policy = PolicyConfig {
        approval_above_sat: cli.approval_above_sat,
        chain_checkpoint,
        ..PolicyConfig::default()
    };
    let ui = SimUi::new(cli.approve, Duration::from_secs(cli.approve_timeout));
    let device = Device::new(
        &seed,
        network,
        policy,
        flash,
        ui,
        Box::new(random32),
        Box::new(random32),
    )
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
    let device = Arc::new(Mutex::new(device));
    for (n, conn) in listener.incoming().enumerate() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => bail!("accepting a host: {e}"),
        };
        eprintln!("host connection {n} opened");
        let device = device.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(&device, conn) {
                eprintln!("host connection {n} failed: {e}");
            }
            eprintln!("host connection {n} closed");
        });
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
