//! The lnpd node. It holds no private key: every signature and ECDH comes
//! from `lnpd-signer` over gRPC with mutual TLS.

pub mod admin;
pub mod chain;
pub mod chain_watch;
pub mod config;
pub mod events;
pub mod fee_bump;
pub mod hold;
pub mod ldk_types;
pub mod logger;
pub mod metrics;
pub mod node;
pub mod refused_validation;
pub mod signer_chain;
pub mod signer_client;
pub mod startup;
pub mod store;
pub mod tasks;
pub mod wallet;
pub mod wiring;
