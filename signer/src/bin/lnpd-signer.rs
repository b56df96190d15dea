//! `lnpd-signer`: the policy-enforcing signer daemon of an lnpd node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use clap::{Args, Parser, Subcommand};
use lnpd_signer::daemon::config::ConfigFile;
use lnpd_signer::daemon::server::{self, SignerService};
use lnpd_signer::daemon::store_redb::RedbStore;
use lnpd_signer::daemon::{seed_file, tls, DataDir};
use lnpd_signer::{Seed, Signer};
use zeroize::Zeroizing;

/// The lnpd signer: holds the seed, keeps channel state, enforces policy,
/// and signs for one lnpd node over gRPC with mutual TLS.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Signer data directory (seed, state, TLS files, signer.toml).
    #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
    data_dir: String,
    /// File holding the seed passphrase (else LNPD_SIGNER_PASSPHRASE, else asked on stdin).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new seed (or restore one), encrypt it, and make the TLS material.
    ///
    /// The 24-word mnemonic is shown once: write it down. Files written:
    /// seed.enc (encrypted seed), signer.toml, tls/ca.pem, tls/server.*, and
    /// tls/node.pem + tls/node.key + tls/ca.pem for the node.
    Init {
        #[command(flatten)]
        common: Common,
        /// Bitcoin network: bitcoin, testnet, signet or regtest.
        #[arg(long)]
        network: String,
        /// Restore from a BIP 39 mnemonic read from standard input instead of creating a seed.
        #[arg(long)]
        restore: bool,
        /// Address the signer will listen on (written to signer.toml).
        #[arg(long, default_value = "127.0.0.1:9736")]
        listen: String,
        /// Host names or IP addresses the node uses to reach the signer (server certificate SANs).
        #[arg(long = "tls-host", default_values = ["localhost", "127.0.0.1", "::1"])]
        tls_hosts: Vec<String>,
        /// Argon2id memory cost in KiB for the seed encryption (default 64 MiB).
        #[arg(long, default_value_t = seed_file::DEFAULT_M_COST_KIB)]
        kdf_memory_kib: u32,
        /// Do not print the mnemonic (for scripted test set-ups only).
        #[arg(long, hide = true)]
        no_show_mnemonic: bool,
        /// For a hardware signer: no seed here (the device holds it); only
        /// the TLS material and signer.toml for `run --device`.
        #[arg(long)]
        for_device: bool,
    },
    /// Serve the node over gRPC with mutual TLS until interrupted.
    Run {
        #[command(flatten)]
        common: Common,
        /// Listen address; overrides signer.toml. Port 0 picks a free port
        /// (the address is written to <data-dir>/signer.addr).
        #[arg(long)]
        listen: Option<String>,
        /// Log filter (overrides signer.toml and RUST_LOG), e.g. "info" or "lnpd_signer=debug".
        #[arg(long)]
        log: Option<String>,
        /// Bridge to a hardware signer instead of signing here: "hid" (USB,
        /// vendor 1209 product 4c4e), "hid:<vid>:<pid>", a /dev/hidraw
        /// path, or "sim:<socket>" for lnpd-signer-sim. The device holds the
        /// keys and enforces the policy; pair it first (`pair`).
        #[arg(long)]
        device: Option<String>,
    },
    /// Pair this host with a hardware signer: both show a code; confirm on
    /// the device, then here. Writes host.key and device.json.
    Pair {
        /// Signer data directory.
        #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
        data_dir: String,
        /// The device, as for `run --device`.
        #[arg(long)]
        device: String,
        /// Do not ask for confirmation here (the device's button still decides).
        #[arg(long)]
        yes: bool,
    },
    /// Manage the allow-list: addresses funds may go to besides the wallet
    /// (withdrawals, closes, sweeps) and payee node ids.
    ///
    /// Edits <data-dir>/allowlist.json on this machine; a running daemon picks
    /// the change up by itself. The node can never change this list.
    Allowlist {
        /// Signer data directory.
        #[arg(
            long,
            env = "LNPD_SIGNER_DIR",
            default_value = "~/.lnpd-signer",
            global = true
        )]
        data_dir: String,
        /// A paired hardware signer (as for `run --device`): `add` then asks
        /// its user to confirm the entry, and keeps it on the device.
        #[arg(long, global = true)]
        device: Option<String>,
        #[command(subcommand)]
        action: AllowlistAction,
    },
    /// Show the audit log: every refusal with its time, rule, operation, channel and reason.
    ///
    /// Reads <data-dir>/audit.log; works while the daemon runs and needs no passphrase.
    Log {
        /// Signer data directory.
        #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
        data_dir: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Show only the last N entries.
        #[arg(long)]
        last: Option<usize>,
    },
    /// List payments waiting for the operator's approval (policy
    /// `payment-approval`, set with `approval_above_sat` in signer.toml).
    ///
    /// Reads <data-dir>/approvals; works while the daemon runs and needs no passphrase.
    Pending {
        /// Signer data directory.
        #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
        data_dir: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting payment: the signer signs it when the node asks again
    /// (the node retries by itself while it waits).
    Approve {
        /// Signer data directory.
        #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
        data_dir: String,
        /// The payment's id, as `lnpd-signer pending` shows it.
        id: String,
    },
    /// Deny a waiting payment: the signer refuses it (rule payment-approval).
    Deny {
        /// Signer data directory.
        #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
        data_dir: String,
        /// The payment's id, as `lnpd-signer pending` shows it.
        id: String,
    },
    /// Show the node id, the wallet descriptors and the channels the signer knows.
    Info {
        #[command(flatten)]
        common: Common,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AllowlistAction {
    /// Allow an address (of the signer's network) or a payee node id (hex).
    Add {
        /// The address or node id.
        entry: String,
    },
    /// Remove an address or node id.
    Remove {
        /// The address or node id.
        entry: String,
    },
    /// List the entries.
    List,
}

fn expand(dir: &str) -> PathBuf {
    match (dir.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(dir),
    }
}

fn parse_network(s: &str) -> Result<Network> {
    Network::from_core_arg(s)
        .map_err(|_| anyhow!("unknown network {s:?}: use bitcoin, testnet, signet or regtest"))
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|_| filter.is_empty())
        .unwrap_or_else(|| filter.to_string());
    let filter = if filter.is_empty() {
        "info".to_string()
    } else {
        filter
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // getrandom only fails if the OS has no entropy source; nothing safe can go on then.
    if let Err(e) = getrandom::fill(&mut b) {
        eprintln!("fatal: no OS randomness: {e}");
        std::process::exit(1);
    }
    b
}

struct Opened {
    dir: DataDir,
    config: ConfigFile,
    signer: Signer<RedbStore>,
}

fn open(common: &Common) -> Result<Opened> {
    let dir = DataDir(expand(&common.data_dir));
    if !dir.seed().exists() {
        bail!(
            "no seed at {}: run `lnpd-signer init --data-dir {}` first",
            dir.seed().display(),
            dir.path().display()
        );
    }
    let config = ConfigFile::load(&dir.config())?;
    let network = parse_network(
        config
            .network
            .as_deref()
            .ok_or_else(|| anyhow!("{}: `network` is missing", dir.config().display()))?,
    )?;
    let policy = config.policy()?;
    let pass = seed_file::read_passphrase(common.passphrase_file.as_deref())
        .context("reading the passphrase")?;
    let seed = seed_file::read(&dir.seed(), pass.as_bytes())
        .with_context(|| format!("opening {}", dir.seed().display()))?;
    let store = RedbStore::open(&dir.state()).map_err(|e| anyhow!("{e}"))?;
    let signer = Signer::new(&seed, network, policy, store, Box::new(random32))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(Opened {
        dir,
        config,
        signer,
    })
}

fn init(
    common: Common,
    network: String,
    restore: bool,
    listen: String,
    tls_hosts: Vec<String>,
    kdf_memory_kib: u32,
    no_show_mnemonic: bool,
) -> Result<()> {
    let network = parse_network(&network)?;
    listen
        .parse::<SocketAddr>()
        .with_context(|| format!("--listen {listen:?} is not an address:port"))?;
    let dir = DataDir(expand(&common.data_dir));
    if dir.seed().exists() {
        bail!(
            "{} already holds a seed; refusing to overwrite it",
            dir.path().display()
        );
    }
    std::fs::create_dir_all(dir.path())
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let mnemonic = if restore {
        eprintln!("Enter the BIP 39 mnemonic (one line):");
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().read_line(&mut line)?;
        bip39::Mnemonic::parse_normalized(line.trim())
            .map_err(|e| anyhow!("invalid mnemonic: {e}"))?
    } else {
        let entropy = Zeroizing::new(random32());
        bip39::Mnemonic::from_entropy(&entropy[..]).map_err(|e| anyhow!("{e}"))?
    };
    let bip39_seed = Zeroizing::new(mnemonic.to_seed(""));
    let seed = Seed::new(bip39_seed.to_vec()).map_err(|e| anyhow!("{e}"))?;
    let pass = seed_file::read_passphrase(common.passphrase_file.as_deref())?;
    if pass.is_empty() {
        bail!("an empty passphrase is not allowed: the seed is encrypted under it");
    }
    seed_file::write(
        &dir.seed(),
        &seed,
        pass.as_bytes(),
        kdf_memory_kib,
        seed_file::DEFAULT_T_COST,
    )?;
    let files = tls::generate(&dir.tls(), &tls_hosts)?;
    let config = format!("# lnpd-signer configuration\nnetwork = \"{}\"\nlisten = \"{listen}\"\n\n[policy]\n# See docs for every limit; defaults are safe.\n", network.to_core_arg());
    std::fs::write(dir.config(), config)
        .with_context(|| format!("writing {}", dir.config().display()))?;

    let secp = bitcoin::secp256k1::Secp256k1::new();
    let keys =
        lnpd_signer::keys::KeyRing::from_seed(&seed, network, &secp).map_err(|e| anyhow!("{e}"))?;
    if !restore && !no_show_mnemonic {
        println!("Your 24-word recovery mnemonic (shown once; write it down, keep it offline):\n");
        println!("    {mnemonic}\n");
    }
    println!("node id:     {}", keys.node_id(&secp));
    println!("network:     {}", network.to_core_arg());
    println!("seed:        {} (encrypted)", dir.seed().display());
    println!("config:      {}", dir.config().display());
    print_node_tls(&files);
    println!(
        "next:        lnpd-signer run --data-dir {}",
        dir.path().display()
    );
    Ok(())
}

/// Tells the operator which TLS files the node needs.
fn print_node_tls(files: &tls::TlsFiles) {
    println!(
        "node TLS:    give the node {}, {} and {}",
        files.ca_cert.display(),
        files.node_cert.display(),
        files.node_key.display()
    );
}

/// `init --for-device`: TLS material and signer.toml, no seed.
fn init_for_device(
    data_dir: &str,
    network: &str,
    listen: &str,
    tls_hosts: &[String],
) -> Result<()> {
    let network = parse_network(network)?;
    listen
        .parse::<SocketAddr>()
        .with_context(|| format!("--listen {listen:?} is not an address:port"))?;
    let dir = &DataDir(expand(data_dir));
    if dir.config().exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            dir.config().display()
        );
    }
    std::fs::create_dir_all(dir.path())
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let files = tls::generate(&dir.tls(), tls_hosts)?;
    let config = format!(
        "# lnpd-signer configuration (bridge to a hardware signer)\nnetwork = \"{}\"\nlisten = \"{listen}\"\n",
        network.to_core_arg()
    );
    std::fs::write(dir.config(), config)
        .with_context(|| format!("writing {}", dir.config().display()))?;
    println!("config:      {}", dir.config().display());
    print_node_tls(&files);
    println!(
        "next:        lnpd-signer pair --data-dir {0} --device hid, then lnpd-signer run --data-dir {0} --device hid",
        dir.path().display()
    );
    Ok(())
}

