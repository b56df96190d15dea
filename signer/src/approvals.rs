//! The operator's side of `payment-approval` on the daemon: a payment
//! waiting for approval is written to `approvals/<payment hash>.json` in
//! the data directory; `lnpd-signer approve|deny <id>` (the id: the hash's
//! first 16 hex digits, or any unique prefix of 8 or more) answers by
//! creating `<payment hash>.approved` or `.denied` next to it. The daemon reads the
//! answer the next time the node shows the invoice (the node retries while
//! it waits). Like the allow-list, this never travels over the node's
//! connection.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A payment waiting for the operator, as `lnpd-signer pending` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPayment {
    /// What the operator approves it by (the hash's first 16 hex digits).
    pub id: String,
    /// Payment hash (hex): the request's key.
    pub payment_hash: String,
    /// Amount of the invoice (msat).
    pub amount_msat: u64,
    /// Payee node id (hex).
    pub payee: String,
    /// Unix time of the request.
    pub requested_at: u64,
    /// Unix time after which it is declined.
    pub deadline: u64,
}

/// The operator's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pay it.
    Approved,
    /// Do not.
    Denied,
}

impl Decision {
    fn suffix(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Denied => "denied",
        }
    }
}

/// What went wrong with the approvals directory or an id.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Disk error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not an id the signer hands out.
    #[error("{0:?} is not a payment id (8 to 64 hex digits, as `lnpd-signer pending` shows)")]
    BadId(String),
    /// Several waiting payments start with that id.
    #[error("{0} matches more than one waiting payment: give more digits")]
    Ambiguous(String),
    /// No payment waits under this id.
    #[error("no payment waits for approval under id {0} (see `lnpd-signer pending`)")]
    Unknown(String),
    /// Answered before.
    #[error(
        "payment {0} was already answered; the signer applies the answer when the node asks again"
    )]
    Answered(String),
    /// A file that is not what the daemon wrote.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApprovalError + '_ {
    move |source| ApprovalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `approvals/` directory.
pub struct ApprovalDir {
    dir: PathBuf,
}

impl ApprovalDir {
    /// The directory (created on the first request).
    pub fn new(dir: PathBuf) -> Self {
        ApprovalDir { dir }
    }

    /// A payment hash in hex (the file names' key).
    fn checked(key: &str) -> Result<&str, ApprovalError> {
        if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(key)
        } else {
            Err(ApprovalError::BadId(key.to_string()))
        }
    }

    fn request_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn answer_path(&self, key: &str, d: Decision) -> PathBuf {
        self.dir.join(format!("{key}.{}", d.suffix()))
    }

    /// Records a waiting payment (written whole, then renamed into place).
    pub fn post(&self, p: &PendingPayment) -> Result<(), ApprovalError> {
        let key = Self::checked(&p.payment_hash)?;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.request_path(key);
        let tmp = self.dir.join(format!("{key}.json.tmp"));
        let body = serde_json::to_vec_pretty(p).map_err(|e| ApprovalError::Format {
            path: tmp.display().to_string(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The waiting payment with payment hash `key` (hex), if any.
    pub fn get(&self, key: &str) -> Result<Option<PendingPayment>, ApprovalError> {
        let path = self.request_path(Self::checked(key)?);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ApprovalError::Format {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The operator's answer for payment hash `key`, if given.
    pub fn answer(&self, key: &str) -> Result<Option<Decision>, ApprovalError> {
        let key = Self::checked(key)?;
        // A denial wins over an approval given as well.
        for d in [Decision::Denied, Decision::Approved] {
            if self.answer_path(key, d).exists() {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// The waiting payment whose hash starts with `id` (8+ hex digits).
    pub fn resolve(&self, id: &str) -> Result<PendingPayment, ApprovalError> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApprovalError::BadId(id));
        }
        let mut found = self
            .list()?
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.payment_hash.starts_with(&id));
        match (found.next(), found.next()) {
            (Some(p), None) => Ok(p),
            (Some(_), Some(_)) => Err(ApprovalError::Ambiguous(id)),
            (None, _) => Err(ApprovalError::Unknown(id)),
        }
    }

    /// Answers a waiting payment (the operator's command).
    pub fn answer_with(&self, id: &str, d: Decision) -> Result<PendingPayment, ApprovalError> {
        let p = self.resolve(id)?;
        if self.answer(&p.payment_hash)?.is_some() {
            return Err(ApprovalError::Answered(p.id));
        }
        let path = self.answer_path(&p.payment_hash, d);
        std::fs::File::create(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
        Ok(p)
    }

    /// Forgets payment hash `key` once its answer has been applied.
    pub fn clear(&self, key: &str) {
        let Ok(id) = Self::checked(key) else { return };
        for path in [
            self.answer_path(id, Decision::Approved),
            self.answer_path(id, Decision::Denied),
            self.request_path(id),
        ] {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }

    /// Every waiting payment, oldest first, with its answer if given.
    pub fn list(&self) -> Result<Vec<(PendingPayment, Option<Decision>)>, ApprovalError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|k| Self::checked(k).is_ok())
            else {
                continue;
            };
            if let Some(p) = self.get(id)? {
                let answer = self.answer(id)?;
                out.push((p, answer));
            }
        }
        out.sort_by_key(|(p, _)| p.requested_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(first: &str) -> PendingPayment {
        let hash = format!("{first}{}", "0".repeat(64 - first.len()));
        PendingPayment {
            id: hash[..16].to_string(),
            payment_hash: hash,
            amount_msat: 5_000_000,
            payee: "02".repeat(33),
            requested_at: 100,
            deadline: 700,
        }
    }

    #[test]
    fn posts_answers_and_clears() {
        let dir = std::env::temp_dir().join(format!("lnpd-approvals-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = ApprovalDir::new(dir.clone());
        assert!(a.list().unwrap().is_empty());
        let one = pending("0123456789abcdef01");
        let two = pending("0123456789abcdef02");
        let three = pending("abcdefabcd");
        for p in [&one, &two, &three] {
            a.post(p).unwrap();
        }
        assert_eq!(a.list().unwrap().len(), 3);
        assert_eq!(a.answer(&one.payment_hash).unwrap(), None);
        assert!(matches!(
            a.answer_with("ffffffffff", Decision::Approved),
            Err(ApprovalError::Unknown(_))
        ));
        assert!(matches!(
            a.answer_with("../../etc", Decision::Approved),
            Err(ApprovalError::BadId(_))
        ));
        // The 16-digit id two hashes share is not enough; more digits are.
        assert!(matches!(
            a.answer_with("0123456789abcdef", Decision::Approved),
            Err(ApprovalError::Ambiguous(_))
        ));
        a.answer_with("0123456789abcdef01", Decision::Approved)
            .unwrap();
        assert!(matches!(
            a.answer_with("0123456789abcdef01", Decision::Denied),
            Err(ApprovalError::Answered(_))
        ));
        assert_eq!(
            a.answer(&one.payment_hash).unwrap(),
            Some(Decision::Approved)
        );
        assert_eq!(a.answer(&two.payment_hash).unwrap(), None);
        a.clear(&one.payment_hash);
        assert_eq!(a.get(&one.payment_hash).unwrap(), None);
        assert_eq!(a.answer(&one.payment_hash).unwrap(), None);
        assert_eq!(a.list().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
