//! A SoftHSM2 token store in a temporary directory, for the HSM-sealed seed
//! tests: the real PKCS#11 module Debian ships (`softhsm2`, installed by
//! scripts/test when missing), configured through `SOFTHSM2_CONF`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::TempDir;

/// SoftHSM2's PKCS#11 module: `LNPD_PKCS11_MODULE`, else where Debian puts it.
pub fn softhsm_module() -> PathBuf {
    if let Some(p) = std::env::var_os("LNPD_PKCS11_MODULE") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "SoftHSM2 is missing: install Debian's softhsm2 (scripts/test does), or set LNPD_PKCS11_MODULE"
    )
}

/// A SoftHSM2 configuration and token directory of its own.
pub struct SoftHsm {
    /// Holds `softhsm2.conf` and `tokens/`.
    pub dir: TempDir,
}

impl SoftHsm {
    /// An empty token store.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = TempDir::new(tag);
        let tokens = dir.path.join("tokens");
        std::fs::create_dir_all(&tokens)?;
        std::fs::write(
            dir.path.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )?;
        Ok(SoftHsm { dir })
    }

    /// The configuration file.
    pub fn conf(&self) -> PathBuf {
        self.dir.path.join("softhsm2.conf")
    }

    /// The environment a process needs to see these tokens.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![("SOFTHSM2_CONF".into(), self.conf().into_os_string())]
    }

    /// Initialises a new token `label` with user PIN `pin`.
    pub fn init_token(&self, label: &str, pin: &str) -> Result<()> {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", pin, "--so-pin", "so-pin-not-used"])
            .env("SOFTHSM2_CONF", self.conf())
            .output()
            .context("running softhsm2-util (install Debian's softhsm2)")?;
        if !out.status.success() {
            bail!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Writes `pin` to a file of its own and returns its path.
    pub fn pin_file(&self, name: &str, pin: &str) -> Result<PathBuf> {
        let p = self.dir.path.join(name);
        std::fs::write(&p, format!("{pin}\n"))?;
        Ok(p)
    }
}
