//! What an operator watches. Progress lines of the commands that wait
//! ([`progress`]); and the daemons' endpoint: both serve, on an optional
//! `--metrics-listen ADDR`, their metrics in the Prometheus text format at
//! `/metrics` and their readiness at `/healthz` (200 when ready, 503 with
//! the reason when not). Metrics are recorded through the `metrics` facade
//! anywhere in the daemons; [`install`] makes them count.

pub mod progress;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The recorder could not be installed (one per process).
    #[error("installing the metrics recorder: {0}")]
    Recorder(String),
    /// The address could not be bound.
    #[error("metrics listen address {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 8;

/// Histogram buckets of every `*_seconds` metric: 50 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's metrics recorder; from now on recorded metrics
/// count. Returns the handle that renders them.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))
}

/// What the endpoint asks its daemon.
pub trait Probe: Send + Sync + 'static {
    /// Sets the gauges read at scrape time (channels, peers, heights...).
    fn refresh(&self) {}
    /// `Ok(what)` when ready to serve, `Err(why)` when not. May block
    /// briefly (a store write, a round trip to the signer).
    fn ready(&self) -> Result<String, String>;
}

/// Binds `addr` for the endpoint, and writes the address bound to
/// `addr_file` (for port 0).
pub fn bind(addr: &str, addr_file: Option<&Path>) -> Result<std::net::TcpListener, TelemetryError> {
    let listen_err = |source| TelemetryError::Listen {
        addr: addr.to_string(),
        source,
    };
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        listen_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not address:port",
        ))
    })?;
    let listener = std::net::TcpListener::bind(parsed).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    if let Some(f) = addr_file {
        let local = listener.local_addr().map_err(listen_err)?;
        std::fs::write(f, local.to_string()).map_err(listen_err)?;
    }
    Ok(listener)
}

/// Serves the endpoint on a thread and runtime of its own: it answers
/// while the daemon's own workers are busy or blocked (a health check must
/// not wait behind what it checks), and a flood of scrapes cannot take
/// the daemon's workers.
pub fn spawn(
    listener: std::net::TcpListener,
    handle: PrometheusHandle,
    probe: Arc<dyn Probe>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_CONNECTIONS)
        .build()?;
    let listener = {
        let _in_runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || runtime.block_on(serve(listener, handle, probe)))
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle, probe: Arc<dyn Probe>) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!("metrics on http://{a}/metrics, health on http://{a}/healthz");
    }
    // Scrapes at once; more connections are closed (a flood cannot hold
    // the daemon's descriptors or threads).
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let (handle, probe) = (handle.clone(), probe.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let (handle, probe) = (handle.clone(), probe.clone());
                async move { Ok::<_, Infallible>(answer(req, handle, probe).await) }
            });
            // One request per connection; a scraper that stalls is dropped.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn answer<B>(
    req: Request<B>,
    handle: PrometheusHandle,
    probe: Arc<dyn Probe>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let body = tokio::task::spawn_blocking(move || {
                probe.refresh();
                handle.render()
            })
            .await
            .unwrap_or_default();
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/healthz" => match tokio::task::spawn_blocking(move || probe.ready()).await {
            Ok(Ok(what)) => text(StatusCode::OK, "text/plain", format!("ready: {what}\n")),
            Ok(Err(why)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: the health check failed\n".into(),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics or /healthz\n".into(),
        ),
    }
}
