//! The signer's config file (`signer.toml` in the data directory), merged
//! with command-line flags. Every limit has a safe default.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use lnpd_signer_core::{PolicyConfig, RuleId, RuleMode};

/// How long a payment waits for approval unless configured (10 minutes).
pub const DEFAULT_APPROVAL_TIMEOUT_SECS: u64 = 600;

/// The config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Bitcoin network: bitcoin, testnet, signet, regtest.
    pub network: Option<String>,
    /// Address the gRPC server listens on, e.g. "127.0.0.1:9736".
    pub listen: Option<String>,
    /// The node's `--signer-listen` address: dial it instead of listening.
    pub connect: Option<String>,
    /// Where to serve metrics and `/healthz` (off when absent).
    pub metrics_listen: Option<String>,
    /// Log filter, e.g. "info" or "lnpd_signer=debug".
    pub log: Option<String>,
    /// Policy limits and rule modes.
    #[serde(default)]
    pub policy: PolicySection,
    /// Where the signer's view of the chain starts.
    #[serde(default)]
    pub chain: ChainSection,
    /// Connection limits of the gRPC server.
    #[serde(default)]
    pub server: ServerSection,
    /// Where the state lives (default: state.redb in the data directory).
    #[serde(default)]
    pub store: StoreSection,
    /// Where the HSM of an HSM-sealed seed is on this machine.
    #[serde(default)]
    pub seal: SealSection,
}

/// `[seal]`: for a seed sealed by an HSM, where its PKCS#11 module and PIN
/// file are on this machine (the token and key come from the sealed file,
/// authenticated by the HSM's decryption).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealSection {
    /// The PKCS#11 module (shared library).
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The file holding the token's user PIN.
    pub pin_file: Option<std::path::PathBuf>,
}

impl SealSection {
    /// These paths, for opening the seed.
    pub fn hsm(&self) -> crate::seed_seal::HsmConfig {
        crate::seed_seal::HsmConfig {
            module: self.pkcs11_module.clone(),
            pin_file: self.pin_file.clone(),
        }
    }
}

/// Writes `[seal]` into signer.toml at `path` (`Some`: the HSM's module and
/// PIN file; `None`: removes the section), keeping everything else as the
/// operator wrote it; replaced atomically.
pub fn set_seal(path: &Path, hsm: Option<(&Path, &Path)>) -> Result<(), ConfigError> {
    let io = |source: std::io::Error| ConfigError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
    match hsm {
        Some((module, pin_file)) => {
            let text = |p: &Path| p.display().to_string();
            // A `[seal]` section of its own (not an inline table).
            if !doc.contains_table("seal") {
                doc.remove("seal");
                doc["seal"] = toml_edit::table();
            }
            doc["seal"]["pkcs11_module"] = toml_edit::value(text(module));
            doc["seal"]["pin_file"] = toml_edit::value(text(pin_file));
        }
        None => {
            doc.remove("seal");
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, doc.to_string()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `[store]`: the local redb file (default) or an etcd cluster shared by
/// replicas of this signer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"; absent: redb.
    pub url: Option<String>,
    /// Key prefix in etcd (default "lnpd-signer/<node id>").
    pub prefix: Option<String>,
    /// Leadership lease of a replica, seconds (default 5; at least 2).
    pub lease_ttl_secs: Option<u64>,
    /// CA certificate of the etcd cluster (PEM): TLS towards etcd.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate for etcd (PEM).
    pub tls_cert: Option<std::path::PathBuf>,
    /// Client key for etcd (PEM).
    pub tls_key: Option<std::path::PathBuf>,
    /// This replica's name in "standby, active is NAME at ADDR" (default:
    /// the address it listens on).
    pub replica_name: Option<String>,
    /// Where nodes reach this replica (default: the address it listens on).
    pub advertise: Option<String>,
}

impl StoreSection {
    /// The etcd settings, if the state lives in etcd (`url` overrides
    /// the file's); `node_id` names the default prefix.
    pub fn etcd(
        &self,
        url: Option<&str>,
        node_id: &str,
    ) -> Result<Option<crate::etcd::EtcdSettings>, ConfigError> {
        let Some(url) = url.or(self.url.as_deref()) else {
            return Ok(None);
        };
        let (endpoints, prefix) = crate::etcd::EtcdSettings::parse_url(url)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (Some(ca), cert, key) if cert.is_some() == key.is_some() => {
                Some(crate::etcd::EtcdTls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "[store] TLS needs tls_ca, and tls_cert with tls_key or neither".into(),
                ))
            }
        };
        let ttl = self.lease_ttl_secs.unwrap_or(5);
        if ttl < 2 {
            return Err(ConfigError::Invalid(
                "[store] lease_ttl_secs must be at least 2".into(),
            ));
        }
        Ok(Some(crate::etcd::EtcdSettings {
            endpoints,
            prefix: prefix
                .or(self.prefix.clone())
                .unwrap_or_else(|| format!("lnpd-signer/{node_id}")),
            tls,
            lease_ttl: std::time::Duration::from_secs(ttl),
        }))
    }
}

