//! The signer's error (shared with the node through `lnpd-proto`), and how
//! a store failure becomes one.

pub use lnpd_proto::{ErrorKind, SignerError};

impl From<crate::store::StoreError> for SignerError {
    fn from(e: crate::store::StoreError) -> Self {
        SignerError::internal(alloc::format!("state store: {e}"))
    }
}
