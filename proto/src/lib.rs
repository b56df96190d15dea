//! lnpd's wire contracts, generated from `signer.proto` and `node.proto`.
//!
//! Without the `grpc` feature this crate is `no_std` + `alloc` and holds the
//! message types only (the firmware uses them on the USB wire), plus the
//! hardware signer's link: [`hid`] framing and [`pairing`] codes.
#![cfg_attr(not(feature = "grpc"), no_std)]

extern crate alloc;

pub mod device_client;
pub mod hid;
pub mod pairing;

/// Node <-> signer messages and (with `grpc`) the `Signer` service.
pub mod signer {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/lnpd.signer.v1.rs"));
}

/// The node's admin API and (with `grpc`) the `Node` service.
pub mod node {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/lnpd.node.v1.rs"));
}

macro_rules! redacted_debug {
    ($($ty:ident),*) => {$(
        impl core::fmt::Debug for signer::$ty {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($ty), " { <redacted> }"))
            }
        }
    )*};
}

// Secrets never reach logs through Debug.
redacted_debug!(
    ReleaseCommitmentSecretReply,
    ValidateHolderCommitmentReply,
    GetNodeKeysReply,
    EcdhReply
);

/// Client helpers for `signer.proto` (mutual TLS, typed dispatch).
#[cfg(feature = "grpc")]
pub mod client;

/// Version of the node <-> signer protocol; the major part must match.
pub const SIGNER_PROTOCOL_VERSION: u32 = 2;

/// Whether a request may be sent in a `Batch` (see `BatchRequest` in
/// signer.proto): the channel-state requests whose only effect is on their
/// channel's record.
pub fn batchable(body: &signer::request::Body) -> bool {
    use signer::request::Body as Q;
    matches!(
        body,
        Q::ValidateCounterpartyRevocation(_)
            | Q::ValidateHolderCommitment(_)
            | Q::SignCounterpartyCommitment(_)
            | Q::ReleaseCommitmentSecret(_)
            | Q::GetPerCommitmentPoint(_)
            | Q::Ping(_)
    )
}

/// Most requests in one `Batch`.
pub const MAX_BATCH: usize = 16;
