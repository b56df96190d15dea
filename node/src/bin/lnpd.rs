//! `lnpd`: the Lightning node. It holds no private key; every signature and
//! ECDH comes from `lnpd-signer` over gRPC with mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use clap::Parser;
use lnpd_node::admin::{auth_interceptor, load_or_create_token, AdminService};
use lnpd_node::config::{required, NodeConfig};
use lnpd_node::node::{Node, NodeSettings, SignerEndpoint};
use lnpd_node::signer_client::SignerTls;
use lnpd_proto::node::node_server::NodeServer;

/// The lnpd Lightning node. Settings come from <data-dir>/lnpd.toml (same
/// names as the flags, with underscores) and the flags below, which win.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Data directory: the node's state (node.sqlite), admin.token, admin.addr.
    #[arg(long, env = "LNPD_DIR", default_value = "~/.lnpd")]
    data_dir: String,
    /// Bitcoin network: bitcoin, testnet, signet or regtest.
    #[arg(long)]
    network: Option<String>,
    /// Chain backend JSON-RPC URL (Bitcoin Core or bcoin), e.g. http://127.0.0.1:18443/.
    #[arg(long)]
    bitcoind_rpc_url: Option<String>,
    /// Chain backend RPC user.
    #[arg(long)]
    bitcoind_rpc_user: Option<String>,
    /// Chain backend RPC password.
    #[arg(long, env = "LNPD_BITCOIND_RPC_PASSWORD")]
    bitcoind_rpc_password: Option<String>,
    /// Feerate of our own spends when the backend has no estimate, sat per
    /// 1000 weight (default 2500). What peers may propose is never held to
    /// it: without an estimate they may go down to the backend's mempool
    /// minimum (253 at least).
    #[arg(long)]
    fallback_feerate_sat_per_kw: Option<u32>,
    /// The signer's address, host:port (several, comma-separated: replicas
    /// of one signer).
    #[arg(long)]
    signer: Option<String>,
    /// Instead of dialling the signer, accept its connection on this
    /// address: for a signer on an isolated machine that opens no port
    /// (`lnpd-signer run --connect THIS_HOST:PORT`). The same mutual TLS:
    /// only a signer with the server certificate of the signer's CA is
    /// used. Port 0 picks one, written to <data-dir>/signer-listen.addr.
    #[arg(long, conflicts_with = "signer")]
    signer_listen: Option<String>,
    /// With --signer-listen: the addresses the signer connects from
    /// (comma-separated IPs); connections from any other are closed before
    /// any handshake. Recommended whenever the port is reachable by others.
    #[arg(long, requires = "signer_listen")]
    signer_allow_from: Option<String>,
    /// Directory holding the signer's ca.pem and this node's node.pem/node.key.
    #[arg(long)]
    signer_tls_dir: Option<PathBuf>,
    /// Name the signer's certificate must carry (default localhost).
    #[arg(long)]
    signer_tls_name: Option<String>,
    /// Lightning peer-to-peer listen address (default 0.0.0.0:9735; port 0 picks one).
    #[arg(long)]
    listen: Option<String>,
    /// Admin API listen address (default 127.0.0.1:9737; port 0 picks one, written to admin.addr).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Node alias.
    #[arg(long)]
    alias: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics and readiness at
    /// http://ADDR/healthz (200 when the signer answers a ping, 503 with
    /// the reason otherwise). Port 0 picks one, written to
    /// <data-dir>/metrics.addr. Off by default.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log filter, e.g. "info" or "lnpd_node=debug,ldk=info".
    #[arg(long, default_value = "info")]
    log: String,
    /// While waiting for the signer's reply to a quick request (ECDH, a
    /// per-commitment point), keep polling for this many microseconds
    /// before sleeping (0: off). On a virtual machine this saves the host's
    /// wake-up of an idle CPU on every such round trip.
    #[arg(long, default_value_t = lnpd_proto::busy_poll::DEFAULT_WINDOW.as_micros() as u64)]
    signer_busy_poll_us: u64,
}

