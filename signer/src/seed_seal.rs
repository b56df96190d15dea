//! How the seed is sealed at rest — under a passphrase ([`crate::seed_file`])
//! or by an HSM over PKCS#11 ([`crate::seed_hsm`]) — told apart by the
//! file's first bytes; opening it into locked memory; and moving it from one
//! sealing to the other without showing it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::seed_file::{self, SeedFileError};
use crate::seed_hsm::{self, HsmError, HsmSettings, SealedHeader};
use lnpd_signer_core::Seed;

/// Why the seed could not be opened or sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The passphrase sealing failed (wrong passphrase, altered file...).
    #[error(transparent)]
    Passphrase(#[from] SeedFileError),
    /// The HSM sealing failed (wrong PIN, missing token or key...).
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The kernel refused to lock the seed's memory.
    #[error("locking the seed's memory (mlock) failed: {0}; raise the memory-lock limit (`ulimit -l`, or LimitMEMLOCK= in the systemd unit)")]
    Lock(String),
    /// The file is neither sealing.
    #[error("{0} is not an lnpd seed file (unknown header)")]
    Unknown(String),
    /// Disk error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The passphrase could not be read.
    #[error("reading the passphrase: {0}")]
    PassphraseInput(io::Error),
    /// An empty passphrase.
    #[error("an empty passphrase is not allowed: the seed is encrypted under it")]
    EmptyPassphrase,
    /// The decrypted seed is not 16 to 64 bytes.
    #[error("the sealed seed has a wrong length")]
    Length,
    /// An HSM-sealed seed without its HSM's place in signer.toml.
    #[error("{0}")]
    NotConfigured(String),
    /// Reading the new sealing back gave another seed.
    #[error("the new sealing did not give back the same seed; nothing was replaced")]
    Mismatch,
}

/// Largest seed (BIP 32 allows 64 bytes) plus an AEAD tag: what a buffer
/// must hold to decrypt in place.
const BUFFER: usize = seed_file::MAX_CIPHERTEXT;

/// The seed, in memory the kernel may not swap out (`mlock`), erased when
/// dropped. Derefs to the core's [`Seed`].
pub struct UnsealedSeed {
    seed: Seed,
    // Unlocks the pages when dropped (after the seed erased itself).
    _lock: PageLock,
}

/// Pages locked for seeds, each with how many seeds lie on it: `munlock`
/// does not nest, so a page is unlocked only when no seed on it is left
/// (two seeds open at once, as in `reseal`, may share a page).
static LOCKED: std::sync::Mutex<std::collections::BTreeMap<usize, (usize, region::LockGuard)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The pages of one buffer, locked (counted in [`LOCKED`]).
struct PageLock {
    pages: Vec<usize>,
}

impl PageLock {
    fn new(ptr: *const u8, len: usize) -> Result<Self, SealError> {
        let size = region::page::size();
        let first = (ptr as usize) / size * size;
        let last = (ptr as usize + len.max(1) - 1) / size * size;
        let mut locked = LOCKED
            .lock()
            .map_err(|_| SealError::Lock("lock registry poisoned".into()))?;
        let mut me = PageLock { pages: Vec::new() };
        let mut page = first;
        while page <= last {
            match locked.get_mut(&page) {
                Some((n, _)) => *n += 1,
                None => {
                    // On error, `me` (dropped with the registry's lock
                    // released below) releases the pages taken so far.
                    let guard = match region::lock(page as *const u8, size) {
                        Ok(g) => g,
                        Err(e) => {
                            drop(locked);
                            return Err(SealError::Lock(e.to_string()));
                        }
                    };
                    locked.insert(page, (1, guard));
                }
            }
            me.pages.push(page);
            page += size;
        }
        Ok(me)
    }
}

impl Drop for PageLock {
    fn drop(&mut self) {
        if let Ok(mut locked) = LOCKED.lock() {
            for page in &self.pages {
                let last = match locked.get_mut(page) {
                    Some((n, _)) => {
                        *n -= 1;
                        *n == 0
                    }
                    None => false,
                };
                if last {
                    locked.remove(page);
                }
            }
        }
    }
}

impl std::fmt::Debug for UnsealedSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsealedSeed(<redacted>)")
    }
}

impl std::ops::Deref for UnsealedSeed {
    type Target = Seed;
    fn deref(&self) -> &Seed {
        &self.seed
    }
}

impl UnsealedSeed {
    /// Fills a locked buffer with `fill` and makes it the seed. The buffer
    /// never grows (a larger result is refused), so no copy is left outside
    /// the locked pages.
    fn build(fill: impl FnOnce(&mut Vec<u8>) -> Result<(), SealError>) -> Result<Self, SealError> {
        let mut buf: Vec<u8> = Vec::with_capacity(BUFFER);
        let lock = PageLock::new(buf.as_ptr(), BUFFER)?;
        let filled = fill(&mut buf);
        if let Err(e) = filled {
            buf.zeroize();
            return Err(e);
        }
        if !(16..=64).contains(&buf.len()) || buf.capacity() != BUFFER {
            buf.zeroize();
            return Err(SealError::Length);
        }
        let seed = Seed::new(buf).map_err(|_| SealError::Length)?;
        Ok(UnsealedSeed { seed, _lock: lock })
    }

