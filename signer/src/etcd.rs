//! A client for an etcd cluster (v3 gRPC API, stubs from `proto/etcd.proto`):
//! the replicated store's reads and conditional writes, and the replicas'
//! leases. It runs on a runtime thread of its own, so the synchronous store
//! (called under the signer's lock, from the server's runtime) can wait on
//! it, and it fails over between the cluster's members by itself.
//!
//! Why not the `etcd-client` crate: its build script compiles etcd's .proto
//! files with a system `protoc`, which a fresh machine does not have; the
//! few calls needed here are generated from the same API with `protox`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// The generated messages and clients of etcd's API (the part used).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// The largest answer read from etcd (a whole signer state in one range).
pub const MAX_ANSWER: usize = 512 << 20;

/// How long one request to a member may take before the next is tried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the cluster is and how to reach it.
#[derive(Clone, Debug)]
pub struct EtcdSettings {
    /// Members, host:port.
    pub endpoints: Vec<String>,
    /// Prefix of every key this signer writes (one signer per prefix).
    pub prefix: String,
    /// Client TLS, when the cluster requires it.
    pub tls: Option<EtcdTls>,
    /// Time to live of a replica's leadership lease.
    pub lease_ttl: Duration,
}

/// TLS towards etcd: the cluster's CA, and a client certificate if asked.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA certificate (PEM) the members' certificates chain to.
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
}

/// An etcd failure, as the operator should read it.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A setting is wrong.
    #[error("etcd settings: {0}")]
    Settings(String),
    /// No member answered (down, unreachable, or no quorum).
    #[error("etcd cluster unavailable ({0}): no member answered with a quorum behind it")]
    Unavailable(String),
    /// A member answered with an error.
    #[error("etcd refused: {0}")]
    Refused(String),
}

impl EtcdSettings {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    pub fn parse_url(url: &str) -> Result<(Vec<String>, Option<String>), EtcdError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            EtcdError::Settings(format!("{url:?} is not etcd://HOST:PORT[,HOST:PORT...]"))
        })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) if !p.is_empty() => (h, Some(p.trim_end_matches('/').to_string())),
            Some((h, _)) => (h, None),
            None => (rest, None),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.contains(':')) {
            return Err(EtcdError::Settings(format!(
                "{url:?}: every member must be HOST:PORT"
            )));
        }
        Ok((endpoints, prefix))
    }
}

/// A connection to the cluster (cheap to clone).
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Vec<(String, Channel)>,
    current: AtomicUsize,
    runtime: tokio::runtime::Runtime,
}

impl Etcd {
    /// Prepares connections to every member (made on first use) and the
    /// runtime thread they run on.
    pub fn new(settings: &EtcdSettings) -> Result<Etcd, EtcdError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| EtcdError::Settings(format!("cannot start the etcd runtime: {e}")))?;
        let tls = match &settings.tls {
            Some(t) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .map_err(|e| EtcdError::Settings(format!("{}: {e}", p.display())))
                };
                let mut cfg =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&t.ca)?));
                if let (Some(c), Some(k)) = (&t.cert, &t.key) {
                    cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?));
                }
                Some(cfg)
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let _guard = runtime.enter();
        let mut channels = Vec::new();
        for ep in &settings.endpoints {
            let mut e = Endpoint::from_shared(format!("{scheme}://{ep}"))
                .map_err(|_| EtcdError::Settings(format!("{ep:?} is not HOST:PORT")))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3));
            if let Some(t) = &tls {
                e = e
                    .tls_config(t.clone())
                    .map_err(|err| EtcdError::Settings(format!("{ep}: {err}")))?;
            }
            channels.push((ep.clone(), e.connect_lazy()));
        }
        Ok(Etcd {
            inner: Arc::new(Inner {
                channels,
                current: AtomicUsize::new(0),
                runtime,
            }),
        })
    }

    /// Runs `f` on the etcd runtime and waits for it (from synchronous code,
    /// including a thread of another runtime).
    pub fn block<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().ok()
    }

    /// Spawns `f` on the etcd runtime.
    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.runtime.spawn(f);
    }

    /// The member in use, and its channel.
    pub fn channel(&self) -> (String, Channel) {
        let i = self.inner.current.load(Ordering::SeqCst) % self.inner.channels.len();
        self.inner.channels[i].clone()
    }

    /// Moves on to the next member (the one in use failed).
    pub fn next_member(&self) {
        self.inner.current.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs a request on a member, moving on to the next ones while they
    /// are unreachable or without quorum; each try bounded by
    /// [`REQUEST_TIMEOUT`]. Only for requests safe to repeat (reads,
    /// lease grants and keep-alives): a conditional write is resolved by
    /// its caller.
    pub async fn retrying<T, F, Fut>(&self, what: &str, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut last = String::new();
        for _ in 0..self.inner.channels.len() {
            let (member, channel) = self.channel();
            match tokio::time::timeout(REQUEST_TIMEOUT, f(channel)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) if !is_unavailable(&s) => {
                    return Err(EtcdError::Refused(format!(
                        "{what} at {member}: {}",
                        s.message()
                    )))
                }
                Ok(Err(s)) => last = format!("{what} at {member}: {}", s.message()),
                Err(_) => {
                    last = format!("{what} at {member}: no answer within {REQUEST_TIMEOUT:?}")
                }
            }
            self.next_member();
        }
        Err(EtcdError::Unavailable(last))
    }
}