async fn run(cli: Cli) -> Result<()> {
    lnpd_proto::busy_poll::set_window(std::time::Duration::from_micros(cli.signer_busy_poll_us));
    let data_dir = lnpd_node::config::expand_home(&cli.data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let file = NodeConfig::load(&data_dir.join("lnpd.toml"))?;
    let flags = NodeConfig {
        network: cli.network,
        bitcoind_rpc_url: cli.bitcoind_rpc_url,
        bitcoind_rpc_user: cli.bitcoind_rpc_user,
        bitcoind_rpc_password: cli.bitcoind_rpc_password,
        fallback_feerate_sat_per_kw: cli.fallback_feerate_sat_per_kw,
        signer: cli.signer,
        signer_listen: cli.signer_listen,
        signer_allow_from: cli.signer_allow_from,
        signer_tls_dir: cli.signer_tls_dir,
        signer_tls_name: cli.signer_tls_name,
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        alias: cli.alias,
        metrics_listen: cli.metrics_listen,
    };
    let c = file.merge(flags);
    let network_name = required(&c.network, "network", "network")?;
    let network = Network::from_core_arg(&network_name)
        .map_err(|_| anyhow!("unknown network {network_name:?}"))?;
    let tls_dir = required(&c.signer_tls_dir, "signer_tls_dir", "signer-tls-dir")?;
    let mut signer_tls = SignerTls::from_signer_dir(&tls_dir);
    if let Some(name) = c.signer_tls_name.clone() {
        signer_tls.domain = name;
    }
    let listen: SocketAddr = c
        .listen
        .clone()
        .unwrap_or_else(|| "0.0.0.0:9735".into())
        .parse()
        .context("--listen must be address:port")?;
    let admin: SocketAddr = c
        .admin_listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9737".into())
        .parse()
        .context("--admin-listen must be address:port")?;
    let settings = NodeSettings {
        data_dir: data_dir.clone(),
        network,
        rpc_url: required(&c.bitcoind_rpc_url, "bitcoind_rpc_url", "bitcoind-rpc-url")?,
        rpc_user: c.bitcoind_rpc_user.clone().unwrap_or_else(|| "lnpd".into()),
        rpc_password: required(
            &c.bitcoind_rpc_password,
            "bitcoind_rpc_password",
            "bitcoind-rpc-password",
        )?,
        fallback_feerate: c.fallback_feerate_sat_per_kw.unwrap_or(2500),
        signer: match (c.signer.clone(), c.signer_listen.clone()) {
            (Some(_), Some(_)) => bail!(
                "both `signer` and `signer_listen` are set (lnpd.toml or flags): the node either dials its signer or accepts the signer's connection"
            ),
            (None, Some(listen)) => SignerEndpoint::Accept(
                listen
                    .parse()
                    .with_context(|| format!("--signer-listen {listen:?} must be address:port"))?,
                c.signer_allow_from
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.parse::<std::net::IpAddr>()
                            .map(|ip| ip.to_canonical())
                            .with_context(|| format!("--signer-allow-from: {a:?} is not an IP address"))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            (Some(addrs), None) => SignerEndpoint::Dial(addrs),
            (None, None) => bail!(
                "missing setting `signer` (in lnpd.toml or as --signer HOST:PORT; or --signer-listen ADDR for a signer that dials the node)"
            ),
        },
        signer_tls,
        listen,
        alias: c.alias.clone().unwrap_or_else(|| "lnpd".into()),
    };
    // Bound before the node starts (a bad address fails at once); served
    // once it runs.
    let metrics = match &c.metrics_listen {
        Some(addr) => Some((
            lnpd_telemetry::install()?,
            lnpd_telemetry::bind(addr, Some(data_dir.join("metrics.addr").as_path()))?,
        )),
        None => None,
    };
    let node = Node::start(settings).await?;
    if let Some((handle, listener)) = metrics {
        let probe: std::sync::Arc<dyn lnpd_telemetry::Probe> =
            std::sync::Arc::new(lnpd_node::metrics::NodeProbe::new(node.clone()));
        lnpd_telemetry::spawn(listener, handle, probe).context("starting the metrics endpoint")?;
    }
    let token = load_or_create_token(&data_dir.join("admin.token")).context("admin token")?;
    let admin_listener = tokio::net::TcpListener::bind(admin)
        .await
        .with_context(|| format!("cannot listen on {admin}"))?;
    let admin_addr = admin_listener.local_addr()?;
    std::fs::write(data_dir.join("admin.addr"), admin_addr.to_string())?;
    std::fs::write(data_dir.join("p2p.addr"), node.listen_addr.to_string())?;
    tracing::info!(
        "admin API on {admin_addr}; node {} listening for peers on {}",
        node.node_id(),
        node.listen_addr
    );
    println!(
        "lnpd {} peers {} admin {admin_addr}",
        node.node_id(),
        node.listen_addr
    );

    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    tonic::transport::Server::builder()
        .add_service(NodeServer::with_interceptor(
            AdminService::new(node.clone()),
            auth_interceptor(token),
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(admin_listener),
            shutdown,
        )
        .await?;
    tracing::info!("shutting down");
    node.shutdown();
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .try_init();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
