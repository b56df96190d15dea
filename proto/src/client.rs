//! Client side of `signer.proto`: connect to a signer over mutual TLS and
//! send requests in the envelope.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::signer::signer_client::SignerClient;
use crate::signer::{reply, request, Request};
use crate::SignerError;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

/// The TLS files a client needs to reach a signer (made by `lnpd-signer init`).
#[derive(Clone, Debug)]
pub struct SignerTls {
    /// The signer's private CA certificate (`tls/ca.pem`).
    pub ca_cert: PathBuf,
    /// The node's client certificate (`tls/node.pem`); `None` connects without one.
    pub client_cert: Option<PathBuf>,
    /// The node's client key (`tls/node.key`).
    pub client_key: Option<PathBuf>,
    /// The name the signer's certificate is checked against.
    pub domain: String,
}

impl SignerTls {
    /// The standard files of a signer's `tls/` directory.
    pub fn from_signer_dir(tls_dir: &Path) -> Self {
        SignerTls {
            ca_cert: tls_dir.join("ca.pem"),
            client_cert: Some(tls_dir.join("node.pem")),
            client_key: Some(tls_dir.join("node.key")),
            domain: "localhost".into(),
        }
    }
}

/// Why the signer could not be reached.
#[derive(Debug)]
pub enum ClientError {
    /// A TLS file could not be read.
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Connection or TLS failure.
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A bad endpoint string.
    Endpoint(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io { path, source } => write!(f, "cannot read {path}: {source}"),
            ClientError::Connect { endpoint, source } => {
                write!(f, "cannot connect to the signer at {endpoint}: {source}")
            }
            ClientError::Endpoint(e) => {
                write!(f, "invalid signer endpoint {e:?}: expected host:port")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source),
            ClientError::Connect { source, .. } => Some(source),
            ClientError::Endpoint(_) => None,
        }
    }
}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The node's side of the mutual TLS: the signer's CA, the name its
/// certificate must carry, and the node's own certificate.
fn client_tls(tls: &SignerTls) -> Result<ClientTlsConfig, ClientError> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca_cert)?))
        .domain_name(&tls.domain);
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(cfg)
}

/// Connects to the signer at `addr` (host:port) with mutual TLS.
pub async fn connect(addr: &str, tls: &SignerTls) -> Result<SignerClient<Channel>, ClientError> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|_| ClientError::Endpoint(addr.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .tls_config(client_tls(tls)?)
        .map_err(|source| ClientError::Connect {
            endpoint: addr.to_string(),
            source,
        })?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: addr.to_string(),
            source,
        })?;
    Ok(SignerClient::new(channel))
}

/// gRPC with mutual TLS over a TCP connection the signer opened to the
/// node (`lnpd-signer run --connect`). Only the direction of TCP is
/// reversed: the signer still presents its server certificate (checked
/// against its CA and `tls.domain`), the node its client certificate, and
/// the node still sends the requests. `from` names the peer in errors.
/// The channel never reconnects by itself: when this connection ends,
/// every call fails and the caller takes the signer's next connection.
pub async fn connect_over(
    stream: tokio::net::TcpStream,
    tls: &SignerTls,
    from: &str,
) -> Result<SignerClient<Channel>, ClientError> {
    let endpoint = Endpoint::from_shared(format!("https://{}", tls.domain))
        .map_err(|_| ClientError::Endpoint(tls.domain.clone()))?
        .connect_timeout(Duration::from_secs(10))
        // A connection gone silent (the signer's machine lost) is found
        // out without waiting for a request to time out.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tls_config(client_tls(tls)?)
        .map_err(|source| ClientError::Connect {
            endpoint: from.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let once = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let stream = once.lock().ok().and_then(|mut s| s.take());
        async move {
            stream.map(hyper_util::rt::TokioIo::new).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the signer's connection has ended",
                )
            })
        }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: from.to_string(),
            source,
        })?;
    Ok(SignerClient::new(channel))
}

/// Sends one request; the outer error is the transport's (the request may
/// not have reached the signer), the inner one the signer's answer.
pub async fn call(
    client: &mut SignerClient<Channel>,
    body: request::Body,
) -> Result<Result<reply::Body, SignerError>, Status> {
    call_counted(client, body, &AtomicU64::new(0)).await
}

/// [`call`], keeping in `seen` the highest state counter the signer
/// reported (the node's cross-check against a signer restored from an
/// older copy of its state).
pub async fn call_counted(
    client: &mut SignerClient<Channel>,
    body: request::Body,
    seen: &AtomicU64,
) -> Result<Result<reply::Body, SignerError>, Status> {
    // Polls only for what the signer answers at once (`Body::quick`).
    let window = if body.quick() {
        crate::busy_poll::window()
    } else {
        std::time::Duration::ZERO
    };
    let reply = crate::busy_poll::await_polling(
        window,
        client.call(Request {
            id: 0,
            body: Some(body),
        }),
    )
    .await?
    .into_inner();
    seen.fetch_max(reply.state_counter, Ordering::SeqCst);
    Ok(reply.into_result())
}

/// Sends requests as one batch (handled in order, made durable together);
/// one result per request.
pub async fn call_batch(
    client: &mut SignerClient<Channel>,
    bodies: Vec<request::Body>,
) -> Result<Vec<Result<reply::Body, SignerError>>, Status> {
    call_batch_counted(client, bodies, &AtomicU64::new(0)).await
}

/// [`call_batch`], keeping the highest state counter in `seen` (see
/// [`call_counted`]).
pub async fn call_batch_counted(
    client: &mut SignerClient<Channel>,
    bodies: Vec<request::Body>,
    seen: &AtomicU64,
) -> Result<Vec<Result<reply::Body, SignerError>>, Status> {
    let n = bodies.len();
    let requests = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| Request {
            id: i as u64,
            body: Some(b),
        })
        .collect();
    let replies = client
        .batch(crate::signer::BatchRequest { requests })
        .await?
        .into_inner()
        .replies;
    if replies.len() != n {
        return Err(Status::internal(format!(
            "{} replies to a batch of {n}",
            replies.len()
        )));
    }
    for r in &replies {
        seen.fetch_max(r.state_counter, Ordering::SeqCst);
    }
    Ok(replies.into_iter().map(|r| r.into_result()).collect())
}
