//! Pairing a hardware signer with its host, and the per-connection proof
//! that the device is the paired one. Both sides compute these.
//!
//! At pairing the host sends its key and a fresh nonce; the device shows a
//! six-digit code derived from both keys and the nonce, and the host shows
//! the same code: the operator checks they match and confirms on the
//! device. On every later connection the host sends a fresh challenge and
//! the device signs [`hello_digest`] with its identity key; the host signs
//! [`host_hello_digest`] over a nonce the device gave it on that
//! connection, so a recorded hello cannot be replayed.

use alloc::string::String;
use bitcoin_hashes::{sha256, Hash, HashEngine};

/// The code both sides show at pairing.
pub fn pairing_code(device_key: &[u8], host_key: &[u8], nonce: &[u8]) -> String {
    let mut e = sha256::Hash::engine();
    e.input(b"lnpd-device-pair");
    for part in [device_key, host_key, nonce] {
        e.input(&(part.len() as u32).to_be_bytes());
        e.input(part);
    }
    let h = sha256::Hash::from_engine(e).to_byte_array();
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 1_000_000;
    alloc::format!("{n:06}")
}

/// What the device signs to answer a hello.
pub fn hello_digest(challenge: &[u8], host_key: &[u8]) -> [u8; 32] {
    let mut e = sha256::Hash::engine();
    e.input(b"lnpd-device-hello");
    e.input(&(challenge.len() as u32).to_be_bytes());
    e.input(challenge);
    e.input(host_key);
    sha256::Hash::from_engine(e).to_byte_array()
}

/// What the host signs in its hello: the device's nonce for this
/// connection, the connection's channel id and the device's key.
pub fn host_hello_digest(nonce: &[u8], cid: u32, device_key: &[u8]) -> [u8; 32] {
    let mut e = sha256::Hash::engine();
    e.input(b"lnpd-host-hello");
    e.input(&(nonce.len() as u32).to_be_bytes());
    e.input(nonce);
    e.input(&cid.to_be_bytes());
    e.input(device_key);
    sha256::Hash::from_engine(e).to_byte_array()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_depend_on_every_input() {
        let c = pairing_code(&[2; 33], &[3; 33], &[9; 32]);
        assert_eq!(c.len(), 6);
        assert!(c.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(c, pairing_code(&[2; 33], &[3; 33], &[9; 32]));
        assert_ne!(c, pairing_code(&[2; 33], &[3; 33], &[8; 32]));
        assert_ne!(c, pairing_code(&[2; 33], &[4; 33], &[9; 32]));
        assert_ne!(
            hello_digest(&[1; 32], &[3; 33]),
            hello_digest(&[1; 32], &[4; 33])
        );
    }
}
