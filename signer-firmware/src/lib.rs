//! Device logic of the lnpd hardware signer. `no_std` + `alloc`: the same
//! code runs on a board and in the host simulator.
//!
//! Done: [`hid`], the framing of `signer.proto` messages into 64-byte USB
//! HID reports, and [`flash`], the signer core's store over two flash slots
//! with power-cut-safe updates, and [`device`], which runs the signer core
//! behind them. To come (see the README): the user-interface abstraction,
//! pairing, the simulator.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod device;
pub mod flash;
pub mod ui;

/// USB HID framing (shared with the host side, in `lnpd-proto`).
pub use lnpd_proto::hid;

pub use lnpd_proto::signer as wire;
