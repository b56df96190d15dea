//! The state witness: the highest state counter this signer acknowledged,
//! kept in a small file apart from the state itself. A state restored from
//! an older copy carries an older counter than the witness: the signer
//! then refuses to sign from it (`state-rollback-detected`).
//!
//! The witness only ever trails the state: a counter is noted after the
//! write that reached it was durable, and the file is rewritten in the
//! background (at most every [`WRITE_EVERY`]), never on a request's path.
//! A crash can leave it behind the state (no harm: it is a lower bound),
//! never ahead of it. The node keeps its own copy of the counter as a
//! cross-check (`InfoRequest.seen_state_counter`), and each channel's
//! commitment numbers are a third.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the witness file is brought up to date, at most.
pub const WRITE_EVERY: Duration = Duration::from_millis(100);

const TAG: &str = "lnpd-signer state counter";

/// A witness file that cannot be read.
#[derive(Debug)]
pub enum WitnessError {
    /// Reading or writing failed.
    Io(PathBuf, std::io::Error),
    /// The file is not a witness.
    Corrupt(PathBuf),
}

impl std::fmt::Display for WitnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WitnessError::Io(p, e) => write!(f, "state witness {}: {e}", p.display()),
            WitnessError::Corrupt(p) => write!(
                f,
                "state witness {} is not a witness file (expected \"{TAG} N\"); \
                 if it was damaged, remove it: the node's counter still cross-checks the state",
                p.display()
            ),
        }
    }
}

impl std::error::Error for WitnessError {}

/// The witness of one signer: the counter it recorded, and the writer.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    highest: AtomicU64,
    written: AtomicU64,
    stop: AtomicBool,
}

impl Witness {
    /// Reads the witness at `path` (none yet: 0).
    pub fn open(path: &Path) -> Result<Arc<Witness>, WitnessError> {
        let recorded = match std::fs::read_to_string(path) {
            Ok(text) => text
                .trim()
                .strip_prefix(TAG)
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(|| WitnessError::Corrupt(path.to_path_buf()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(WitnessError::Io(path.to_path_buf(), e)),
        };
        Ok(Arc::new(Witness {
            path: path.to_path_buf(),
            highest: AtomicU64::new(recorded),
            written: AtomicU64::new(recorded),
            stop: AtomicBool::new(false),
        }))
    }

    /// The highest counter recorded or noted.
    pub fn recorded(&self) -> u64 {
        self.highest.load(Ordering::SeqCst)
    }

    /// Notes a counter the signer reached with a durable write.
    pub fn note(&self, counter: u64) {
        self.highest.fetch_max(counter, Ordering::SeqCst);
    }

    /// Sets the witness to `counter` even if lower (the operator accepted
    /// an older state, whose counter was raised past the old witness).
    pub fn reset(&self, counter: u64) -> Result<(), WitnessError> {
        self.highest.store(counter, Ordering::SeqCst);
        self.flush()
    }

    /// Writes the file now if it trails (write, fsync, rename: never torn).
    pub fn flush(&self) -> Result<(), WitnessError> {
        let n = self.highest.load(Ordering::SeqCst);
        if n == self.written.load(Ordering::SeqCst) && self.path.exists() {
            return Ok(());
        }
        let io = |e| WitnessError::Io(self.path.clone(), e);
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{TAG} {n}").map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.written.store(n, Ordering::SeqCst);
        Ok(())
    }

    /// Keeps the file up to date from a thread of its own until
    /// [`Witness::stop`].
    pub fn spawn_writer(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("state-witness".into())
            .spawn(move || {
                let mut warned = false;
                while !me.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(WRITE_EVERY);
                    match me.flush() {
                        Ok(()) => warned = false,
                        Err(e) if !warned => {
                            tracing::warn!("{e} (the state itself is unaffected)");
                            warned = true;
                        }
                        Err(_) => {}
                    }
                }
                if let Err(e) = me.flush() {
                    tracing::warn!("{e}");
                }
            })
    }

    /// Stops the writer after one last write.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lnpd-witness-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.witness")
    }

    #[test]
    fn a_witness_keeps_the_highest_counter_across_reopening() {
        let path = temp("keeps");
        let w = Witness::open(&path).unwrap();
        assert_eq!(w.recorded(), 0);
        w.note(7);
        w.note(5);
        w.flush().unwrap();
        assert_eq!(Witness::open(&path).unwrap().recorded(), 7);
        w.reset(3).unwrap();
        assert_eq!(Witness::open(&path).unwrap().recorded(), 3);
    }

    #[test]
    fn a_damaged_witness_is_a_clear_error() {
        let path = temp("damaged");
        std::fs::write(&path, "garbage").unwrap();
        let e = Witness::open(&path).unwrap_err().to_string();
        assert!(e.contains("not a witness file"), "{e}");
    }
}
