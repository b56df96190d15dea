//! lnpd's signer.
//!
//! The core (everything outside `daemon`) is `no_std` + `alloc`: it holds the
//! keys, keeps per-channel state, rebuilds every transaction it is asked to
//! sign, runs the policy and persists through the [`store::Store`] trait
//! before any reply leaves. The daemon (feature `std`) wraps it in a gRPC
//! server with mutual TLS and a durable embedded store; the firmware crate
//! wraps the same core for a USB device.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod chain;
pub mod commitment;
pub mod error;
pub mod handler;
pub mod keys;
pub mod policy;
pub mod revocation;
pub mod state;
pub mod store;
pub mod types;
pub mod wallet;

mod channel_ops;
pub mod invoices;
mod node_ops;
mod spend;
mod sweep_ops;
mod wallet_ops;

#[cfg(feature = "std")]
pub mod daemon;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use error::{ErrorKind, SignerError};
pub use handler::Signer;
pub use keys::Seed;
pub use policy::{PolicyConfig, RuleId, RuleMode};
pub use types::{ChannelKeysId, CommitmentNumber};
