//! One updating line on the terminal for a command that waits (a payment,
//! a channel's confirmations, the chain sync, a device's confirmation):
//! written to standard error only when it is a terminal and the command
//! was not asked for `--json`, so scripts and pipes see only the result.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// A progress line (see the module's doc).
pub struct Progress {
    enabled: bool,
    what: String,
    started: Instant,
    shown: bool,
}

impl Progress {
    /// A line about `what`; silent when `quiet` or standard error is not a
    /// terminal.
    pub fn new(what: &str, quiet: bool) -> Self {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
            what: what.to_string(),
            started: Instant::now(),
            shown: false,
        }
    }

    /// Whether anything is shown.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Replaces the line by "WHAT: STATE (N s)".
    pub fn update(&mut self, state: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        // \r and "erase line": the new state replaces the old one.
        let _ = write!(
            err,
            "\r\x1b[2K{}: {state} ({} s)",
            self.what,
            self.started.elapsed().as_secs()
        );
        let _ = err.flush();
        self.shown = true;
    }

    /// Clears the line (the result is printed after it).
    pub fn finish(&mut self) {
        if self.enabled && self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
