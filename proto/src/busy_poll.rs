//! Bounded busy-polling for the node↔signer round trip.
//!
//! On a virtual machine an idle vCPU is halted by the host, and waking it
//! for an arriving packet costs tens of microseconds — several times what
//! the signer spends on an ECDH. A thread that keeps polling for a short
//! window after it sent a request (the node) or answered one (the signer)
//! stays awake, and the reply or the next request is picked up at once.
//! Measured on the project's 2-core VM: a loopback ping-pong takes
//! ≈ 125 µs with both ends sleeping and ≈ 30 µs with one end polling.
//!
//! The window is bounded (the default [`DEFAULT_WINDOW`]): past it the task
//! sleeps as usual, so an idle node or signer burns no CPU. Polling here
//! means yielding to the tokio scheduler, which then checks the sockets
//! without sleeping; other tasks of the runtime run meanwhile.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long a waiting task polls before it sleeps, unless configured.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(300);

static WINDOW_US: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_WINDOW.as_micros() as u64);

/// The process's polling window (`--busy-poll-us`; zero turns polling off).
pub fn window() -> Duration {
    Duration::from_micros(WINDOW_US.load(std::sync::atomic::Ordering::Relaxed))
}

/// Sets the process's polling window.
pub fn set_window(window: Duration) {
    let us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    WINDOW_US.store(us, std::sync::atomic::Ordering::Relaxed);
}

/// Awaits `f`, polling without sleeping for up to `window` first.
pub async fn await_polling<F: Future>(window: Duration, f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    if window.is_zero() {
        return f.await;
    }
    let deadline = Instant::now() + window;
    loop {
        let step = std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = step {
            return out;
        }
        if Instant::now() >= deadline {
            return f.await;
        }
        tokio::task::yield_now().await;
    }
}

/// Keeps a runtime thread awake for `window` after each [`Awake::touch`]:
/// run [`Awake::run`] as a task of the runtime that serves the requests.
#[derive(Debug)]
pub struct Awake {
    window: Duration,
    last: std::sync::Mutex<Instant>,
    wake: tokio::sync::Notify,
}

impl Awake {
    /// A keeper with this window (zero: never polls).
    pub fn new(window: Duration) -> Self {
        Awake {
            window,
            last: std::sync::Mutex::new(Instant::now()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A request was handled: stay awake for the window from now.
    pub fn touch(&self) {
        if self.window.is_zero() {
            return;
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
        self.wake.notify_one();
    }

    /// Polls while the last touch is within the window; sleeps until the
    /// next touch otherwise. Never returns.
    pub async fn run(&self) {
        if self.window.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let last = self
                .last
                .lock()
                .map(|l| *l)
                .unwrap_or_else(|_| Instant::now());
            if last.elapsed() < self.window {
                tokio::task::yield_now().await;
            } else {
                self.wake.notified().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn await_polling_gives_what_the_future_gives_within_and_past_the_window() {
        runtime().block_on(async {
            let window = Duration::from_micros(300);
            assert_eq!(await_polling(window, async { 7 }).await, 7);
            let late = async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                8
            };
            assert_eq!(await_polling(window, late).await, 8);
            assert_eq!(await_polling(Duration::ZERO, async { 9 }).await, 9);
        });
    }

    #[test]
    fn a_polling_keeper_lets_the_runtimes_other_tasks_run() {
        runtime().block_on(async {
            let awake = std::sync::Arc::new(Awake::new(Duration::from_millis(50)));
            let keeper = {
                let awake = awake.clone();
                tokio::spawn(async move { awake.run().await })
            };
            for _ in 0..3 {
                awake.touch();
                // Timers and other tasks go on while it polls, and after.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert!(!keeper.is_finished(), "the keeper runs until aborted");
            keeper.abort();
        });
    }
}
