//! A backend for tests of how the daemon serves (not of signing): it holds
//! a request open as a slow durable write would, and answers what the node
//! key answers beside it. Compiled for tests and with the `test-utils`
//! feature only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lnpd_proto::signer::{self as pb, reply, request};
use lnpd_signer_core::SignerError;

use crate::server::Backend;

/// The shared switch of a [`HeldBackend`]: whether a request is held, and
/// its release.
#[derive(Default)]
pub struct Held {
    released: Mutex<bool>,
    wake: Condvar,
    holding: AtomicBool,
}

impl Held {
    /// Lets the held request (and any later one) end, refused.
    pub fn release(&self) {
        if let Ok(mut r) = self.released.lock() {
            *r = true;
        }
        self.wake.notify_all();
    }

    /// Whether a request is held now.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    /// Waits at most `within` until a request is held; whether one is.
    pub fn wait_holding(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while !self.holding() {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// Answers the greeting (`Info`) and pings at once, ECDH only apart
/// ([`Backend::call_apart`], as the node key does while the signer
/// writes; the shared secret is 32 bytes of 7), and holds every other
/// request, ECDH sent the usual way included, until [`Held::release`];
/// then refuses it. Served as the software signer is: grouped, writes off
/// the runtime's worker.
pub struct HeldBackend(pub Arc<Held>);

impl Backend for HeldBackend {
    fn call(&self, body: request::Body) -> Result<reply::Body, SignerError> {
        match body {
            request::Body::Info(_) => Ok(reply::Body::Info(pb::InfoReply {
                protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
                ..Default::default()
            })),
            request::Body::Ping(p) => Ok(reply::Body::Ping(pb::PingReply { nonce: p.nonce })),
            _ => {
                let held = &self.0;
                held.holding.store(true, Ordering::SeqCst);
                let mut r = held
                    .released
                    .lock()
                    .map_err(|_| SignerError::internal("lock"))?;
                while !*r {
                    r = held
                        .wake
                        .wait(r)
                        .map_err(|_| SignerError::internal("lock"))?;
                }
                held.holding.store(false, Ordering::SeqCst);
                Err(SignerError::internal("released by the test"))
            }
        }
    }

    fn call_batch(
        &self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        Ok(bodies.into_iter().map(|b| self.call(b)).collect())
    }

    fn call_apart(&self, body: &request::Body) -> Option<Result<reply::Body, SignerError>> {
        matches!(body, request::Body::Ecdh(_)).then(|| {
            Ok(reply::Body::Ecdh(pb::EcdhReply {
                shared_secret: vec![7; 32],
            }))
        })
    }

    fn busy(&self) -> bool {
        self.0.holding()
    }

    fn groups(&self) -> bool {
        true
    }
}

/// Releases when dropped: a failed assertion must not leave a thread (or
/// a runtime's shutdown) waiting for the held request.
pub struct ReleaseOnDrop(pub Arc<Held>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}
