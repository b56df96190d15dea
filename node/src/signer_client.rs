//! The node's connection to its remote signer: gRPC over mutual TLS.
//!
//! Grows into LDK's signer traits implemented as calls; today it names the
//! TLS files and connects.

pub use lnpd_proto::client::{call, connect, refused_rule, ClientError, SignerTls};