impl Etcd {
    /// A read (`Range`), retrying other members.
    pub async fn range(
        &self,
        what: &str,
        req: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, EtcdError> {
        self.retrying(what, |ch| {
            let r = req.clone();
            async move {
                // A whole state in one answer: past tonic's 4 MiB default.
                pb::kv_client::KvClient::new(ch)
                    .max_decoding_message_size(MAX_ANSWER)
                    .range(r)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// A transaction safe to repeat (a conditional one whose repeat is
    /// harmless), retrying other members.
    pub async fn txn(&self, what: &str, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.retrying(what, |ch| {
            let r = req.clone();
            async move {
                pb::kv_client::KvClient::new(ch)
                    .txn(r)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Several keys read at one revision (one transaction of reads).
    pub async fn read_together(
        &self,
        what: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<pb::KeyValue>>, EtcdError> {
        let success = keys
            .into_iter()
            .map(|key| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key,
                    ..Default::default()
                })),
            })
            .collect();
        let r = self
            .txn(
                what,
                pb::TxnRequest {
                    success,
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.responses
            .into_iter()
            .map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
                _ => None,
            })
            .collect())
    }

    /// A lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<pb::LeaseGrantResponse, EtcdError> {
        self.retrying("lease grant", |ch| async move {
            pb::lease_client::LeaseClient::new(ch)
                .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Ends a lease (and the keys bound to it); best effort, one second.
    pub async fn revoke(&self, id: i64) {
        let (_, ch) = self.channel();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            pb::lease_client::LeaseClient::new(ch).lease_revoke(pb::LeaseRevokeRequest { id }),
        )
        .await;
    }

    /// Creates `key` with `value`, bound to `lease`, if nobody holds it; a
    /// failed campaign reads the holder ([`holder`]). Safe to repeat: once
    /// the key is ours, a repeat finds it taken by our lease.
    pub async fn campaign(
        &self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: key.to_vec(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.to_vec(),
                    value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        };
        self.txn("campaign", txn).await
    }
}

/// The key a failed [`Etcd::campaign`] found (who holds it).
pub fn holder(r: &pb::TxnResponse) -> Option<pb::KeyValue> {
    r.responses.iter().find_map(|op| match &op.response {
        Some(pb::response_op::Response::ResponseRange(rr)) => rr.kvs.first().cloned(),
        _ => None,
    })
}

/// Whether a status means "try another member later" rather than "no".
pub fn is_unavailable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
    ) || s.message().contains("timed out")
        || s.message().contains("leader")
}

/// The first key after every key starting with `prefix` (a range's end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_and_an_optional_prefix() {
        let (e, p) = EtcdSettings::parse_url("etcd://a:1,b:2/x/y/").unwrap();
        assert_eq!(e, vec!["a:1", "b:2"]);
        assert_eq!(p.as_deref(), Some("x/y"));
        let (e, p) = EtcdSettings::parse_url("etcd://a:1").unwrap();
        assert_eq!((e.len(), p), (1, None));
        assert!(EtcdSettings::parse_url("http://a:1").is_err());
        assert!(EtcdSettings::parse_url("etcd://a").is_err());
        assert!(EtcdSettings::parse_url("etcd://").is_err());
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
