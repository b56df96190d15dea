//! Device logic of the lnpd hardware signer. `no_std` + `alloc`: the same
//! code runs on a board and in the host simulator.
//!
//! [`hid`] frames `signer.proto` messages into 64-byte USB HID reports;
//! [`flash`] is the signer core's store over two flash slots with
//! power-cut-safe updates; [`ui`] is what the device shows and asks its
//! user (pairing codes, approvals, allow-list entries); [`device`] runs the
//! signer core behind them: pairing, the paired host's proof on each
//! connection, and the request loop. The host simulator (`lnpd-signer-sim`)
//! runs this crate with a file for flash and a socket for USB; a board
//! needs its USB HID and flash drivers (see the README).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod device;
pub mod flash;
pub mod session;
pub mod ui;

/// USB HID framing (shared with the host side, in `lnpd-proto`).
pub use lnpd_proto::hid;

pub use lnpd_proto::signer as wire;
