//! The command line: commands and their options (`--help` text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lnpd_signer::seed_file;

/// The lnpd signer: holds the seed, keeps channel state, enforces policy,
/// and signs for one lnpd node over gRPC with mutual TLS.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Signer data directory (seed, state, TLS files, signer.toml).
    #[arg(long, env = "LNPD_SIGNER_DIR", default_value = "~/.lnpd-signer")]
    pub(crate) data_dir: String,
    /// File holding the seed passphrase (else LNPD_SIGNER_PASSPHRASE, else asked on stdin).
    #[arg(long)]
    pub(crate) passphrase_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        /// How to seal the seed at rest: "passphrase" (asked at every start,
        /// or read from --passphrase-file) or "pkcs11" (by a non-extractable
        /// key generated in an HSM; starts unattended with the token's PIN
        /// file; needs --pkcs11-module, --token and --pin-file).
        #[arg(long, value_enum, default_value_t = SealKind::Passphrase)]
        seal: SealKind,
        #[command(flatten)]
        sealing: SealArgs,
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
        /// Open the connection to the node instead of listening: the node's
        /// `--signer-listen` address (host:port), dialled again whenever the
        /// connection ends. For a signer on an isolated machine that must
        /// accept no inbound connection. The same mutual TLS and the same
        /// certificates (the node still presents node.pem, the signer
        /// server.pem). Overrides `listen`; also `connect` in signer.toml.
        #[arg(long, conflicts_with = "listen")]
        connect: Option<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics and readiness at
        /// http://ADDR/healthz (200 when the store takes a durable write and
        /// this process signs; 503 with the reason otherwise). Port 0 picks
        /// one, written to <data-dir>/metrics.addr. Also `metrics_listen`
        /// in signer.toml. Off by default.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Log filter (overrides signer.toml and RUST_LOG), e.g. "info" or "lnpd_signer=debug".
        #[arg(long)]
        log: Option<String>,
        /// Bridge to a hardware signer instead of signing here: "hid" (USB,
        /// vendor 1209 product 4c4e), "hid:<vid>:<pid>", a /dev/hidraw
        /// path, or "sim:<socket>" for lnpd-signer-sim. The device holds the
        /// keys and enforces the policy; pair it first (`pair`).
        #[arg(long)]
        device: Option<String>,
        /// Sign from this state although the node or this machine's state
        /// witness saw a later one (the latest copy of the state is lost).
        /// Channels that moved on since this state stay refused
        /// (state-rollback-detected); without this flag nothing is signed.
        #[arg(long)]
        accept_older_state: bool,
        /// Keep the state in an etcd cluster instead of state.redb:
        /// "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]" (or [store] url in
        /// signer.toml). Several processes with the same data directory
        /// contents (seed, TLS) then serve one node: one active, the others
        /// standing by, taking over when its lease lapses.
        #[arg(long)]
        store: Option<String>,
        /// After each answer, keep polling for the node's next request for
        /// this many microseconds before sleeping (0: off). On a virtual
        /// machine this saves the host's wake-up of an idle CPU on every
        /// request; it costs at most this much CPU time per request.
        #[arg(long, default_value_t = lnpd_proto::busy_poll::DEFAULT_WINDOW.as_micros() as u64)]
        busy_poll_us: u64,
    },
    /// Copy this signer's state (state.redb) into etcd, to run it as
    /// replicas (`run --store`) without closing any channel.
    ///
    /// Stop the daemon first. The copy goes into an empty prefix only, while
    /// no replica is active, and is read back and compared; state.redb is then
    /// renamed state.redb.copied-to-etcd (kept as a backup: running on it
    /// again would be a rollback, which the signer refuses).
    CopyState {
        #[command(flatten)]
        common: Common,
        /// The etcd cluster: "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]" (or
        /// [store] url in signer.toml; TLS options from [store]).
        #[arg(long)]
        store: Option<String>,
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
    /// Seal the seed another way (passphrase <-> HSM, or a new passphrase
    /// or HSM key) without showing it.
    ///
    /// Opens seed.enc as it is sealed now (its passphrase via
    /// --passphrase-file, LNPD_SIGNER_PASSPHRASE or standard input; or its
    /// HSM), writes the new sealing beside it, reads it back, and only then
    /// replaces seed.enc. Stop the daemon first. An HSM key that sealed the
    /// old file stays on its token (its label is printed): delete it there
    /// once the new sealing is known to start.
    Reseal {
        #[command(flatten)]
        common: Common,
        /// The new sealing: "passphrase" or "pkcs11".
        #[arg(long, value_enum)]
        to: SealKind,
        #[command(flatten)]
        sealing: SealArgs,
        /// File holding the new passphrase (`--to passphrase`; else
        /// LNPD_SIGNER_NEW_PASSPHRASE, else asked on standard input).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
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

/// How the seed is sealed at rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SealKind {
    /// Argon2id + XChaCha20-Poly1305 under the operator's passphrase.
    Passphrase,
    /// AES-256-GCM under a non-extractable key inside an HSM (PKCS#11).
    Pkcs11,
}

/// Parameters of a new sealing.
#[derive(Args, Clone)]
pub(crate) struct SealArgs {
    /// Argon2id memory cost in KiB for a passphrase sealing (default 64 MiB).
    #[arg(long, default_value_t = seed_file::DEFAULT_M_COST_KIB)]
    pub(crate) kdf_memory_kib: u32,
    /// The HSM vendor's PKCS#11 module, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so (SoftHSM2) or the path the vendor's
    /// client installs.
    #[arg(long, env = "LNPD_PKCS11_MODULE")]
    pub(crate) pkcs11_module: Option<PathBuf>,
    /// The label of the HSM token (partition) to keep the key on.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// File holding the token's user PIN (one line; keep it mode 0600).
    #[arg(long)]
    pub(crate) pin_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum AllowlistAction {
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
