//! The files of a signer data directory.

use std::path::{Path, PathBuf};

/// Files of a signer data directory.
#[derive(Clone, Debug)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The encrypted seed.
    pub fn seed(&self) -> PathBuf {
        self.0.join("seed.enc")
    }
    /// The state database.
    pub fn state(&self) -> PathBuf {
        self.0.join("state.redb")
    }
    /// The highest state counter this signer acknowledged (anti-rollback).
    pub fn witness(&self) -> PathBuf {
        self.0.join("state.witness")
    }
    /// The TLS directory.
    pub fn tls(&self) -> PathBuf {
        self.0.join("tls")
    }
    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.0.join("signer.toml")
    }
    /// The operator's allow-list.
    pub fn allowlist(&self) -> PathBuf {
        self.0.join("allowlist.json")
    }
    /// This host's key for pairing with a hardware signer.
    pub fn host_key(&self) -> PathBuf {
        self.0.join("host.key")
    }
    /// The hardware signer paired with this host.
    pub fn paired_device(&self) -> PathBuf {
        self.0.join("device.json")
    }
    /// Payments waiting for the operator's approval.
    pub fn approvals(&self) -> PathBuf {
        self.0.join("approvals")
    }
    /// The audit log of refusals.
    pub fn audit_log(&self) -> PathBuf {
        self.0.join("audit.log")
    }
    /// Where `run` writes the address it listens on.
    pub fn listen_addr_file(&self) -> PathBuf {
        self.0.join("signer.addr")
    }
    /// Where `run --metrics-listen` writes the address of its metrics endpoint.
    pub fn metrics_addr_file(&self) -> PathBuf {
        self.0.join("metrics.addr")
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}
