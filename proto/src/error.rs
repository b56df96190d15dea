//! The signer's error, as both sides see it: every refusal says why and
//! names the policy rule when one applies. On every transport (gRPC,
//! batches, USB) it travels as the `Error` body of a `Reply`; this module
//! is the one place it is mapped to and from that message.

use alloc::string::{String, ToString};
use core::fmt;

use crate::rules::RuleId;
use crate::signer as pb;

/// What kind of failure a [`SignerError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (bad length, invalid point, missing field).
    Invalid,
    /// The request names something the signer does not know.
    NotFound,
    /// Valid, but out of order for the channel's state.
    FailedPrecondition,
    /// Refused by a policy rule.
    Policy,
    /// The signer could not read or persist its state.
    Internal,
    /// The signer cannot serve this node now: it speaks another protocol
    /// version, or is not the one that may sign (retrying later may help).
    Unavailable,
}

impl ErrorKind {
    /// A short lowercase name (metrics labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Policy => "policy",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// A refused or failed request. State is unchanged whenever one is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerError {
    /// Kind of failure.
    pub kind: ErrorKind,
    /// The policy rule that refused, for [`ErrorKind::Policy`].
    pub rule: Option<RuleId>,
    /// Human-readable reason; never contains secret material.
    pub message: String,
}

impl SignerError {
    fn new(kind: ErrorKind, message: impl ToString) -> Self {
        Self {
            kind,
            rule: None,
            message: message.to_string(),
        }
    }
    /// A malformed request.
    pub fn invalid(message: impl ToString) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    /// An unknown channel or commitment.
    pub fn not_found(message: impl ToString) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// A request that comes out of order.
    pub fn precondition(message: impl ToString) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    /// A refusal by a policy rule.
    pub fn policy(rule: RuleId, message: impl ToString) -> Self {
        Self {
            kind: ErrorKind::Policy,
            rule: Some(rule),
            message: message.to_string(),
        }
    }
    /// A storage or internal failure.
    pub fn internal(message: impl ToString) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// The signer cannot serve now (version mismatch, not the active one).
    pub fn unavailable(message: impl ToString) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// The error as the wire's `Error` message.
    pub fn to_wire(&self) -> pb::Error {
        let kind = match self.kind {
            ErrorKind::Invalid => pb::ErrorKind::Invalid,
            ErrorKind::NotFound => pb::ErrorKind::NotFound,
            ErrorKind::FailedPrecondition => pb::ErrorKind::FailedPrecondition,
            ErrorKind::Policy => pb::ErrorKind::Policy,
            ErrorKind::Internal => pb::ErrorKind::Internal,
            ErrorKind::Unavailable => pb::ErrorKind::Unavailable,
        };
        pb::Error {
            kind: kind as i32,
            rule: self
                .rule
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            message: self.message.clone(),
        }
    }

    /// A wire `Error` back as the error. An unknown kind (a newer signer)
    /// reads as internal; an unknown rule id keeps its text in the message.
    pub fn from_wire(e: &pb::Error) -> Self {
        let kind = match pb::ErrorKind::try_from(e.kind) {
            Ok(pb::ErrorKind::Invalid) => ErrorKind::Invalid,
            Ok(pb::ErrorKind::NotFound) => ErrorKind::NotFound,
            Ok(pb::ErrorKind::FailedPrecondition) => ErrorKind::FailedPrecondition,
            Ok(pb::ErrorKind::Policy) => ErrorKind::Policy,
            Ok(pb::ErrorKind::Unavailable) => ErrorKind::Unavailable,
            Ok(pb::ErrorKind::Internal | pb::ErrorKind::Unspecified) | Err(_) => {
                ErrorKind::Internal
            }
        };
        let rule = RuleId::parse(&e.rule);
        let message = match (rule, e.rule.is_empty()) {
            (None, false) => alloc::format!("{} (rule {})", e.message, e.rule),
            _ => e.message.clone(),
        };
        Self {
            kind,
            rule,
            message,
        }
    }
}

impl fmt::Display for SignerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            Some(rule) => write!(f, "refused by policy {}: {}", rule.as_str(), self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl core::error::Error for SignerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_rule_survives_the_wire() {
        let kinds = [
            ErrorKind::Invalid,
            ErrorKind::NotFound,
            ErrorKind::FailedPrecondition,
            ErrorKind::Internal,
            ErrorKind::Unavailable,
        ];
        for kind in kinds {
            let e = SignerError {
                kind,
                rule: None,
                message: "why".into(),
            };
            assert_eq!(SignerError::from_wire(&e.to_wire()), e);
        }
        for rule in RuleId::ALL {
            let e = SignerError::policy(*rule, "no");
            assert_eq!(SignerError::from_wire(&e.to_wire()), e);
        }
    }
}
