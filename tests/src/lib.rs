//! End-to-end tests of lnpd live in `tests/`; the harness they share with
//! the benchmarks is here: real processes ([`process`], [`node_process`],
//! [`sim`]), the regtest chain ([`regtest`], [`network`]) and the hostile
//! node ([`hostile`]).

pub mod process;
pub use process::*;

pub mod burst;
pub mod etcd;
pub mod hostile;
pub mod hsm;
pub mod network;
pub mod node_process;
pub mod regtest;
pub mod scrape;
pub mod sim;
