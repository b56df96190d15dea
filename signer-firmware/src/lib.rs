//! Device logic of the lnpd hardware signer. `no_std`: the same code runs on a
//! board and in the host simulator.
#![no_std]

pub use lnpd_proto::signer as wire;
