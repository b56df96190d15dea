//! LDK's logger onto `tracing`.

use lightning::util::logger::{Level, Logger, Record};

/// Forwards LDK's log records to `tracing` (target `ldk`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLogger;

impl Logger for TracingLogger {
    fn log(&self, r: Record) {
        match r.level {
            Level::Gossip | Level::Trace => {
                tracing::trace!(target: "ldk", module = r.module_path, "{}", r.args)
            }
            Level::Debug => tracing::debug!(target: "ldk", module = r.module_path, "{}", r.args),
            Level::Info => tracing::info!(target: "ldk", "{}", r.args),
            Level::Warn => tracing::warn!(target: "ldk", "{}", r.args),
            Level::Error => tracing::error!(target: "ldk", "{}", r.args),
        }
    }
}
