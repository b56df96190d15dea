//! The signer's error (shared with the node through `lnpd-proto`), and how
//! a store failure becomes one.

pub use lnpd_proto::{ErrorKind, SignerError};

impl From<crate::store::StoreError> for SignerError {
    fn from(e: crate::store::StoreError) -> Self {
        // Nothing was saved, so nothing was signed: the caller may retry
        // (a full disk, a replicated store without quorum).
        SignerError::unavailable(alloc::format!(
            "the signer's state could not be saved (nothing signed; retry later): {e}"
        ))
    }
}
