//! `run`: the signer served over gRPC with mutual TLS, by this process's
//! core or a paired hardware signer.

use std::net::SocketAddr;

use crate::cli::Common;
use crate::common::{expand, init_logging, open, Opened};
use anyhow::{anyhow, bail, Context, Result};
use lnpd_signer::config::ConfigFile;
use lnpd_signer::server::{self, SignerService};
use lnpd_signer::{tls, DataDir};

/// `run --device`: the node's calls bridged to the paired hardware signer.
pub(crate) async fn run_device(
    common: Common,
    reach: Reach,
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
    let (endpoints, local) = bind(&dir, &config, reach).await?;
    tracing::info!("lnpd-signer bridging {device} (paired, identity proven), {local} (mutual TLS)");
    println!("{local}");
    server::serve(
        backend,
        endpoints.incoming,
        endpoints.tls,
        config.server.limits()?,
        endpoints.metrics,
        shutdown_signal(),
    )
    .await?;
    let _ = std::fs::remove_file(dir.listen_addr_file());
    let _ = std::fs::remove_file(dir.metrics_addr_file());
    Ok(())
}

/// Where the node's connections come from: dialled to `--connect` (or
/// signer.toml `connect`), else accepted where `--listen` or signer.toml
/// says (port 0: a free one, written to signer.addr); with the server's
/// TLS configuration and a line for the log.
pub(crate) async fn bind(
    dir: &DataDir,
    config: &ConfigFile,
    reach: Reach,
) -> Result<(Endpoints, Bound)> {
    let Reach {
        listen,
        connect,
        metrics,
    } = reach;
    let tls_config = server::tls_config(&tls::TlsFiles::in_dir(&dir.tls()))?;
    let metrics = match metrics.or(config.metrics_listen.clone()) {
        Some(addr) => {
            let handle = lnpd_telemetry::install()?;
            let listener = lnpd_telemetry::bind(&addr, Some(dir.metrics_addr_file().as_path()))?;
            Some(server::Metrics { listener, handle })
        }
        None => None,
    };
    if let Some(node) = connect.or(config.connect.clone()) {
        if !node.contains(':') {
            bail!("--connect {node:?} must be host:port (the node's --signer-listen)");
        }
        let _ = std::fs::remove_file(dir.listen_addr_file());
        return Ok((
            Endpoints {
                incoming: server::Incoming::Dial(node.clone()),
                tls: tls_config,
                metrics,
            },
            Bound::Dialling(node),
        ));
    }
    let listen = listen
        .or(config.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9736".into());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen:?} is not address:port"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    std::fs::write(dir.listen_addr_file(), local.to_string())?;
    Ok((
        Endpoints {
            incoming: server::Incoming::Listen(listener),
            tls: tls_config,
            metrics,
        },
        Bound::Listening(local),
    ))
}

/// How the node reaches this signer (`--listen` / `--connect`), and the
/// operator its metrics (`--metrics-listen`).
pub(crate) struct Reach {
    pub(crate) listen: Option<String>,
    pub(crate) connect: Option<String>,
    pub(crate) metrics: Option<String>,
}

/// What the daemon serves on, once bound.
pub(crate) struct Endpoints {
    /// The node's connections.
    pub(crate) incoming: server::Incoming,
    /// The mutual TLS they take.
    pub(crate) tls: tonic::transport::ServerTlsConfig,
    /// The metrics endpoint, if asked for.
    pub(crate) metrics: Option<server::Metrics>,
}

/// Where the signer serves, once bound.
pub(crate) enum Bound {
    /// Accepting on this address.
    Listening(SocketAddr),
    /// Dialling the node at this address.
    Dialling(String),
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Listening(a) => write!(f, "listening on {a}"),
            Bound::Dialling(n) => write!(f, "dialling the node at {n} (no port open here)"),
        }
    }
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

pub(crate) async fn run(
    common: Common,
    reach: Reach,
    log: Option<String>,
    accept_older_state: bool,
) -> Result<()> {
    let Opened {
        dir,
        config,
        mut signer,
        sealing,
    } = open(&common)?;
    init_logging(log.as_deref().or(config.log.as_deref()).unwrap_or(""));
    let witness = lnpd_signer::witness::Witness::open(&dir.witness())?;
    check_witness(&witness, &dir.witness(), &mut signer, accept_older_state);
    let (endpoints, local) = bind(&dir, &config, reach).await?;
    tracing::info!(
        node_id = %signer.node_id(),
        network = signer.network().to_core_arg(),
        channels = signer.channels().count(),
        seed = %sealing.describe(),
        "lnpd-signer {local} (mutual TLS)"
    );
    for (rule, mode) in &signer.policy().modes {
        if *mode == lnpd_signer_core::RuleMode::Warn {
            tracing::warn!(
                rule = rule.as_str(),
                "policy rule in warn mode: violations are logged and signed"
            );
        }
    }
    println!("{local}");
    let audit = lnpd_signer::audit::AuditLog::open(&dir.audit_log())
        .with_context(|| format!("opening {}", dir.audit_log().display()))?;
    let writer = witness.spawn_writer()?;
    let service = SignerService::greeted_first(signer)
        .with_audit(audit)
        .with_allowlist(dir.allowlist())
        .with_approvals(dir.approvals(), config.approval_timeout())
        .with_witness(witness.clone());
    serve_until_shutdown(service, endpoints, &config, &dir, &witness, writer).await
}