    /// A seed given in clear (a new or restored one), moved into locked memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        Self::build(|buf| {
            if bytes.len() > BUFFER {
                return Err(SealError::Length);
            }
            buf.extend_from_slice(bytes);
            Ok(())
        })
    }
}

/// How a seed file is sealed.
#[derive(Clone, Debug)]
pub enum Sealing {
    /// Under a passphrase (Argon2id + XChaCha20-Poly1305).
    Passphrase,
    /// By an HSM's key (PKCS#11, AES-256-GCM).
    Hsm(SealedHeader),
}

impl Sealing {
    /// One line for the operator.
    pub fn describe(&self) -> String {
        match self {
            Sealing::Passphrase => "encrypted under a passphrase".into(),
            Sealing::Hsm(h) => format!(
                "sealed by HSM key {} on token {:?} (PKCS#11 module {})",
                h.key_label(),
                h.token,
                h.module.display()
            ),
        }
    }
}

/// Tells how the seed file at `path` is sealed, from its header.
pub fn sealing_of(path: &Path) -> Result<Sealing, SealError> {
    let data = fs::read(path)?;
    if data.starts_with(b"LNPDSEED1") {
        Ok(Sealing::Passphrase)
    } else if data.starts_with(seed_hsm::MAGIC) {
        Ok(Sealing::Hsm(seed_hsm::parse_header(&data)?))
    } else {
        Err(SealError::Unknown(path.display().to_string()))
    }
}

/// Where the HSM is on this machine: signer.toml `[seal]` (written by
/// `init --seal pkcs11` and `reseal --to pkcs11`). Only these paths are
/// used: the module and PIN file named in seed.enc's header are not
/// trusted before the HSM has authenticated the file (loading a module a
/// tampered header names would run its code).
#[derive(Clone, Debug, Default)]
pub struct HsmConfig {
    /// The PKCS#11 module.
    pub module: Option<PathBuf>,
    /// The PIN file.
    pub pin_file: Option<PathBuf>,
}

impl HsmConfig {
    /// The settings for a sealed header: the configured paths and the
    /// header's token (authenticated by the decryption).
    pub fn settings(&self, h: &SealedHeader) -> Result<HsmSettings, SealError> {
        match (&self.module, &self.pin_file) {
            (Some(module), Some(pin_file)) => Ok(HsmSettings {
                module: module.clone(),
                token: h.token.clone(),
                pin_file: pin_file.clone(),
            }),
            _ => Err(SealError::NotConfigured(format!(
                "the seed is sealed by an HSM: signer.toml needs [seal] pkcs11_module and pin_file \
                 (at sealing they were {} and {})",
                h.module.display(),
                h.pin_file.display()
            ))),
        }
    }
}

/// Opens the seed file at `path`, whichever its sealing: `passphrase` is
/// asked only for a passphrase-sealed file; an HSM-sealed one needs only
/// its token's PIN file.
pub fn unseal(
    path: &Path,
    passphrase: impl FnOnce() -> io::Result<Zeroizing<String>>,
    hsm: &HsmConfig,
) -> Result<(UnsealedSeed, Sealing), SealError> {
    let sealing = sealing_of(path)?;
    let seed = match &sealing {
        Sealing::Passphrase => {
            let pass = passphrase().map_err(SealError::PassphraseInput)?;
            UnsealedSeed::build(|buf| Ok(seed_file::read_into(path, pass.as_bytes(), buf)?))?
        }
        Sealing::Hsm(h) => {
            let settings = hsm.settings(h)?;
            // The PKCS#11 interface hands the plaintext back in a buffer of
            // its own: copied at once into the locked one, then erased.
            let plain = seed_hsm::unseal(path, &settings)?;
            UnsealedSeed::from_bytes(&plain)?
        }
    };
    Ok((seed, sealing))
}

/// How to seal a seed.
pub enum SealTarget {
    /// Under a passphrase, Argon2id with this memory cost (KiB).
    Passphrase {
        /// The passphrase.
        passphrase: Zeroizing<String>,
        /// Argon2id memory cost.
        m_cost_kib: u32,
    },
    /// By a new key in an HSM.
    Hsm(HsmSettings),
}

/// Seals `seed` into a new file at `path` (refused if it exists).
pub fn seal_new(path: &Path, seed: &Seed, target: &SealTarget) -> Result<Sealing, SealError> {
    match target {
        SealTarget::Passphrase {
            passphrase,
            m_cost_kib,
        } => {
            if passphrase.is_empty() {
                return Err(SealError::EmptyPassphrase);
            }
            seed_file::write(
                path,
                seed,
                passphrase.as_bytes(),
                *m_cost_kib,
                seed_file::DEFAULT_T_COST,
            )?;
            Ok(Sealing::Passphrase)
        }
        SealTarget::Hsm(s) => Ok(Sealing::Hsm(seed_hsm::seal(path, seed.expose(), s)?)),
    }
}

