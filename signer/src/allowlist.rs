//! The operator's allow-list: addresses funds may go to besides the wallet,
//! and payee node ids. It lives in `allowlist.json` in the data directory,
//! is edited only by `lnpd-signer allowlist` on the signer's machine (never
//! over the node's connection), and the daemon picks up changes by itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use bitcoin::{Address, Network};
use serde::{Deserialize, Serialize};

/// The allow-list file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowlist {
    /// Bitcoin addresses.
    #[serde(default)]
    pub addresses: BTreeSet<String>,
    /// Payee node ids (hex, 33 bytes).
    #[serde(default)]
    pub payees: BTreeSet<String>,
}

/// A bad entry or an unreadable file.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    /// Disk error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Neither an address of the signer's network nor a node id.
    #[error("{0:?} is neither a {1} address nor a 33-byte hex node id")]
    Entry(String, &'static str),
}

/// What an entry is.
pub enum Entry {
    /// An address, as given.
    Address(String),
    /// A node id, lower-case hex.
    Payee(String),
}

/// Classifies an entry for `network`.
pub fn parse_entry(s: &str, network: Network) -> Result<Entry, AllowlistError> {
    let s = s.trim();
    if s.len() == 66 && bitcoin::secp256k1::PublicKey::from_str(s).is_ok() {
        return Ok(Entry::Payee(s.to_ascii_lowercase()));
    }
    match Address::from_str(s)
        .ok()
        .and_then(|a| a.require_network(network).ok())
    {
        Some(_) => Ok(Entry::Address(s.to_string())),
        None => Err(AllowlistError::Entry(s.to_string(), network.to_core_arg())),
    }
}

impl Allowlist {
    /// Reads the file (a missing file is an empty list).
    pub fn load(path: &Path) -> Result<Self, AllowlistError> {
        match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| AllowlistError::Format {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Allowlist::default()),
            Err(source) => Err(AllowlistError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), AllowlistError> {
        let io = |source| AllowlistError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| AllowlistError::Format {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The output scripts and payee keys, for the policy. Entries that do
    /// not parse for `network` are skipped with an error log.
    pub fn resolve(&self, network: Network) -> (BTreeSet<Vec<u8>>, BTreeSet<[u8; 33]>) {
        let mut scripts = BTreeSet::new();
        for a in &self.addresses {
            match Address::from_str(a)
                .ok()
                .and_then(|a| a.require_network(network).ok())
            {
                Some(addr) => {
                    scripts.insert(addr.script_pubkey().to_bytes());
                }
                None => tracing::error!(
                    "allow-list: {a:?} is not a {} address; ignored",
                    network.to_core_arg()
                ),
            }
        }
        let mut payees = BTreeSet::new();
        for p in &self.payees {
            match bitcoin::secp256k1::PublicKey::from_str(p) {
                Ok(pk) => {
                    payees.insert(pk.serialize());
                }
                Err(_) => tracing::error!("allow-list: {p:?} is not a node id; ignored"),
            }
        }
        (scripts, payees)
    }
}

/// Reloads the allow-list when its file changes.
pub struct AllowlistWatcher {
    path: PathBuf,
    seen: Option<SystemTime>,
    loaded_once: bool,
}

impl AllowlistWatcher {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        AllowlistWatcher {
            path,
            seen: None,
            loaded_once: false,
        }
    }

    /// The list, if the file changed since the last call (or on the first call).
    pub fn changed(&mut self) -> Option<Allowlist> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if self.loaded_once && mtime == self.seen {
            return None;
        }
        self.seen = mtime;
        self.loaded_once = true;
        match Allowlist::load(&self.path) {
            Ok(list) => Some(list),
            Err(e) => {
                tracing::error!("allow-list not reloaded, keeping the previous one: {e}");
                None
            }
        }
    }
}
