//! The seed sealed by an HSM over PKCS#11.
//!
//! The seed is encrypted with AES-256-GCM under a key generated inside the
//! token: a token object, sensitive and non-extractable, so its value never
//! leaves the HSM. `lnpd-signer run` asks the HSM to decrypt at start; it
//! needs the token's user PIN (a file), not a passphrase, so it can start
//! unattended (e.g. under systemd).
//!
//! File layout: magic `LNPDSEAL1`, the module path (u16 LE length + bytes),
//! the PIN file path (u16 + bytes), the token label (u8 + bytes), the key's
//! `CKA_ID` (16), the GCM IV (12), ciphertext + 16-byte tag. Everything
//! before the ciphertext is the GCM additional data, so an altered header
//! fails like an altered ciphertext. The module and PIN paths are recorded
//! for the operator only: opening uses signer.toml's `[seal]`
//! (`seed_seal::HsmConfig`), never a path read from the file.

use std::fs;
use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use zeroize::Zeroizing;

/// First bytes of an HSM-sealed seed file.
pub const MAGIC: &[u8; 9] = b"LNPDSEAL1";
const KEY_ID_LEN: usize = 16;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Where the HSM is and how to log in to it.
#[derive(Clone, Debug)]
pub struct HsmSettings {
    /// The vendor's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// A file holding the token's user PIN (one line).
    pub pin_file: PathBuf,
}

/// Why the HSM could not seal or unseal the seed.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// Disk error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("loading the PKCS#11 module {module}: {reason}")]
    Module {
        /// The module's path.
        module: String,
        /// What failed.
        reason: String,
    },
    /// No token with that label.
    #[error("no token labelled {label:?} in the HSM (tokens present: {present}); is it connected and initialised?")]
    NoToken {
        /// The label asked for.
        label: String,
        /// The labels found.
        present: String,
    },
    /// The PIN file could not be read.
    #[error("reading the PIN file {path}: {reason}")]
    PinFile {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The token refused the PIN.
    #[error("token {token:?} refused the PIN from {pin_file} (wrong PIN)")]
    WrongPin {
        /// The token.
        token: String,
        /// Where the PIN came from.
        pin_file: String,
    },
    /// Too many wrong PINs.
    #[error("token {0:?} has locked its user PIN (too many wrong PINs); its security officer must unlock it")]
    PinLocked(String),
    /// One more wrong PIN would lock the token: not tried unattended.
    #[error("token {0:?} would lock its user PIN at the next wrong one: not logging in unattended; log in once with the vendor's tool (which resets the count) after checking the PIN file")]
    PinFinalTry(String),
    /// The key that sealed the seed is gone from the token.
    #[error("the key that sealed the seed (label {label}) is not on token {token:?}: it was deleted, or this is another token")]
    KeyMissing {
        /// The key's label.
        label: String,
        /// The token.
        token: String,
    },
    /// Authentication of the sealed seed failed.
    #[error("the HSM could not decrypt the sealed seed ({0}): the file was altered or not sealed by this token's key — or the HSM failed; keep seed.enc and check the HSM before anything else")]
    Altered(String),
    /// Not an HSM-sealed seed file.
    #[error("not an HSM-sealed lnpd seed file (bad header or truncated)")]
    Format,
    /// Refusing to overwrite.
    #[error("{0} already exists; refusing to overwrite a seed")]
    Exists(String),
    /// Any other PKCS#11 failure.
    #[error("the HSM failed: {0}")]
    Pkcs11(String),
}

impl HsmError {
    fn ck(e: CkError) -> Self {
        HsmError::Pkcs11(e.to_string())
    }

    /// Whether retrying (a service restarting) would spend the token's PIN
    /// tries: the daemon exits with [`EXIT_PIN`] then.
    pub fn is_pin_refusal(&self) -> bool {
        matches!(
            self,
            HsmError::WrongPin { .. } | HsmError::PinLocked(_) | HsmError::PinFinalTry(_)
        )
    }
}

/// Exit status of `lnpd-signer` when the HSM refused (or would lock) its
/// PIN: the systemd unit does not restart on it (`RestartPreventExitStatus`).
pub const EXIT_PIN: i32 = 3;

/// What an HSM-sealed seed file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    /// The module path at sealing.
    pub module: PathBuf,
    /// The PIN file path at sealing.
    pub pin_file: PathBuf,
    /// The token's label.
    pub token: String,
    /// The key's `CKA_ID`.
    pub key_id: [u8; KEY_ID_LEN],
    iv: [u8; IV_LEN],
    /// Length of the header (the GCM additional data).
    len: usize,
}

impl SealedHeader {
    /// The key's `CKA_LABEL` (derived from its id).
    pub fn key_label(&self) -> String {
        key_label(&self.key_id)
    }
}