/// `[server]`: connection limits.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Longest a client's TLS handshake may take (seconds; default 10).
    pub handshake_timeout_secs: Option<u64>,
    /// Most connections held at once (default 256).
    pub max_connections: Option<usize>,
    /// Most connections held at once from one address (default 32).
    pub max_connections_per_ip: Option<usize>,
}

impl ServerSection {
    /// The limits this section describes.
    pub fn limits(&self) -> Result<crate::server::ServerLimits, ConfigError> {
        let d = crate::server::ServerLimits::default();
        let l = crate::server::ServerLimits {
            handshake_timeout: self
                .handshake_timeout_secs
                .map(std::time::Duration::from_secs)
                .unwrap_or(d.handshake_timeout),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip),
        };
        if l.handshake_timeout.is_zero() || l.max_connections == 0 || l.max_connections_per_ip == 0
        {
            return Err(ConfigError::Invalid(
                "[server]: limits must be above zero".into(),
            ));
        }
        Ok(l)
    }
}

/// `[chain]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSection {
    /// `<height>:<block header hex>` the header chain starts from instead of
    /// the genesis block (on mainnet, spares the node feeding every header
    /// since 2009). Take it from a node you trust:
    /// `bitcoin-cli getblockheader $(bitcoin-cli getblockhash H) false`.
    pub checkpoint: Option<String>,
}

/// `[policy]`: limits, and `[policy.rules]`: per-rule "enforce" or "warn".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Shortest to_self_delay either side may have (blocks).
    pub min_to_self_delay: Option<u16>,
    /// Longest to_self_delay either side may have (blocks).
    pub max_to_self_delay: Option<u16>,
    /// Largest channel (sat).
    pub max_channel_value_sat: Option<u64>,
    /// Smallest dust limit (sat).
    pub min_dust_limit_sat: Option<u64>,
    /// Largest dust limit (sat).
    pub max_dust_limit_sat: Option<u64>,
    /// Lowest commitment feerate (sat/kw).
    pub min_feerate_per_kw: Option<u32>,
    /// Highest commitment feerate (sat/kw).
    pub max_feerate_per_kw: Option<u32>,
    /// Most HTLCs in one commitment.
    pub max_htlcs: Option<usize>,
    /// Most value in HTLCs in one commitment (sat).
    pub max_htlc_inflight_sat: Option<u64>,
    /// Most value left out of a commitment's outputs (trimmed HTLCs), sat.
    pub max_dust_exposure_sat: Option<u64>,
    /// Highest feerate of mutual closes and sweeps (sat/kw).
    pub max_onchain_feerate_per_kw: Option<u32>,
    /// Let channels we fund push value to the peer at open.
    pub allow_push: Option<bool>,
    /// Largest single outgoing payment (sat).
    pub max_payment_sat: Option<u64>,
    /// Most paid within the velocity window (sat).
    pub velocity_limit_sat: Option<u64>,
    /// The velocity window (seconds).
    pub velocity_window_secs: Option<u64>,
    /// Receive-only mode.
    pub merchant_no_sends: Option<bool>,
    /// Forwards only against an incoming HTLC of at least the same value.
    pub routing_balanced: Option<bool>,
    /// Pay only invoices the node showed.
    pub payment_invoiced: Option<bool>,
    /// Pay only payees on the allow-list.
    pub payee_allowlist: Option<bool>,
    /// Routing fee allowance over an invoice's amount (millionths).
    pub invoice_fee_allowance_ppm: Option<u64>,
    /// Own payments above this (sat) wait for `lnpd-signer approve`.
    pub approval_above_sat: Option<u64>,
    /// How long a payment waits for approval before it is declined (s).
    pub approval_timeout_secs: Option<u64>,
    /// How far past the chain tip an HTLC we offer may expire (blocks).
    pub max_htlc_cltv_window: Option<u32>,
    /// How far past the chain tip a sweep's locktime may be (blocks).
    pub max_sweep_locktime_ahead: Option<u32>,
    /// Most value lost, net, to trimmed outputs over a channel's life (sat).
    pub max_trimmed_loss_sat: Option<u64>,
    /// Largest share of a sweep's value its fee may take (percent).
    pub max_sweep_fee_percent: Option<u64>,
    /// Most the wallet pays in fees within the window (sat); 0: no budget.
    pub onchain_fee_budget_sat: Option<u64>,
    /// Fewest blocks between a forward's expiry and its incoming HTLC's.
    pub forward_min_cltv_delta: Option<u32>,
    /// Confirmations a funding needs before its HTLCs cover forwards.
    pub min_funding_confirmations: Option<u32>,
    /// Most keys ids issued but not set up.
    pub max_pending_channels: Option<usize>,
    /// Most channels set up.
    pub max_channels: Option<usize>,
    /// Most wallet scripts handed out.
    pub max_wallet_scripts: Option<u32>,
    /// Rule id -> "enforce" | "warn".
    #[serde(default)]
    pub rules: BTreeMap<String, String>,
}