fn pair(data_dir: &str, device: &str, yes: bool) -> Result<()> {
    use lnpd_signer::daemon::device_bridge::{self, DeviceSpec, HostKey};
    let dir = DataDir(expand(data_dir));
    std::fs::create_dir_all(dir.path())
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let spec: DeviceSpec = device.parse()?;
    let host = HostKey::load_or_create(&dir.host_key())?;
    let paired = device_bridge::pair(&spec, &host, &dir.paired_device(), |code| {
        if yes {
            return true;
        }
        eprint!("Did the device show {code}? [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok() && line.trim().eq_ignore_ascii_case("y")
    })?;
    println!("paired with device {}", paired.device_key);
    println!("saved:       {}", dir.paired_device().display());
    Ok(())
}

/// `run --device`: the node's calls bridged to the paired hardware signer.
async fn run_device(
    common: Common,
    listen: Option<String>,
    log: Option<String>,
    device: String,
) -> Result<()> {
    use lnpd_signer::daemon::device_bridge::{DeviceBackend, DeviceSpec, HostKey, Paired};
    let dir = DataDir(expand(&common.data_dir));
    let config = ConfigFile::load(&dir.config())?;
    init_logging(log.as_deref().or(config.log.as_deref()).unwrap_or(""));
    let spec: DeviceSpec = device.parse()?;
    let host = HostKey::load_or_create(&dir.host_key())?;
    let paired = Paired::load(&dir.paired_device())?;
    let audit = lnpd_signer::daemon::audit::AuditLog::open(&dir.audit_log())
        .with_context(|| format!("opening {}", dir.audit_log().display()))?;
    let backend = tokio::task::spawn_blocking(move || DeviceBackend::connect(spec, host, paired))
        .await
        .map_err(|e| anyhow!("{e}"))??
        .with_audit(audit);
    let (listener, tls_config, local) = bind(&dir, &config, listen).await?;
    tracing::info!(
        "lnpd-signer bridging {device} (paired, identity proven) on {local} (mutual TLS)"
    );
    println!("listening on {local}");
    server::serve(
        backend,
        listener,
        tls_config,
        config.server.limits()?,
        shutdown_signal(),
    )
    .await?;
    let _ = std::fs::remove_file(dir.listen_addr_file());
    Ok(())
}

/// Listens where `--listen` or signer.toml says (port 0: a free one,
/// written to signer.addr), with the server's TLS configuration.
async fn bind(
    dir: &DataDir,
    config: &ConfigFile,
    listen: Option<String>,
) -> Result<(
    tokio::net::TcpListener,
    tonic::transport::ServerTlsConfig,
    SocketAddr,
)> {
    let listen = listen
        .or(config.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9736".into());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen:?} is not address:port"))?;
    let tls_config = server::tls_config(&tls::TlsFiles::in_dir(&dir.tls()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    std::fs::write(dir.listen_addr_file(), local.to_string())?;
    Ok((listener, tls_config, local))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
    }
    tracing::info!("shutting down");
}

async fn run(common: Common, listen: Option<String>, log: Option<String>) -> Result<()> {
    let Opened {
        dir,
        config,
        signer,
    } = open(&common)?;
    init_logging(log.as_deref().or(config.log.as_deref()).unwrap_or(""));
    let (listener, tls_config, local) = bind(&dir, &config, listen).await?;
    tracing::info!(
        node_id = %signer.node_id(),
        network = signer.network().to_core_arg(),
        channels = signer.channels().count(),
        "lnpd-signer listening on {local} (mutual TLS)"
    );
    for (rule, mode) in &signer.policy().modes {
        if *mode == lnpd_signer::RuleMode::Warn {
            tracing::warn!(
                rule = rule.as_str(),
                "policy rule in warn mode: violations are logged and signed"
            );
        }
    }
    println!("listening on {local}");
    let shutdown = shutdown_signal();
    let audit = lnpd_signer::daemon::audit::AuditLog::open(&dir.audit_log())
        .with_context(|| format!("opening {}", dir.audit_log().display()))?;
    let service = SignerService::new(signer)
        .with_audit(audit)
        .with_allowlist(dir.allowlist())
        .with_approvals(dir.approvals(), config.approval_timeout());
    server::serve(
        service,
        listener,
        tls_config,
        config.server.limits()?,
        shutdown,
    )
    .await?;
    let _ = std::fs::remove_file(dir.listen_addr_file());
    Ok(())
}

fn info(common: Common, json: bool) -> Result<()> {
    let Opened { mut signer, .. } = open(&common)?;
    let desc = signer
        .handle(lnpd_proto::signer::request::Body::GetWalletDescriptor(
            Default::default(),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    let lnpd_proto::signer::reply::Body::GetWalletDescriptor(desc) = desc else {
        bail!("unexpected reply")
    };
    let channels: Vec<_> = signer
        .channels()
        .map(|(id, c)| {
            (
                hex::encode(id.0),
                c.setup.as_ref().map(|s| s.channel_value_sat),
                c.holder_number(),
                c.counterparty_number(),
                c.closing_signed,
            )
        })
        .collect();
    if json {
        let chans: Vec<String> = channels
            .iter()
            .map(|(id, v, h, c, closed)| {
                format!(
                    "{{\"channel_keys_id\":\"{id}\",\"value_sat\":{},\"holder_commitment\":{},\"counterparty_commitment\":{},\"closing_signed\":{closed}}}",
                    v.map_or("null".into(), |v| v.to_string()),
                    h.map_or("null".into(), |v| v.to_string()),
                    c.map_or("null".into(), |v| v.to_string())
                )
            })
            .collect();
        println!(
            "{{\"node_id\":\"{}\",\"network\":\"{}\",\"external_descriptor\":\"{}\",\"internal_descriptor\":\"{}\",\"channels\":[{}]}}",
            signer.node_id(),
            signer.network().to_core_arg(),
            desc.external_descriptor,
            desc.internal_descriptor,
            chans.join(",")
        );
    } else {
        println!("node id:     {}", signer.node_id());
        println!("network:     {}", signer.network().to_core_arg());
        println!("receive:     {}", desc.external_descriptor);
        println!("change:      {}", desc.internal_descriptor);
        println!("channels:    {}", channels.len());
        for (id, v, h, c, closed) in channels {
            println!(
                "  {id}  value={}  holder=#{}  counterparty=#{}{}",
                v.map_or("not set up".into(), |v| format!("{v} sat")),
                h.map_or("-".into(), |v| v.to_string()),
                c.map_or("-".into(), |v| v.to_string()),
                if closed { "  (closing signed)" } else { "" }
            );
        }
    }
    Ok(())
}

fn allowlist(data_dir: &str, action: AllowlistAction) -> Result<()> {
    use lnpd_signer::daemon::allowlist::{parse_entry, Allowlist, Entry};
    let dir = DataDir(expand(data_dir));
    let config = ConfigFile::load(&dir.config())?;
    let network = parse_network(
        config
            .network
            .as_deref()
            .ok_or_else(|| anyhow!("{}: `network` is missing", dir.config().display()))?,
    )?;
    let path = dir.allowlist();
    let mut list = Allowlist::load(&path)?;
    match action {
        AllowlistAction::List => {
            for a in &list.addresses {
                println!("address  {a}");
            }
            for p in &list.payees {
                println!("payee    {p}");
            }
            return Ok(());
        }
        AllowlistAction::Add { entry } => {
            let added = match parse_entry(&entry, network)? {
                Entry::Address(a) => list.addresses.insert(a),
                Entry::Payee(p) => list.payees.insert(p),
            };
            println!(
                "{} {entry}",
                if added { "added" } else { "already allowed:" }
            );
        }
        AllowlistAction::Remove { entry } => {
            let removed = match parse_entry(&entry, network)? {
                Entry::Address(a) => list.addresses.remove(&a),
                Entry::Payee(p) => list.payees.remove(&p),
            };
            if !removed {
                bail!("{entry} is not in the allow-list");
            }
            println!("removed {entry}");
        }
    }
    list.save(&path)?;
    Ok(())
}

fn pending(data_dir: &str, json: bool) -> Result<()> {
    use lnpd_signer::daemon::approvals::{ApprovalDir, Decision};
    let dir = DataDir(expand(data_dir));
    let list = ApprovalDir::new(dir.approvals()).list()?;
    if list.is_empty() && !json {
        println!("no payment waits for approval");
    }
    for (p, answer) in list {
        let answer = match answer {
            None => "waiting",
            Some(Decision::Approved) => "approved (applied when the node asks again)",
            Some(Decision::Denied) => "denied (applied when the node asks again)",
        };
        if json {
            let mut v = serde_json::to_value(&p)?;
            v["answer"] = answer.split(' ').next().unwrap_or(answer).into();
            println!("{v}");
        } else {
            println!(
                "{}  {} sat  to {}  hash {}  requested {}  declined after {}  {answer}",
                p.id,
                p.amount_msat / 1000,
                p.payee,
                p.payment_hash,
                p.requested_at,
                p.deadline
            );
        }
    }
    Ok(())
}

fn answer(data_dir: &str, id: &str, d: lnpd_signer::daemon::approvals::Decision) -> Result<()> {
    let dir = DataDir(expand(data_dir));
    let p = lnpd_signer::daemon::approvals::ApprovalDir::new(dir.approvals())
        .answer_with(id.trim(), d)?;
    println!(
        "{} payment {} of {} sat to {}",
        match d {
            lnpd_signer::daemon::approvals::Decision::Approved => "approved",
            lnpd_signer::daemon::approvals::Decision::Denied => "denied",
        },
        p.id,
        p.amount_msat / 1000,
        p.payee
    );
    Ok(())
}

/// `allowlist add --device`: the entry goes to the device, whose user confirms it.
fn allowlist_on_device(data_dir: &str, device: &str, action: AllowlistAction) -> Result<()> {
    use lnpd_signer::daemon::device_bridge::{self, DeviceSpec, HostKey, Paired};
    let AllowlistAction::Add { entry } = action else {
        bail!("a hardware signer keeps its allow-list itself: only `add` (confirmed on the device) is supported with --device");
    };
    let dir = DataDir(expand(data_dir));
    let spec: DeviceSpec = device.parse()?;
    let host = HostKey::load_or_create(&dir.host_key())?;
    let paired = Paired::load(&dir.paired_device())?;
    println!("confirm {entry} on the device");
    device_bridge::allowlist_add(&spec, &host, &paired, &entry)?;
    println!("added {entry} on the device");
    Ok(())
}

fn show_log(data_dir: &str, json: bool, last: Option<usize>) -> Result<()> {
    let dir = DataDir(expand(data_dir));
    let entries = lnpd_signer::daemon::audit::read(&dir.audit_log())
        .with_context(|| format!("reading {}", dir.audit_log().display()))?;
    let skip = last.map_or(0, |n| entries.len().saturating_sub(n));
    for entry in entries.into_iter().skip(skip) {
        match entry {
            Ok(e) if json => println!("{}", serde_json::to_string(&e)?),
            Ok(e) => println!(
                "{}  {}  {:<32} {:<34} {}  {}",
                e.time,
                e.event,
                e.rule,
                e.operation,
                e.channel
                    .as_deref()
                    .map(|c| &c[..c.len().min(16)])
                    .unwrap_or("-"),
                e.reason
            ),
            Err(why) => eprintln!("warning: unreadable audit entry ({why})"),
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            common,
            network,
            listen,
            tls_hosts,
            for_device: true,
            ..
        } => init_for_device(&common.data_dir, &network, &listen, &tls_hosts),
        Command::Init {
            common,
            network,
            restore,
            listen,
            tls_hosts,
            kdf_memory_kib,
            no_show_mnemonic,
            for_device: false,
        } => init(
            common,
            network,
            restore,
            listen,
            tls_hosts,
            kdf_memory_kib,
            no_show_mnemonic,
        ),
        Command::Run {
            common,
            listen,
            log,
            device,
        } => match tokio::runtime::Builder::new_multi_thread()
            // One worker: requests are served one at a time under the
            // signer's lock anyway, and a second worker only costs a
            // cross-thread wake-up on every request.
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => match device {
                Some(d) => rt.block_on(run_device(common, listen, log, d)),
                None => rt.block_on(run(common, listen, log)),
            },
            Err(e) => Err(anyhow!("cannot start the runtime: {e}")),
        },
        Command::Pair {
            data_dir,
            device,
            yes,
        } => pair(&data_dir, &device, yes),
        Command::Allowlist {
            data_dir,
            device: Some(device),
            action,
        } => allowlist_on_device(&data_dir, &device, action),
        Command::Allowlist {
            data_dir,
            device: None,
            action,
        } => allowlist(&data_dir, action),
        Command::Info { common, json } => info(common, json),
        Command::Log {
            data_dir,
            json,
            last,
        } => show_log(&data_dir, json, last),
        Command::Pending { data_dir, json } => pending(&data_dir, json),
        Command::Approve { data_dir, id } => answer(
            &data_dir,
            &id,
            lnpd_signer::daemon::approvals::Decision::Approved,
        ),
        Command::Deny { data_dir, id } => answer(
            &data_dir,
            &id,
            lnpd_signer::daemon::approvals::Decision::Denied,
        ),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