fn key_label(id: &[u8]) -> String {
    format!("lnpd-seed-{}", hex::encode(&id[..8]))
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8], wide: bool) -> Result<(), HsmError> {
    if wide {
        let len = u16::try_from(bytes.len()).map_err(|_| HsmError::Format)?;
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.push(u8::try_from(bytes.len()).map_err(|_| HsmError::Format)?);
    }
    out.extend_from_slice(bytes);
    Ok(())
}

fn path_bytes(p: &Path) -> Result<&[u8], HsmError> {
    p.to_str().map(str::as_bytes).ok_or(HsmError::Format)
}

fn encode_header(
    s: &HsmSettings,
    key_id: &[u8; KEY_ID_LEN],
    iv: &[u8; IV_LEN],
) -> Result<Vec<u8>, HsmError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(MAGIC);
    push_field(&mut out, path_bytes(&s.module)?, true)?;
    push_field(&mut out, path_bytes(&s.pin_file)?, true)?;
    push_field(&mut out, s.token.as_bytes(), false)?;
    out.extend_from_slice(key_id);
    out.extend_from_slice(iv);
    Ok(out)
}

/// Reads the header of a sealed seed file's bytes.
pub fn parse_header(data: &[u8]) -> Result<SealedHeader, HsmError> {
    fn take<'a>(data: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], HsmError> {
        let s = data.get(*at..*at + n).ok_or(HsmError::Format)?;
        *at += n;
        Ok(s)
    }
    fn field<'a>(data: &'a [u8], at: &mut usize, wide: bool) -> Result<&'a [u8], HsmError> {
        let n = if wide {
            let b = take(data, at, 2)?;
            u16::from_le_bytes([b[0], b[1]]) as usize
        } else {
            take(data, at, 1)?[0] as usize
        };
        take(data, at, n)
    }
    fn text(b: &[u8]) -> Result<String, HsmError> {
        String::from_utf8(b.to_vec()).map_err(|_| HsmError::Format)
    }
    let mut at = 0;
    if take(data, &mut at, MAGIC.len())? != MAGIC {
        return Err(HsmError::Format);
    }
    let module = PathBuf::from(text(field(data, &mut at, true)?)?);
    let pin_file = PathBuf::from(text(field(data, &mut at, true)?)?);
    let token = text(field(data, &mut at, false)?)?;
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(take(data, &mut at, KEY_ID_LEN)?);
    let mut iv = [0u8; IV_LEN];
    iv.copy_from_slice(take(data, &mut at, IV_LEN)?);
    // At least a 16-byte seed and the tag must follow.
    if data.len() < at + 16 + TAG_LEN {
        return Err(HsmError::Format);
    }
    Ok(SealedHeader {
        module,
        pin_file,
        token,
        key_id,
        iv,
        len: at,
    })
}

/// A logged-in session on the token.
struct Token {
    session: Session,
    // Kept after the session: dropping it finalises the module.
    _ctx: Pkcs11,
}

fn read_pin(path: &Path) -> Result<AuthPin, HsmError> {
    let raw = Zeroizing::new(fs::read_to_string(path).map_err(|e| HsmError::PinFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?);
    let pin = raw.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(HsmError::PinFile {
            path: path.display().to_string(),
            reason: "the file is empty".into(),
        });
    }
    Ok(AuthPin::from(pin.to_string()))
}

fn login(s: &HsmSettings) -> Result<Token, HsmError> {
    let pin = read_pin(&s.pin_file)?;
    let module_err = |reason: String| HsmError::Module {
        module: s.module.display().to_string(),
        reason,
    };
    if !s.module.exists() {
        return Err(module_err("no such file".into()));
    }
    let ctx = Pkcs11::new(&s.module).map_err(|e| module_err(e.to_string()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| module_err(e.to_string()))?;
    let mut present = Vec::new();
    let mut found = None;
    for slot in ctx.get_slots_with_token().map_err(HsmError::ck)? {
        let info = ctx.get_token_info(slot).map_err(HsmError::ck)?;
        let label = info.label().trim_end().to_string();
        if label == s.token {
            // Each failed start of a service that restarts would spend a
            // try: never the last one.
            if info.user_pin_locked() {
                return Err(HsmError::PinLocked(s.token.clone()));
            }
            if info.user_pin_final_try() {
                return Err(HsmError::PinFinalTry(s.token.clone()));
            }
            found = Some(slot);
            break;
        }
        present.push(format!("{label:?}"));
    }
    let slot = found.ok_or_else(|| HsmError::NoToken {
        label: s.token.clone(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })?;
    let session = ctx.open_rw_session(slot).map_err(HsmError::ck)?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            return Err(HsmError::WrongPin {
                token: s.token.clone(),
                pin_file: s.pin_file.display().to_string(),
            })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
            return Err(HsmError::PinLocked(s.token.clone()))
        }
        Err(e) => return Err(HsmError::ck(e)),
    }
    Ok(Token { session, _ctx: ctx })
}

