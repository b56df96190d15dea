//! `init`: a new (or restored) seed, configuration and TLS material.

use std::net::SocketAddr;

use crate::cli::{Common, SealArgs, SealKind};
use crate::common::{expand, parse_network, random32};
use anyhow::{anyhow, bail, Context, Result};
use lnpd_signer::seed_hsm::HsmSettings;
use lnpd_signer::seed_seal::{self, SealTarget, UnsealedSeed};
use lnpd_signer::{seed_file, tls, DataDir};
use zeroize::Zeroizing;

/// What `init` was asked, besides the data directory.
pub(crate) struct InitArgs {
    pub(crate) network: String,
    pub(crate) restore: bool,
    pub(crate) listen: String,
    pub(crate) tls_hosts: Vec<String>,
    pub(crate) seal: SealKind,
    pub(crate) sealing: SealArgs,
    pub(crate) no_show_mnemonic: bool,
}

/// The sealing `kind` with `args`; `passphrase` is read only for a
/// passphrase sealing.
pub(crate) fn seal_target(
    kind: SealKind,
    args: &SealArgs,
    passphrase: impl FnOnce() -> std::io::Result<Zeroizing<String>>,
) -> Result<SealTarget> {
    Ok(match kind {
        SealKind::Passphrase => {
            let passphrase = passphrase().context("reading the passphrase")?;
            if passphrase.is_empty() {
                bail!("an empty passphrase is not allowed: the seed is encrypted under it");
            }
            SealTarget::Passphrase {
                passphrase,
                m_cost_kib: args.kdf_memory_kib,
            }
        }
        SealKind::Pkcs11 => {
            let missing = |flag: &str| anyhow!("a PKCS#11 sealing needs {flag}");
            let module = args
                .pkcs11_module
                .clone()
                .ok_or_else(|| missing("--pkcs11-module PATH (the HSM's PKCS#11 library)"))?;
            let pin_file = args
                .pin_file
                .clone()
                .ok_or_else(|| missing("--pin-file FILE (the token's user PIN)"))?;
            // Recorded in the sealed file: absolute, so `run` finds them
            // from any working directory.
            let absolute = |p: std::path::PathBuf| {
                std::path::absolute(&p).with_context(|| format!("{}", p.display()))
            };
            SealTarget::Hsm(HsmSettings {
                module: absolute(module)?,
                token: args
                    .token
                    .clone()
                    .ok_or_else(|| missing("--token LABEL (the HSM token to keep the key on)"))?,
                pin_file: absolute(pin_file)?,
            })
        }
    })
}

pub(crate) fn init(common: Common, args: InitArgs) -> Result<()> {
    let InitArgs {
        network,
        restore,
        listen,
        tls_hosts,
        seal,
        sealing,
        no_show_mnemonic,
    } = args;
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
    let seed = UnsealedSeed::from_bytes(&bip39_seed[..])?;
    let target = seal_target(seal, &sealing, || {
        seed_file::read_passphrase(common.passphrase_file.as_deref())
    })?;
    let sealed = seed_seal::seal_new(&dir.seed(), &seed, &target)
        .with_context(|| format!("sealing the seed into {}", dir.seed().display()))?;
    // The HSM's place goes into signer.toml: only it is trusted to load a
    // module (see seed_seal::HsmConfig).
    let seal_section = match &target {
        SealTarget::Hsm(h) => format!(
            "\n[seal]\n# The HSM that sealed seed.enc: its PKCS#11 module and the token's PIN file.\npkcs11_module = {}\npin_file = {}\n",
            toml_string(&h.module),
            toml_string(&h.pin_file)
        ),
        SealTarget::Passphrase { .. } => String::new(),
    };
    let rest = (|| -> Result<tls::TlsFiles> {
        let files = tls::generate(&dir.tls(), &tls_hosts)?;
        let config = format!("# lnpd-signer configuration\nnetwork = \"{}\"\nlisten = \"{listen}\"\n{seal_section}\n[policy]\n# See docs for every limit; defaults are safe.\n", network.to_core_arg());
        std::fs::write(dir.config(), config)
            .with_context(|| format!("writing {}", dir.config().display()))?;
        Ok(files)
    })();
    let files = match rest {
        Ok(f) => f,
        Err(e) => {
            // The mnemonic was never shown: a seed left behind would be one
            // nobody can restore, and would block a new `init`.
            let _ = std::fs::remove_file(dir.seed());
            if let seed_seal::Sealing::Hsm(h) = &sealed {
                eprintln!(
                    "note: key {} on token {:?} sealed the removed seed; delete it there",
                    h.key_label(),
                    h.token
                );
            }
            return Err(e.context("init stopped; the new seed was removed"));
        }
    };

    let secp = bitcoin::secp256k1::Secp256k1::new();
    let keys = lnpd_signer_core::keys::KeyRing::from_seed(&seed, network, &secp)
        .map_err(|e| anyhow!("{e}"))?;
    if !restore && !no_show_mnemonic {
        println!("Your 24-word recovery mnemonic (shown once; write it down, keep it offline):\n");
        println!("    {mnemonic}\n");
    }
    println!("node id:     {}", keys.node_id(&secp));
    println!("network:     {}", network.to_core_arg());
    println!(
        "seed:        {} ({})",
        dir.seed().display(),
        sealed.describe()
    );
    println!("config:      {}", dir.config().display());
    print_node_tls(&files);
    println!(
        "next:        lnpd-signer run --data-dir {}",
        dir.path().display()
    );
    Ok(())
}

/// A path as a TOML basic string.
fn toml_string(p: &std::path::Path) -> String {
    toml_edit::value(p.display().to_string())
        .to_string()
        .trim()
        .to_string()
}

/// Tells the operator which TLS files the node needs.
pub(crate) fn print_node_tls(files: &tls::TlsFiles) {
    println!(
        "node TLS:    give the node {}, {} and {}",
        files.ca_cert.display(),
        files.node_cert.display(),
        files.node_key.display()
    );
}

/// `init --for-device`: TLS material and signer.toml, no seed.
pub(crate) fn init_for_device(
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
