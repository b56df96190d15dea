//! lnpd's signer core, `no_std` + `alloc`: it holds the keys, keeps
//! per-channel state, rebuilds every transaction it is asked to sign, runs
//! the policy and persists through the [`store::Store`] trait before any
//! reply leaves. The daemon (`lnpd-signer`) serves it over gRPC with mutual
//! TLS and a durable store; the firmware (`lnpd-signer-firmware`) serves
//! the same core over USB.
//!
//! Layout: [`signer::Signer`] (the type, its state and durable writes);
//! [`ops`] (one module per kind of request, each: look up, rebuild, run its
//! validator from [`policy`], persist, sign); pure data and derivations in
//! [`chain`], [`wallet`], [`keys`], [`commitment`], [`revocation`];
//! persisted records in [`state`].
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod chain;
pub mod commitment;
pub mod counterparty_commitment;
pub mod error;
pub mod keys;
pub mod ops;
pub mod policy;
pub mod revocation;
pub mod signer;
pub mod state;
pub mod store;
pub mod wallet;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use error::{ErrorKind, SignerError};
pub use keys::Seed;
pub use lnpd_proto::{ChannelKeysId, CommitmentNumber};
pub use ops::NodeKey;
pub use policy::{PolicyConfig, RuleId, RuleMode};
pub use signer::{Entropy, Signer, MAX_REQUEST_BYTES};
