//! `reseal`: the seed sealed another way (passphrase <-> HSM), never shown.

use std::path::PathBuf;

use crate::cli::{Common, SealArgs, SealKind};
use crate::common::open_parts;
use crate::init::seal_target;
use anyhow::{Context, Result};
use lnpd_signer::config::set_seal;
use lnpd_signer::seed_file;
use lnpd_signer::seed_seal::{self, SealTarget, Sealing};
use std::io::Write as _;

/// One line from standard input after `prompt` on standard error.
fn read_line(prompt: &str) -> std::io::Result<zeroize::Zeroizing<String>> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line)?;
    Ok(zeroize::Zeroizing::new(
        line.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

pub(crate) fn reseal(
    common: Common,
    to: SealKind,
    sealing: SealArgs,
    new_passphrase_file: Option<PathBuf>,
) -> Result<()> {
    let parts = open_parts(&common)?;
    let target = seal_target(to, &sealing, || {
        if let Some(f) = &new_passphrase_file {
            return seed_file::read_passphrase(Some(f));
        }
        // Never LNPD_SIGNER_PASSPHRASE: that is the current one.
        if let Ok(p) = std::env::var("LNPD_SIGNER_NEW_PASSPHRASE") {
            std::env::remove_var("LNPD_SIGNER_NEW_PASSPHRASE");
            return Ok(zeroize::Zeroizing::new(p));
        }
        // Asked twice: a typo would leave only the mnemonic to recover from.
        let first = read_line("New passphrase: ")?;
        let again = read_line("New passphrase again: ")?;
        if *first != *again {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the two new passphrases differ",
            ));
        }
        Ok(first)
    })?;
    let path = parts.dir.seed();
    // An HSM's place is recorded before the seed is: until the rename, the
    // old sealing stays what opens the seed.
    if let SealTarget::Hsm(h) = &target {
        set_seal(&parts.dir.config(), Some((&h.module, &h.pin_file)))?;
    }
    let now = seed_seal::reseal(&path, &parts.seed, &target)
        .with_context(|| format!("resealing {} (left as it was)", path.display()))?;
    if matches!(target, SealTarget::Passphrase { .. }) {
        set_seal(&parts.dir.config(), None)?;
    }
    println!("seed:        {} ({})", path.display(), now.describe());
    println!("was:         {}", parts.sealing.describe());
    if let Sealing::Hsm(old) = &parts.sealing {
        println!(
            "old key:     {} on token {:?} no longer seals this seed; delete it from the token once `lnpd-signer run` starts with the new sealing",
            old.key_label(),
            old.token
        );
    }
    Ok(())
}
