//! The `lnpd-signer` daemon: the signer core (`lnpd-signer-core`) behind a
//! gRPC server with mutual TLS ([`server`]), a durable store
//! ([`store_redb`]), the encrypted seed ([`seed_file`]), TLS material
//! ([`tls`]), configuration ([`config`]), the state witness against
//! rollback ([`witness`]), the operator's allow-list,
//! approvals and audit log, and the bridge to a hardware signer
//! ([`device_bridge`]); replicas over etcd ([`etcd`], [`store_etcd`],
//! [`replica`]).
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod approvals;
pub mod audit;
pub mod config;
pub mod data_dir;
pub mod device_bridge;
pub mod etcd;
pub mod migrate;
pub mod replica;
pub mod seed_file;
pub mod seed_hsm;
pub mod seed_seal;
pub mod server;
pub mod store_etcd;
pub mod store_redb;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod tls;
pub mod witness;

pub use data_dir::DataDir;
