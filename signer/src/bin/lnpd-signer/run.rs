//! `run`: the signer served over gRPC with mutual TLS, by this process's
//! core or a paired hardware signer.

use std::net::SocketAddr;

use crate::cli::Common;
use crate::common::{expand, init_logging, open, Opened};
use anyhow::{anyhow, Context, Result};
use lnpd_signer::config::ConfigFile;
use lnpd_signer::server::{self, SignerService};
use lnpd_signer::{tls, DataDir};

/// `run --device`: the node's calls bridged to the paired hardware signer.
pub(crate) async fn run_device(
    common: Common,
    listen: Option<String>,
    log: Option<String>,
    device: String,
) -> Result<()> {
    use lnpd_signer::device_bridge::{DeviceBackend, DeviceSpec, HostKey, Paired};
    let dir = DataDir(expand(&common.data_dir));
    let config = ConfigFile::load(&dir.config())?;
    init_logging(log.as_deref().or(config.log.as_deref()).unwrap_or(""));
    let spec: DeviceSpec = device.parse()?;
    let host = HostKey::load_or_create(&dir.host_key())?;
    let paired = Paired::load(&dir.paired_device())?;
    let audit = lnpd_signer::audit::AuditLog::open(&dir.audit_log())
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
pub(crate) async fn bind(
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
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
    }
    tracing::info!("shutting down");
}

pub(crate) async fn run(common: Common, listen: Option<String>, log: Option<String>) -> Result<()> {
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
        if *mode == lnpd_signer_core::RuleMode::Warn {
            tracing::warn!(
                rule = rule.as_str(),
                "policy rule in warn mode: violations are logged and signed"
            );
        }
    }
    println!("listening on {local}");
    let shutdown = shutdown_signal();
    let audit = lnpd_signer::audit::AuditLog::open(&dir.audit_log())
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
