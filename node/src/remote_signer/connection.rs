//! One connection to the signer, usable from LDK's synchronous trait
//! methods: a dedicated thread owns the gRPC client (and its own runtime),
//! callers hand it requests and wait with a timeout. It reconnects with
//! backoff when the signer goes away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lnpd_proto::client::{self, SignerTls};
use lnpd_proto::signer::{reply, request};

/// Why a call did not produce a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The signer could not be reached (down, restarting, network): retry later.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The signer answered and refused (policy, bad request): do not retry.
    #[error("signer refused: {message}{}", rule.as_ref().map(|r| format!(" (rule {r})")).unwrap_or_default())]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The policy rule, when one refused.
        rule: Option<String>,
        /// The signer's reason.
        message: String,
    },
}

impl CallError {
    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CallError::Unavailable(_))
    }
}

struct Job {
    body: request::Body,
    reply: mpsc::SyncSender<Result<reply::Body, CallError>>,
}

/// A connection to `lnpd-signer`, shared by every signer object of the node.
pub struct SignerConnection {
    jobs: mpsc::Sender<Job>,
    connected: Arc<AtomicBool>,
    /// Set when an operation LDK can retry was answered "pending" because
    /// the signer was unavailable; the node calls `signer_unblocked` once
    /// the signer is back and clears it.
    pending: Arc<AtomicBool>,
    endpoint: String,
}

fn classify(status: tonic::Status) -> CallError {
    use tonic::Code::*;
    match status.code() {
        Unavailable | Unknown | Cancelled | DeadlineExceeded | Aborted | ResourceExhausted => {
            CallError::Unavailable(status.message().to_string())
        }
        code => CallError::Refused {
            code,
            rule: client::refused_rule(&status),
            message: status.message().to_string(),
        },
    }
}

impl SignerConnection {
    /// Starts the connection thread for the signer at `addr` (host:port).
    /// Connecting happens on first use and again after any failure.
    pub fn start(addr: &str, tls: SignerTls) -> std::io::Result<Arc<Self>> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let endpoint = addr.to_string();
        let ep = endpoint.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("lnpd-signer-client".into())
            .spawn(move || {
                let mut client = None;
                let mut next_attempt = Instant::now();
                let mut backoff = Duration::from_millis(100);
                while let Ok(job) = rx.recv() {
                    if client.is_none() {
                        if Instant::now() < next_attempt {
                            let _ = job
                                .reply
                                .send(Err(CallError::Unavailable(format!("reconnecting to {ep}"))));
                            continue;
                        }
                        match runtime.block_on(client::connect(&ep, &tls)) {
                            Ok(c) => {
                                tracing::info!("connected to the signer at {ep}");
                                client = Some(c);
                                backoff = Duration::from_millis(100);
                                flag.store(true, Ordering::SeqCst);
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "signer at {ep} unreachable, retrying in {backoff:?}: {e}"
                                );
                                next_attempt = Instant::now() + backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                                let _ = job.reply.send(Err(CallError::Unavailable(e.to_string())));
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_mut() else { continue };
                    let result = runtime
                        .block_on(client::call(c, job.body))
                        .map_err(classify);
                    if matches!(result, Err(CallError::Unavailable(_))) {
                        tracing::warn!("lost the signer connection to {ep}; will reconnect");
                        client = None;
                        flag.store(false, Ordering::SeqCst);
                    }
                    let _ = job.reply.send(result);
                }
            })?;
        Ok(Arc::new(SignerConnection {
            jobs,
            connected,
            pending: Arc::new(AtomicBool::new(false)),
            endpoint,
        }))
    }

    /// The signer's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the last call reached the signer.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// One call, waiting at most `timeout`.
    pub fn call(&self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Job { body, reply: tx })
            .map_err(|_| CallError::Unavailable("signer client thread stopped".into()))?;
        rx.recv_timeout(timeout)
            .map_err(|_| CallError::Unavailable(format!("no answer within {timeout:?}")))?
    }

    /// A call retried while the signer is unavailable, for operations LDK
    /// cannot take a "pending" answer for. Gives up after `patience`.
    pub fn call_retrying(
        &self,
        what: &str,
        body: request::Body,
        patience: Duration,
    ) -> Result<reply::Body, CallError> {
        let deadline = Instant::now() + patience;
        let mut wait = Duration::from_millis(50);
        loop {
            match self.call(body.clone(), Duration::from_secs(10)) {
                Err(e) if e.is_unavailable() && Instant::now() + wait < deadline => {
                    tracing::warn!("{what}: {e}; retrying in {wait:?}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Records that LDK was told "pending" and will need `signer_unblocked`.
    pub fn mark_pending(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    /// Takes the pending mark (true if some operation waits for the signer).
    pub fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }
}