/// Why the config is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Bad TOML or unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(source) => Err(ConfigError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// How long a payment waits for the operator's approval.
    pub fn approval_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.policy
                .approval_timeout_secs
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT_SECS),
        )
    }

    /// The policy this config describes.
    pub fn policy(&self) -> Result<PolicyConfig, ConfigError> {
        let p = &self.policy;
        let d = PolicyConfig::default();
        let mut cfg = PolicyConfig {
            modes: Default::default(),
            min_to_self_delay: p.min_to_self_delay.unwrap_or(d.min_to_self_delay),
            max_to_self_delay: p.max_to_self_delay.unwrap_or(d.max_to_self_delay),
            max_channel_value_sat: p.max_channel_value_sat.unwrap_or(d.max_channel_value_sat),
            min_dust_limit_sat: p.min_dust_limit_sat.unwrap_or(d.min_dust_limit_sat),
            max_dust_limit_sat: p.max_dust_limit_sat.unwrap_or(d.max_dust_limit_sat),
            min_feerate_per_kw: p.min_feerate_per_kw.unwrap_or(d.min_feerate_per_kw),
            max_feerate_per_kw: p.max_feerate_per_kw.unwrap_or(d.max_feerate_per_kw),
            max_htlcs: p.max_htlcs.unwrap_or(d.max_htlcs),
            max_htlc_inflight_sat: p.max_htlc_inflight_sat.unwrap_or(d.max_htlc_inflight_sat),
            max_dust_exposure_sat: p.max_dust_exposure_sat.unwrap_or(d.max_dust_exposure_sat),
            max_trimmed_loss_sat: p.max_trimmed_loss_sat.unwrap_or(d.max_trimmed_loss_sat),
            max_sweep_fee_percent: p.max_sweep_fee_percent.unwrap_or(d.max_sweep_fee_percent),
            onchain_fee_budget_sat: match p.onchain_fee_budget_sat {
                Some(0) => None,
                Some(b) => Some(b),
                None => d.onchain_fee_budget_sat,
            },
            forward_min_cltv_delta: p.forward_min_cltv_delta.unwrap_or(d.forward_min_cltv_delta),
            min_funding_confirmations: p
                .min_funding_confirmations
                .unwrap_or(d.min_funding_confirmations),
            max_pending_channels: p.max_pending_channels.unwrap_or(d.max_pending_channels),
            max_channels: p.max_channels.unwrap_or(d.max_channels),
            max_wallet_scripts: p.max_wallet_scripts.unwrap_or(d.max_wallet_scripts),
            max_onchain_feerate_per_kw: p
                .max_onchain_feerate_per_kw
                .unwrap_or(d.max_onchain_feerate_per_kw),
            allow_push: p.allow_push.unwrap_or(d.allow_push),
            max_payment_sat: p.max_payment_sat,
            velocity_limit_sat: p.velocity_limit_sat,
            velocity_window_secs: p.velocity_window_secs.unwrap_or(d.velocity_window_secs),
            merchant_no_sends: p.merchant_no_sends.unwrap_or(d.merchant_no_sends),
            routing_balanced: p.routing_balanced.unwrap_or(d.routing_balanced),
            payment_invoiced: p.payment_invoiced.unwrap_or(d.payment_invoiced),
            payee_allowlist: p.payee_allowlist.unwrap_or(d.payee_allowlist),
            invoice_fee_allowance_ppm: p
                .invoice_fee_allowance_ppm
                .unwrap_or(d.invoice_fee_allowance_ppm),
            approval_above_sat: p.approval_above_sat,
            max_htlc_cltv_window: p.max_htlc_cltv_window.unwrap_or(d.max_htlc_cltv_window),
            max_sweep_locktime_ahead: p
                .max_sweep_locktime_ahead
                .unwrap_or(d.max_sweep_locktime_ahead),
            chain_checkpoint: match &self.chain.checkpoint {
                Some(c) => Some(lnpd_signer_core::chain::Checkpoint::parse(c).map_err(|e| {
                    ConfigError::Invalid(format!("[chain] checkpoint: {}", e.message))
                })?),
                None => None,
            },
            allowed_scripts: Default::default(),
            allowed_payees: Default::default(),
        };
        if cfg.max_sweep_fee_percent > 100 {
            return Err(ConfigError::Invalid(
                "[policy] max_sweep_fee_percent is a percentage (0 to 100)".into(),
            ));
        }
        if cfg.min_to_self_delay > cfg.max_to_self_delay
            || cfg.min_dust_limit_sat > cfg.max_dust_limit_sat
            || cfg.min_feerate_per_kw > cfg.max_feerate_per_kw
        {
            return Err(ConfigError::Invalid(
                "[policy]: a min_* limit is above its max_*".into(),
            ));
        }
        for (id, mode) in &p.rules {
            let rule = RuleId::parse(id).ok_or_else(|| {
                ConfigError::Invalid(format!("[policy.rules]: unknown rule id {id:?}"))
            })?;
            let mode = match mode.as_str() {
                "enforce" => RuleMode::Enforce,
                "warn" => RuleMode::Warn,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "[policy.rules]: {id} = {other:?}; use \"enforce\" or \"warn\""
                    )))
                }
            };
            cfg.modes.insert(rule, mode);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_and_modes() {
        let c: ConfigFile = toml::from_str(
            "network = \"regtest\"\n[policy]\nmax_htlcs = 10\n[policy.rules]\n\"commitment-fee-range\" = \"warn\"\n",
        )
        .unwrap();
        let p = c.policy().unwrap();
        assert_eq!(p.max_htlcs, 10);
        assert_eq!(p.mode(RuleId::CommitmentFeeRange), RuleMode::Warn);
        assert_eq!(p.mode(RuleId::CommitmentHtlcCountMax), RuleMode::Enforce);
    }

    #[test]
    fn parses_the_chain_checkpoint_and_approval_settings() {
        // Regtest's genesis header.
        let genesis = "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4adae5494dffff7f2002000000";
        let c: ConfigFile = toml::from_str(&format!(
            "[policy]\napproval_above_sat = 50000\napproval_timeout_secs = 30\nmax_sweep_locktime_ahead = 3\n[chain]\ncheckpoint = \"0:{genesis}\"\n"
        ))
        .unwrap();
        let p = c.policy().unwrap();
        assert_eq!(p.approval_above_sat, Some(50_000));
        assert_eq!(c.approval_timeout(), std::time::Duration::from_secs(30));
        assert_eq!(p.max_sweep_locktime_ahead, 3);
        assert_eq!(p.max_htlc_cltv_window, 2_016);
        assert_eq!(
            p.chain_checkpoint,
            Some(lnpd_signer_core::chain::Checkpoint::genesis(
                bitcoin::Network::Regtest
            ))
        );
        let bad: ConfigFile = toml::from_str("[chain]\ncheckpoint = \"12:abcd\"\n").unwrap();
        assert!(bad
            .policy()
            .unwrap_err()
            .to_string()
            .contains("[chain] checkpoint"));
    }

    #[test]
    fn rejects_unknown_rules_and_keys() {
        let c: ConfigFile =
            toml::from_str("[policy.rules]\n\"no-such-rule\" = \"warn\"\n").unwrap();
        assert!(c.policy().is_err());
        assert!(toml::from_str::<ConfigFile>("netwrk = \"regtest\"\n").is_err());
    }
}