fn find_key(t: &Token, id: &[u8], token: &str) -> Result<ObjectHandle, HsmError> {
    let found = t
        .session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(HsmError::ck)?;
    found.first().copied().ok_or_else(|| HsmError::KeyMissing {
        label: key_label(id),
        token: token.to_string(),
    })
}

fn gcm_decrypt(
    t: &Token,
    key: ObjectHandle,
    h: &SealedHeader,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let mut iv = h.iv;
    let params = GcmParams::new(&mut iv, &data[..h.len], Ulong::new((TAG_LEN * 8) as _))
        .map_err(HsmError::ck)?;
    match t
        .session
        .decrypt(&Mechanism::AesGcm(params), key, &data[h.len..])
    {
        Ok(pt) => Ok(Zeroizing::new(pt)),
        // What a failed GCM tag check returns: the standard's codes, or
        // CKR_GENERAL_ERROR from some modules (SoftHSM2 among them). The key
        // was found and the session is logged in, so these name the data.
        Err(CkError::Pkcs11(
            rv @ (RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError),
            _,
        )) => Err(HsmError::Altered(format!("{rv:?}"))),
        Err(e) => Err(HsmError::ck(e)),
    }
}

/// Seals `seed` into a new file at `path` (mode 0600) under a new AES key
/// generated in the token. Returns the header written. On failure nothing
/// is left: no file, and the new key is destroyed.
pub fn seal(path: &Path, seed: &[u8], s: &HsmSettings) -> Result<SealedHeader, HsmError> {
    if path.exists() {
        return Err(HsmError::Exists(path.display().to_string()));
    }
    let t = login(s)?;
    let mut key_id = [0u8; KEY_ID_LEN];
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut key_id).map_err(|e| HsmError::Pkcs11(e.to_string()))?;
    getrandom::fill(&mut iv).map_err(|e| HsmError::Pkcs11(e.to_string()))?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::new(32)),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Id(key_id.to_vec()),
        Attribute::Label(key_label(&key_id).into_bytes()),
    ];
    let key = t
        .session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(HsmError::ck)?;
    let written = (|| {
        let header = encode_header(s, &key_id, &iv)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, &header, Ulong::new((TAG_LEN * 8) as _))
            .map_err(HsmError::ck)?;
        let ct = t
            .session
            .encrypt(&Mechanism::AesGcm(params), key, seed)
            .map_err(HsmError::ck)?;
        // Some HSMs pick the IV themselves and write it back: the header
        // (authenticated as it is) would then not name it.
        if iv_param != iv {
            return Err(HsmError::Pkcs11(
                "this HSM chooses its own AES-GCM IV, which this sealing does not support".into(),
            ));
        }
        let mut out = header;
        out.extend_from_slice(&ct);
        // Read back through the HSM before anything is written.
        let h = parse_header(&out)?;
        let back = gcm_decrypt(&t, key, &h, &out)?;
        if back.as_slice() != seed {
            return Err(HsmError::Pkcs11(
                "the HSM did not decrypt what it encrypted".into(),
            ));
        }
        crate::tls::write_private(path, &out)?;
        Ok(h)
    })();
    if written.is_err() {
        let _ = t.session.destroy_object(key);
    }
    written
}

/// Opens a sealed seed file: reads its header and, through the HSM at
/// `s` (its token and key id from the file), decrypts the seed.
pub fn unseal(path: &Path, s: &HsmSettings) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let data = fs::read(path)?;
    let h = parse_header(&data)?;
    let t = login(s)?;
    let key = find_key(&t, &h.key_id, &s.token)?;
    gcm_decrypt(&t, key, &h, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HsmSettings {
        HsmSettings {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token: "lnpd".into(),
            pin_file: "/etc/lnpd/pin".into(),
        }
    }

    #[test]
    fn header_round_trip_and_truncation() {
        let mut data = encode_header(&settings(), &[3; 16], &[4; 12]).unwrap();
        let header_len = data.len();
        data.extend_from_slice(&[9; 16 + 16]);
        let h = parse_header(&data).unwrap();
        assert_eq!(h.module, settings().module);
        assert_eq!(h.pin_file, settings().pin_file);
        assert_eq!(h.token, "lnpd");
        assert_eq!(h.key_id, [3; 16]);
        assert_eq!(h.iv, [4; 12]);
        assert_eq!(h.len, header_len);
        assert!(h.key_label().starts_with("lnpd-seed-0303"));
        for cut in [0, 5, 12, header_len - 1, header_len + 31] {
            assert!(
                matches!(parse_header(&data[..cut]), Err(HsmError::Format)),
                "cut at {cut}"
            );
        }
        let mut other = data.clone();
        other[0] = b'X';
        assert!(matches!(parse_header(&other), Err(HsmError::Format)));
        // A passphrase-sealed file is not taken for an HSM one.
        assert!(matches!(
            parse_header(b"LNPDSEED1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            Err(HsmError::Format)
        ));
    }
}
