//! The signer's own connection, accepted: for a signer on an isolated
//! machine that opens no port (`lnpd-signer run --connect NODE:PORT`), the
//! node listens (`lnpd --signer-listen ADDR`) and sends its requests over
//! the connection the signer opened — gRPC with mutual TLS exactly as when
//! the node dials (`lnpd_proto::client::connect_over`): the signer shows its
//! server certificate, which must chain to the signer's CA, and the node its
//! client certificate. A connection that fails that handshake is dropped
//! and logged; it never displaces a signer that passed it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lnpd_proto::client::{self, SignerTls};
use lnpd_proto::signer::signer_client::SignerClient;
use lnpd_proto::signer::{reply, request};
use lnpd_proto::slots::Slots;
use tonic::transport::Channel;

use super::connection::{CallError, GrpcCalls, SignerTransport};

/// Connections that passed the handshake and wait to be used (the newest
/// first); older ones beyond this are closed.
const MAX_READY: usize = 4;
/// Handshakes in progress at once, in all and from one address; a
/// connection beyond them is closed at once. Per address, so that silent
/// connections from one host cannot keep the signer's out (restrict the
/// port to the signer's address with `--signer-allow-from`, or a firewall,
/// against an attacker with many addresses).
const MAX_HANDSHAKES: usize = 64;
const MAX_HANDSHAKES_PER_IP: usize = 2;
/// Longest a connection may take to finish TLS and HTTP/2 set-up.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How long `connect` waits for a signer to dial in before saying so (the
/// connection's backoff then retries).
const WAIT: Duration = Duration::from_secs(1);

/// Signer connections that passed the mutual-TLS handshake.
#[derive(Default)]
struct Ready {
    clients: Mutex<VecDeque<(SocketAddr, SignerClient<Channel>)>>,
    arrived: Condvar,
}

impl Ready {
    fn push(&self, peer: SocketAddr, client: SignerClient<Channel>) {
        if let Ok(mut q) = self.clients.lock() {
            while q.len() >= MAX_READY {
                q.pop_front();
            }
            q.push_back((peer, client));
        }
        self.arrived.notify_all();
    }

    /// The newest ready connection, waiting at most `wait`.
    fn take(&self, wait: Duration) -> Option<(SocketAddr, SignerClient<Channel>)> {
        let deadline = Instant::now() + wait;
        let mut q = self.clients.lock().ok()?;
        loop {
            if let Some(c) = q.pop_back() {
                return Some(c);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            q = self.arrived.wait_timeout(q, left).ok()?.0;
        }
    }
}

/// A [`SignerTransport`] over connections the signer opens to the node.
pub struct InboundTransport {
    bound: SocketAddr,
    grpc: GrpcCalls,
    ready: Arc<Ready>,
    peer: Option<SocketAddr>,
}

/// Error text with its causes (tonic's own text is only "transport error").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        // Some errors print their cause themselves: not twice.
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

impl InboundTransport {
    /// Binds `listen` and accepts signer connections in the background;
    /// with `allow_from` non-empty, only from those addresses.
    pub fn listen(
        listen: SocketAddr,
        tls: SignerTls,
        allow_from: Vec<std::net::IpAddr>,
    ) -> std::io::Result<Self> {
        let grpc = GrpcCalls::new("signer-inbound")?;
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let bound = std_listener.local_addr()?;
        let listener = {
            let _in_runtime = grpc.runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let ready = Arc::new(Ready::default());
        grpc.runtime
            .spawn(accept_loop(listener, tls, ready.clone(), allow_from));
        tracing::info!("waiting for the signer to connect on {bound} (lnpd-signer run --connect)");
        Ok(InboundTransport {
            bound,
            grpc,
            ready,
            peer: None,
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.bound
    }

    /// The highest state counter the signer reported, kept here.
    pub fn seen(&self) -> Arc<AtomicU64> {
        self.grpc.seen.clone()
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: SignerTls,
    ready: Arc<Ready>,
    allow_from: Vec<std::net::IpAddr>,
) {
    let handshakes = Slots::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP);
    // The first ten logged, then one in 100: a flood must not flood the log.
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let note_refusal = {
        let refused = refused.clone();
        move |why: String| {
            let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n < 10 || n.is_multiple_of(100) {
                tracing::warn!("{why} (refusal {}; past 10, logged once per 100)", n + 1);
            }
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: not a reason to stop listening.
                tracing::warn!("accepting a signer connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        if !allow_from.is_empty() && !allow_from.contains(&ip) {
            note_refusal(format!(
                "closed a connection from {peer}: not an address the signer may connect from (--signer-allow-from)"
            ));
            continue;
        }
        let Ok(slot) = handshakes.take(ip) else {
            note_refusal(format!(
                "closed a connection from {peer}: handshakes already in progress from it ({MAX_HANDSHAKES_PER_IP}) or in all ({MAX_HANDSHAKES})"
            ));
            continue;
        };
        let tls = tls.clone();
        let ready = ready.clone();
        let note_refusal = note_refusal.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE, client::connect_over(stream, &tls, &peer.to_string()))
                .await
            {
                Ok(Ok(c)) => {
                    tracing::info!("the signer connected from {peer} (mutual TLS)");
                    ready.push(peer, c);
                }
                Ok(Err(e)) => note_refusal(format!(
                    "refused a connection from {peer}: it is not our signer (mutual TLS failed: {})",
                    with_causes(&e)
                )),
                Err(_) => note_refusal(format!(
                    "refused a connection from {peer}: no TLS handshake within {HANDSHAKE:?}"
                )),
            }
        });
    }
}

impl SignerTransport for InboundTransport {
    fn connect(&mut self) -> Result<(), String> {
        match self.ready.take(WAIT) {
            Some((peer, c)) => {
                self.grpc.set_client(Some(c));
                self.peer = Some(peer);
                Ok(())
            }
            None => Err(format!(
                "no signer has connected to {} (lnpd-signer run --connect)",
                self.bound
            )),
        }
    }

    fn endpoint(&self) -> Option<String> {
        Some(match self.peer {
            Some(p) => format!("{p} (dialled in to {})", self.bound),
            None => format!("the signer dialling in to {}", self.bound),
        })
    }

    fn side_lane(&self) -> Option<super::connection::SideLane> {
        Some(self.grpc.side_lane())
    }

    fn next_endpoint(&mut self, _why: &str) {
        // Closed: a signer whose connection ended dials again; a replica
        // standing by is taken after the others.
        self.grpc.set_client(None);
        self.peer = None;
    }

    fn call(&mut self, body: request::Body, timeout: Duration) -> Result<reply::Body, CallError> {
        self.grpc.call(body, timeout)
    }

    fn call_batch(
        &mut self,
        bodies: Vec<request::Body>,
        timeout: Duration,
    ) -> Result<Vec<Result<reply::Body, CallError>>, CallError> {
        self.grpc.call_batch(bodies, timeout)
    }
}
