//! End-to-end tests of lnpd live in `tests/`; the process harness they use
//! is `lnpd_signer::testing::process` (shared with the benchmarks).

pub use lnpd_signer::testing::process::*;

pub mod hostile;
pub mod network;
pub mod node_process;
pub mod regtest;
pub mod sim;
