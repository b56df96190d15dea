//! The signer's error type: every refusal says why, and names the policy
//! rule when one applies.

use alloc::string::{String, ToString};
use core::fmt;

use crate::policy::RuleId;

/// What kind of failure a [`SignerError`] is; maps onto gRPC status codes.
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
    /// A malformed request.
    pub fn invalid(message: impl ToString) -> Self {
        Self {
            kind: ErrorKind::Invalid,
            rule: None,
            message: message.to_string(),
        }
    }
    /// An unknown channel or commitment.
    pub fn not_found(message: impl ToString) -> Self {
        Self {
            kind: ErrorKind::NotFound,
            rule: None,
            message: message.to_string(),
        }
    }
    /// A request that comes out of order.
    pub fn precondition(message: impl ToString) -> Self {
        Self {
            kind: ErrorKind::FailedPrecondition,
            rule: None,
            message: message.to_string(),
        }
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
        Self {
            kind: ErrorKind::Internal,
            rule: None,
            message: message.to_string(),
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

#[cfg(feature = "std")]
impl std::error::Error for SignerError {}

impl From<crate::store::StoreError> for SignerError {
    fn from(e: crate::store::StoreError) -> Self {
        SignerError::internal(alloc::format!("state store: {e}"))
    }
}