/// Replaces the sealing of the seed file at `path` by `target`, for the
/// `seed` already opened from it. The new file is written beside it, opened
/// again and compared with `seed`, then renamed over the old one (atomic):
/// a failure at any step leaves the old file as it was.
pub fn reseal(path: &Path, seed: &UnsealedSeed, target: &SealTarget) -> Result<Sealing, SealError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    // Left by an interrupted reseal: never the live seed.
    if tmp.exists() {
        fs::remove_file(&tmp)?;
    }
    let done = (|| {
        let sealing = seal_new(&tmp, seed, target)?;
        let back = match (target, &sealing) {
            (SealTarget::Passphrase { passphrase, .. }, _) => UnsealedSeed::build(|buf| {
                Ok(seed_file::read_into(&tmp, passphrase.as_bytes(), buf)?)
            })?,
            (SealTarget::Hsm(s), _) => UnsealedSeed::from_bytes(&seed_hsm::unseal(&tmp, s)?)?,
        };
        if back.expose() != seed.expose() {
            return Err(SealError::Mismatch);
        }
        fs::rename(&tmp, path)?;
        // Replaced now, whatever follows: a failed directory sync is
        // reported, not taken for a failed reseal.
        if let Some(parent) = path.parent() {
            if let Err(e) = fs::File::open(parent).and_then(|d| d.sync_all()) {
                tracing::warn!(
                    "{} replaced, but syncing its directory failed: {e}",
                    path.display()
                );
            }
        }
        Ok(sealing)
    })();
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_seed_opens_into_locked_memory_and_reseals() {
        let dir = std::env::temp_dir().join(format!("lnpd-seal-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seed.enc");
        let seed = Seed::new(vec![5u8; 64]).unwrap();
        let first = SealTarget::Passphrase {
            passphrase: Zeroizing::new("one".into()),
            m_cost_kib: 1024,
        };
        seal_new(&path, &seed, &first).unwrap();
        assert!(matches!(sealing_of(&path).unwrap(), Sealing::Passphrase));
        let asked = std::cell::Cell::new(0);
        let pass = |p: &'static str| {
            asked.set(asked.get() + 1);
            Ok(Zeroizing::new(p.to_string()))
        };
        let (open, _) = unseal(&path, || pass("one"), &HsmConfig::default()).unwrap();
        assert_eq!(open.expose(), seed.expose());
        assert!(locked_kib() >= 4, "the seed's page is locked while open");
        assert_eq!(asked.get(), 1);
        // Wrong passphrase: refused, file unchanged.
        let before = fs::read(&path).unwrap();
        assert!(matches!(
            unseal(&path, || pass("two"), &HsmConfig::default()),
            Err(SealError::Passphrase(SeedFileError::Decrypt))
        ));
        // Reseal under another passphrase: the old one no longer opens it.
        let second = SealTarget::Passphrase {
            passphrase: Zeroizing::new("two".into()),
            m_cost_kib: 1024,
        };
        reseal(&path, &open, &second).unwrap();
        assert_ne!(fs::read(&path).unwrap(), before);
        assert!(unseal(&path, || pass("one"), &HsmConfig::default()).is_err());
        let (again, _) = unseal(&path, || pass("two"), &HsmConfig::default()).unwrap();
        assert_eq!(again.expose(), seed.expose());
        assert!(!dir.join("seed.enc.new").exists());
        // An empty passphrase is refused and leaves the file as it was.
        let now = fs::read(&path).unwrap();
        let empty = SealTarget::Passphrase {
            passphrase: Zeroizing::new(String::new()),
            m_cost_kib: 1024,
        };
        assert!(matches!(
            reseal(&path, &again, &empty),
            Err(SealError::EmptyPassphrase)
        ));
        assert_eq!(fs::read(&path).unwrap(), now);
        assert!(!dir.join("seed.enc.new").exists());
        // Neither header: named as such.
        fs::write(dir.join("other"), b"hello world, not a seed file at all").unwrap();
        assert!(matches!(
            sealing_of(&dir.join("other")),
            Err(SealError::Unknown(_))
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    /// VmLck of this process (KiB).
    fn locked_kib() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn pages_shared_by_two_seeds_stay_locked_until_both_are_gone() {
        let a = UnsealedSeed::from_bytes(&[1; 64]).unwrap();
        let b = UnsealedSeed::from_bytes(&[2; 64]).unwrap();
        let pages_of = |s: &UnsealedSeed| s._lock.pages.clone();
        let pa = pages_of(&a);
        assert!(!pa.is_empty() && !pages_of(&b).is_empty());
        drop(b);
        let locked = LOCKED.lock().unwrap();
        for p in &pa {
            assert!(locked.contains_key(p), "a's page {p:x} still locked");
        }
        drop(locked);
        drop(a);
    }

    #[test]
    fn a_seed_of_a_wrong_length_is_refused() {
        assert!(matches!(
            UnsealedSeed::from_bytes(&[1; 8]),
            Err(SealError::Length)
        ));
        assert!(matches!(
            UnsealedSeed::from_bytes(&[1; 100]),
            Err(SealError::Length)
        ));
        assert!(UnsealedSeed::from_bytes(&[1; 32]).is_ok());
    }
}
