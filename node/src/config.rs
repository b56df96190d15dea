//! The node's configuration: `lnpd.toml` in the data directory, overridden
//! by command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings of one node. Every field can come from the file or a flag.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// bitcoin, testnet, signet or regtest.
    pub network: Option<String>,
    /// Bitcoin Core (or bcoin) JSON-RPC URL, e.g. http://127.0.0.1:18443/.
    pub bitcoind_rpc_url: Option<String>,
    /// RPC user.
    pub bitcoind_rpc_user: Option<String>,
    /// RPC password.
    pub bitcoind_rpc_password: Option<String>,
    /// Feerate used when the backend has no estimate (sat per 1000 weight).
    pub fallback_feerate_sat_per_kw: Option<u32>,
    /// The signer, host:port.
    pub signer: Option<String>,
    /// Where to accept the signer's own connection instead of dialling it.
    pub signer_listen: Option<String>,
    /// The addresses the signer may connect from (comma-separated; all
    /// when absent).
    pub signer_allow_from: Option<String>,
    /// Directory with the signer's ca.pem and the node's node.pem/node.key.
    pub signer_tls_dir: Option<PathBuf>,
    /// Name the signer's certificate is checked against (default localhost).
    pub signer_tls_name: Option<String>,
    /// Lightning peer-to-peer listen address (port 0: any free port).
    pub listen: Option<String>,
    /// Admin gRPC listen address (loopback; port 0: any free port).
    pub admin_listen: Option<String>,
    /// Node alias.
    pub alias: Option<String>,
    /// Where to serve metrics and `/healthz` (off when absent).
    pub metrics_listen: Option<String>,
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable or malformed file.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A required setting is missing.
    #[error("missing setting `{0}` (in lnpd.toml or as --{1})")]
    Missing(&'static str, &'static str),
}

impl NodeConfig {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeConfig::default()),
            Err(e) => Err(ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Flags win over the file.
    pub fn merge(self, flags: NodeConfig) -> NodeConfig {
        NodeConfig {
            network: flags.network.or(self.network),
            bitcoind_rpc_url: flags.bitcoind_rpc_url.or(self.bitcoind_rpc_url),
            bitcoind_rpc_user: flags.bitcoind_rpc_user.or(self.bitcoind_rpc_user),
            bitcoind_rpc_password: flags.bitcoind_rpc_password.or(self.bitcoind_rpc_password),
            fallback_feerate_sat_per_kw: flags
                .fallback_feerate_sat_per_kw
                .or(self.fallback_feerate_sat_per_kw),
            signer: flags.signer.or(self.signer),
            signer_listen: flags.signer_listen.or(self.signer_listen),
            signer_allow_from: flags.signer_allow_from.or(self.signer_allow_from),
            signer_tls_dir: flags.signer_tls_dir.or(self.signer_tls_dir),
            signer_tls_name: flags.signer_tls_name.or(self.signer_tls_name),
            listen: flags.listen.or(self.listen),
            admin_listen: flags.admin_listen.or(self.admin_listen),
            alias: flags.alias.or(self.alias),
            metrics_listen: flags.metrics_listen.or(self.metrics_listen),
        }
    }
}

/// Returns a required setting.
pub fn required<T: Clone>(
    v: &Option<T>,
    name: &'static str,
    flag: &'static str,
) -> Result<T, ConfigError> {
    v.clone().ok_or(ConfigError::Missing(name, flag))
}

/// A path from a flag or config, with a leading `~/` meaning `$HOME`.
pub fn expand_home(dir: &str) -> std::path::PathBuf {
    match (dir.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => std::path::PathBuf::from(dir),
    }
}
