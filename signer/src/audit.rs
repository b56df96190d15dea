//! The audit log: every refusal and every operator approval appended as one
//! JSON line to `audit.log` in the data directory and synced to disk, so it
//! survives crashes and can be read while the daemon runs
//! (`lnpd-signer log`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Seconds since the Unix epoch; written as RFC 3339 UTC
    /// ("2026-12-02T10:46:33Z"). Entries of older releases (a number) are
    /// read as well.
    #[serde(with = "rfc3339")]
    pub time: u64,
    /// What happened: "refused" or "approved".
    pub event: String,
    /// The policy rule id.
    pub rule: String,
    /// The operation asked for.
    pub operation: String,
    /// The channel keys id (hex), when the request named a channel.
    pub channel: Option<String>,
    /// The signer's reason.
    pub reason: String,
}

impl AuditEntry {
    /// A refusal happening now.
    pub fn refusal(rule: &str, operation: &str, channel: Option<String>, reason: &str) -> Self {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        AuditEntry {
            time,
            event: "refused".into(),
            rule: rule.into(),
            operation: operation.into(),
            channel,
            reason: reason.into(),
        }
    }
}

impl AuditEntry {
    /// An operator's approval happening now (`event` "approved").
    pub fn approval(rule: &str, operation: &str, reason: &str) -> Self {
        AuditEntry {
            event: "approved".into(),
            ..AuditEntry::refusal(rule, operation, None, reason)
        }
    }
}

/// The audit log's times: RFC 3339 in UTC, to the second.
pub mod rfc3339 {
    use serde::{de, Deserializer, Serializer};
    use std::time::{Duration, UNIX_EPOCH};

    /// `secs` since the epoch as RFC 3339 UTC.
    pub fn format(secs: u64) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
    }

    /// Writes the time as RFC 3339.
    pub fn serialize<S: Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*secs))
    }

    /// Reads RFC 3339, or seconds since the epoch (older entries).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct Time;
        impl de::Visitor<'_> for Time {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 time or seconds since the Unix epoch")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                let t = humantime::parse_rfc3339_weak(v).map_err(E::custom)?;
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .map_err(|_| E::custom("a time before 1970"))
            }
        }
        d.deserialize_any(Time)
    }
}

/// The append-only audit file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Records `e` if a policy rule refused (other failures are not
    /// refusals); `channel` is the request's channel.
    pub fn refusal_of(
        &self,
        e: &lnpd_signer_core::SignerError,
        op: &str,
        channel: Option<lnpd_signer_core::ChannelKeysId>,
    ) {
        if let Some(rule) = e.rule {
            self.append(&AuditEntry::refusal(
                rule.as_str(),
                op,
                channel.map(|c| hex::encode(c.0)),
                &e.message,
            ));
        }
    }

    /// Appends an entry durably. A failure is logged, never fatal: the
    /// refusal itself has already happened.
    pub fn append(&self, entry: &AuditEntry) {
        let line = match serde_json::to_string(entry) {
            Ok(l) => l,
            Err(e) => return tracing::error!("audit entry not encodable: {e}"),
        };
        let result = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit lock poisoned"))
            .and_then(|mut f| {
                writeln!(f, "{line}")?;
                f.sync_data()
            });
        if let Err(e) = result {
            tracing::error!("cannot write the audit log {}: {e}", self.path.display());
        }
    }
}

/// Reads every entry of an audit file (a missing file is an empty log);
/// unreadable lines are reported, not skipped silently.
pub fn read(path: &Path) -> std::io::Result<Vec<Result<AuditEntry, String>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back() {
        let path = std::env::temp_dir().join(format!("lnpd-audit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::open(&path).unwrap();
        let e = AuditEntry::refusal(
            "commitment-fee-range",
            "sign_counterparty_commitment",
            Some("ab".into()),
            "too high",
        );
        log.append(&e);
        log.append(&e);
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].as_ref().unwrap(), &e);
        // On disk the time is RFC 3339.
        let raw = std::fs::read_to_string(&path).unwrap();
        let expected = format!("\"time\":\"{}\"", rfc3339::format(e.time));
        assert!(raw.contains(&expected), "{raw}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn times_are_rfc3339_and_older_entries_still_read() {
        assert_eq!(rfc3339::format(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339::format(1_796_208_393), "2026-12-02T10:46:33Z");
        let older: AuditEntry = serde_json::from_str(
            r#"{"time":1796208393,"event":"refused","rule":"r","operation":"o","channel":null,"reason":"x"}"#,
        )
        .unwrap();
        assert_eq!(older.time, 1_796_208_393);
        let written = serde_json::to_string(&older).unwrap();
        assert!(
            written.contains(r#""time":"2026-12-02T10:46:33Z""#),
            "{written}"
        );
        let back: AuditEntry = serde_json::from_str(&written).unwrap();
        assert_eq!(back, older);
        assert!(serde_json::from_str::<AuditEntry>(
            r#"{"time":"yesterday","event":"refused","rule":"r","operation":"o","channel":null,"reason":"x"}"#
        )
        .is_err());
    }
}
