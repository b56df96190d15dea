//! lnpd's wire contracts, generated from `signer.proto` and `node.proto`,
//! and the vocabulary node and signer share: ids ([`ChannelKeysId`],
//! [`CommitmentNumber`]), policy rules ([`RuleId`]), the signer's error
//! ([`SignerError`], mapped to the wire in one place) and what each request
//! of the envelope is ([`envelope`]).
//!
//! Without the `grpc` feature this crate is `no_std` + `alloc` (the
//! firmware uses it on the USB wire), with the hardware signer's link:
//! [`hid`] framing and [`pairing`] codes.
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

/// Bounded busy-polling of the round trip (node and signer daemon).
#[cfg(feature = "grpc")]
pub mod busy_poll;
/// Client helpers for `signer.proto` (mutual TLS, the envelope).
#[cfg(feature = "grpc")]
pub mod client;

pub mod envelope;
pub mod error;
pub mod ids;
#[cfg(feature = "ldk")]
pub mod ldk;
pub mod rules;
/// Bounds on connections held at once, in all and per address.
#[cfg(feature = "grpc")]
pub mod slots;

pub use envelope::{AWAITING_GREETING, MAX_BATCH, SIGNER_PROTOCOL_VERSION};
pub use error::{ErrorKind, SignerError};
pub use ids::{ChannelKeysId, CommitmentNumber, INITIAL_COMMITMENT_NUMBER};
pub use rules::RuleId;