/// Checks a freshly opened signer against this machine's witness (the
/// highest state counter it acknowledged): an older state refuses to sign
/// (`state-rollback-detected`), unless the operator accepts it
/// (`--accept-older-state`). The witness then notes the state's counter.
pub(crate) fn check_witness<S: lnpd_signer_core::store::Store>(
    witness: &lnpd_signer::witness::Witness,
    path: &std::path::Path,
    signer: &mut lnpd_signer_core::Signer<S>,
    accept_older_state: bool,
) {
    if accept_older_state {
        signer.accept_older_states();
    }
    let who = format!("this machine's state witness ({})", path.display());
    if signer.check_acknowledged(witness.recorded(), &who).is_err() {
        eprintln!(
            "error: state-rollback-detected: {}",
            signer.rollback().unwrap_or_default()
        );
    }
    // Never lowered: an accepted older state moved its counter past it.
    witness.note(signer.state_counter());
}

/// `run`: with the state in redb, or as a replica over etcd when a store
/// URL is given (`--store` or `[store] url`).
pub(crate) async fn run_any(
    common: Common,
    reach: Reach,
    log: Option<String>,
    accept_older_state: bool,
    store: Option<String>,
) -> Result<()> {
    let dir = DataDir(expand(&common.data_dir));
    let replicated =
        store.is_some() || ConfigFile::load(&dir.config()).is_ok_and(|c| c.store.url.is_some());
    if replicated {
        run_replica(common, reach, log, store, accept_older_state).await
    } else {
        run(common, reach, log, accept_older_state).await
    }
}

/// `run --store etcd://...`: one replica of a signer whose state lives in
/// etcd. It serves requests only while it holds the leadership; otherwise
/// it answers "standby, active is NAME at ADDR".
pub(crate) async fn run_replica(
    common: Common,
    reach: Reach,
    log: Option<String>,
    store_url: Option<String>,
    accept_older_state: bool,
) -> Result<()> {
    use lnpd_signer::replica::{self, LeaseFence, ReplicaId};
    use lnpd_signer::store_etcd::EtcdStore;
    let parts = crate::common::open_parts(&common)?;
    init_logging(log.as_deref().or(parts.config.log.as_deref()).unwrap_or(""));
    let node_id = parts.node_id()?;
    let settings = parts.etcd_settings(store_url.as_deref())?;
    let crate::common::Parts {
        dir,
        config,
        network,
        policy,
        seed,
        ..
    } = parts;
    let etcd = lnpd_signer::etcd::Etcd::new(&settings)?;
    let (endpoints, local) = bind(&dir, &config, reach).await?;
    // A replica that dials the node has no address of its own to advertise.
    let here = match &local {
        Bound::Listening(a) => a.to_string(),
        Bound::Dialling(_) => format!("dialling-pid-{}", std::process::id()),
    };
    let me = ReplicaId {
        name: config
            .store
            .replica_name
            .clone()
            .unwrap_or_else(|| here.clone()),
        addr: config.store.advertise.clone().unwrap_or(here),
    };
    tracing::info!(
        node_id = %node_id,
        members = settings.endpoints.join(","),
        prefix = settings.prefix,
        "lnpd-signer replica {} {local} (mutual TLS); standing by until it holds the leadership",
        me.name
    );
    println!("{local}");
    let witness = lnpd_signer::witness::Witness::open(&dir.witness())?;
    let writer = witness.spawn_writer()?;
    let allowlist = dir.allowlist();
    let w = witness.clone();
    let dir2 = dir.clone();
    // What becoming active does: the state loaded from etcd, checked
    // against this machine's witness, before anything is answered.
    let accept_once = std::sync::atomic::AtomicBool::new(accept_older_state);
    let open: replica::OpenSigner = std::sync::Arc::new(move |store: EtcdStore| {
        let mut signer = lnpd_signer_core::Signer::new(
            &seed,
            network,
            policy.clone(),
            store,
            Box::new(crate::common::random32),
        )?;
        // The operator's acceptance of an older state holds for the first
        // term only: a later term (or a later restore) is checked again.
        let accept = accept_once.swap(false, std::sync::atomic::Ordering::SeqCst);
        check_witness(&w, &dir2.witness(), &mut signer, accept);
        Ok(signer)
    });
    let fence = std::sync::Arc::new(LeaseFence::default());
    let service =
        SignerService::<EtcdStore>::standby("standby: campaigning for the leadership".into())
            .with_audit(
                lnpd_signer::audit::AuditLog::open(&dir.audit_log())
                    .with_context(|| format!("opening {}", dir.audit_log().display()))?,
            )
            .with_allowlist(allowlist)
            .with_approvals(dir.approvals(), config.approval_timeout())
            .with_witness(witness.clone())
            .with_fence(fence.clone());
    replica::spawn(
        etcd,
        settings,
        me,
        service.slot(),
        fence,
        open,
        witness.clone(),
    );
    serve_until_shutdown(service, endpoints, &config, &dir, &witness, writer).await
}

/// Serves until Ctrl-C or SIGTERM, then brings the witness up to date and
/// removes the address file.
async fn serve_until_shutdown<B: server::Backend>(
    service: B,
    endpoints: Endpoints,
    config: &ConfigFile,
    dir: &DataDir,
    witness: &lnpd_signer::witness::Witness,
    writer: std::thread::JoinHandle<()>,
) -> Result<()> {
    let served = server::serve(
        service,
        endpoints.incoming,
        endpoints.tls,
        config.server.limits()?,
        endpoints.metrics,
        shutdown_signal(),
    )
    .await;
    witness.stop();
    let _ = writer.join();
    served?;
    let _ = std::fs::remove_file(dir.listen_addr_file());
    let _ = std::fs::remove_file(dir.metrics_addr_file());
    Ok(())
}
