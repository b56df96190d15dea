//! What the commands share: paths, network names, logging, randomness and
//! opening a data directory's signer.

use std::path::PathBuf;

use crate::cli::Common;
use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use lnpd_signer::config::ConfigFile;
use lnpd_signer::store_redb::RedbStore;
use lnpd_signer::{seed_file, DataDir};
use lnpd_signer_core::Signer;

pub(crate) fn expand(dir: &str) -> PathBuf {
    match (dir.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(dir),
    }
}

pub(crate) fn parse_network(s: &str) -> Result<Network> {
    Network::from_core_arg(s)
        .map_err(|_| anyhow!("unknown network {s:?}: use bitcoin, testnet, signet or regtest"))
}

pub(crate) fn init_logging(filter: &str) {
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

/// The data directory's signer.toml and the network it names.
pub(crate) fn config_of(dir: &DataDir) -> Result<(ConfigFile, Network)> {
    let config = ConfigFile::load(&dir.config())?;
    let network = parse_network(
        config
            .network
            .as_deref()
            .ok_or_else(|| anyhow!("{}: `network` is missing", dir.config().display()))?,
    )?;
    Ok((config, network))
}

pub(crate) fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // getrandom only fails if the OS has no entropy source; nothing safe can go on then.
    if let Err(e) = getrandom::fill(&mut b) {
        eprintln!("fatal: no OS randomness: {e}");
        std::process::exit(1);
    }
    b
}

/// A data directory's signer, opened.
pub(crate) struct Opened {
    pub(crate) dir: DataDir,
    pub(crate) config: ConfigFile,
    pub(crate) signer: Signer<RedbStore>,
    pub(crate) sealing: lnpd_signer::seed_seal::Sealing,
}

/// What opening a signer takes, read from a data directory.
pub(crate) struct Parts {
    pub(crate) dir: DataDir,
    pub(crate) config: ConfigFile,
    pub(crate) network: Network,
    pub(crate) policy: lnpd_signer_core::PolicyConfig,
    pub(crate) seed: lnpd_signer::seed_seal::UnsealedSeed,
    pub(crate) sealing: lnpd_signer::seed_seal::Sealing,
}

pub(crate) fn open_parts(common: &Common) -> Result<Parts> {
    let dir = DataDir(expand(&common.data_dir));
    if !dir.seed().exists() {
        bail!(
            "no seed at {}: run `lnpd-signer init --data-dir {}` first",
            dir.seed().display(),
            dir.path().display()
        );
    }
    let (config, network) = config_of(&dir)?;
    let policy = config.policy()?;
    let (seed, sealing) = lnpd_signer::seed_seal::unseal(
        &dir.seed(),
        || seed_file::read_passphrase(common.passphrase_file.as_deref()),
        &config.seal.hsm(),
    )
    .with_context(|| format!("opening {}", dir.seed().display()))?;
    tracing::debug!("seed opened: {}", sealing.describe());
    Ok(Parts {
        dir,
        config,
        network,
        policy,
        seed,
        sealing,
    })
}

impl Parts {
    /// The node id this seed gives.
    pub(crate) fn node_id(&self) -> Result<bitcoin::secp256k1::PublicKey> {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        Ok(
            lnpd_signer_core::keys::KeyRing::from_seed(&self.seed, self.network, &secp)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .node_id(&secp),
        )
    }

    /// Where the state lives in etcd: `url` (`--store`) or `[store] url`,
    /// under `[store] prefix` or `lnpd-signer/<node id>`.
    pub(crate) fn etcd_settings(
        &self,
        url: Option<&str>,
    ) -> Result<lnpd_signer::etcd::EtcdSettings> {
        self.config
            .store
            .etcd(url, &self.node_id()?.to_string())?
            .ok_or_else(|| {
                anyhow::anyhow!("no etcd store given (--store etcd://HOST:PORT or [store] url)")
            })
    }
}

pub(crate) fn open(common: &Common) -> Result<Opened> {
    let Parts {
        dir,
        config,
        network,
        policy,
        seed,
        sealing,
    } = open_parts(common)?;
    let store = RedbStore::open(&dir.state()).map_err(|e| anyhow!("{e}"))?;
    let signer = Signer::new(&seed, network, policy, store, Box::new(random32))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(Opened {
        dir,
        config,
        signer,
        sealing,
    })
}
