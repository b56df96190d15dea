//! The seed at rest: encrypted with XChaCha20-Poly1305 under a key stretched
//! from the operator's passphrase by Argon2id (memory-hard).
//!
//! File layout: magic `LNPDSEED1`, m_cost (KiB, u32 LE), t_cost (u32 LE),
//! salt (16), nonce (24), ciphertext (seed + 16-byte tag).

use std::fs;
use std::io::Write as _;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use lnpd_signer_core::Seed;

const MAGIC: &[u8; 9] = b"LNPDSEED1";
const HEADER: usize = 9 + 4 + 4 + 16 + 24;

/// Argon2id cost: 64 MiB, 3 passes.
pub const DEFAULT_M_COST_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const DEFAULT_T_COST: u32 = 3;

/// Why the seed file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SeedFileError {
    /// Disk error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a seed file, or truncated.
    #[error("not an lnpd seed file (bad header or truncated)")]
    Format,
    /// Wrong passphrase or tampered file.
    #[error("wrong passphrase, or the seed file was altered")]
    Decrypt,
    /// KDF failure.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// Refusing to overwrite.
    #[error("{0} already exists; refusing to overwrite a seed")]
    Exists(String),
}

fn stretch(pass: &[u8], salt: &[u8], m: u32, t: u32) -> Result<Zeroizing<[u8; 32]>, SeedFileError> {
    let params = Params::new(m, t, 1, Some(32)).map_err(|e| SeedFileError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass, salt, &mut key[..])
        .map_err(|e| SeedFileError::Kdf(e.to_string()))?;
    Ok(key)
}

/// Encrypts `seed` under `passphrase` into a new file (mode 0600).
pub fn write(
    path: &Path,
    seed: &Seed,
    passphrase: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
) -> Result<(), SeedFileError> {
    if path.exists() {
        return Err(SeedFileError::Exists(path.display().to_string()));
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut salt).map_err(|e| SeedFileError::Kdf(e.to_string()))?;
    getrandom::fill(&mut nonce).map_err(|e| SeedFileError::Kdf(e.to_string()))?;
    let key = stretch(passphrase, &salt, m_cost_kib, t_cost)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), seed.expose())
        .map_err(|_| SeedFileError::Kdf("encryption failed".into()))?;
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&m_cost_kib.to_le_bytes());
    out.extend_from_slice(&t_cost.to_le_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    crate::tls::write_private(path, &out)?;
    Ok(())
}

/// Decrypts the seed file into `out` (cleared first): the decryption runs
/// in place, so the seed is never in any buffer but `out` (which the caller
/// may have locked in memory; its capacity must hold the ciphertext).
pub fn read_into(path: &Path, passphrase: &[u8], out: &mut Vec<u8>) -> Result<(), SeedFileError> {
    use chacha20poly1305::aead::AeadInPlace;
    let data = fs::read(path)?;
    if data.len() < HEADER + 16 + 16 || &data[..9] != MAGIC {
        return Err(SeedFileError::Format);
    }
    // A longer ciphertext would make `out` grow: a copy outside the
    // caller's (locked) buffer.
    if data.len() - HEADER > MAX_CIPHERTEXT.min(out.capacity()) {
        return Err(SeedFileError::Format);
    }
    let m = u32::from_le_bytes([data[9], data[10], data[11], data[12]]);
    let t = u32::from_le_bytes([data[13], data[14], data[15], data[16]]);
    let salt = &data[17..33];
    let nonce = &data[33..57];
    let key = stretch(passphrase, salt, m, t)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    out.zeroize();
    out.extend_from_slice(&data[57..]);
    if cipher
        .decrypt_in_place(XNonce::from_slice(nonce), b"", out)
        .is_err()
    {
        out.zeroize();
        return Err(SeedFileError::Decrypt);
    }
    Ok(())
}

/// Largest ciphertext of a seed file (a 64-byte seed and its tag).
pub const MAX_CIPHERTEXT: usize = 64 + 16;

/// Reads a passphrase: from a file, the `LNPD_SIGNER_PASSPHRASE` variable, or standard input.
pub fn read_passphrase(file: Option<&Path>) -> Result<Zeroizing<String>, std::io::Error> {
    if let Some(f) = file {
        let s = Zeroizing::new(fs::read_to_string(f)?);
        return Ok(Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Ok(p) = std::env::var("LNPD_SIGNER_PASSPHRASE") {
        // Not left in the environment for child processes or /proc to show.
        std::env::remove_var("LNPD_SIGNER_PASSPHRASE");
        return Ok(Zeroizing::new(p));
    }
    eprint!("Seed passphrase: ");
    std::io::stderr().flush()?;
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line)?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let dir = std::env::temp_dir().join(format!("lnpd-seed-test-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("seed.enc");
        let _ = fs::remove_file(&path);
        let seed = Seed::new(vec![7u8; 64]).unwrap();
        write(&path, &seed, b"correct horse", 1024, 1).unwrap();
        let raw = fs::read(&path).unwrap();
        assert!(
            !raw.windows(64).any(|w| w == [7u8; 64]),
            "seed must not be stored in clear"
        );
        let mut out = Vec::with_capacity(MAX_CIPHERTEXT);
        read_into(&path, b"correct horse", &mut out).unwrap();
        assert_eq!(out.as_slice(), seed.expose());
        assert!(matches!(
            read_into(&path, b"wrong", &mut out),
            Err(SeedFileError::Decrypt)
        ));
        assert!(out.is_empty(), "nothing left after a wrong passphrase");
        assert!(matches!(
            write(&path, &seed, b"x", 1024, 1),
            Err(SeedFileError::Exists(_))
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
