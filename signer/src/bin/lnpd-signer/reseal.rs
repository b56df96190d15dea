//! `reseal`: the seed sealed another way (passphrase <-> HSM), never shown.

use std::path::PathBuf;

use crate::cli::{Common, SealArgs, SealKind};
use crate::common::open_parts;
use crate::init::seal_target;
use anyhow::{Context, Result};
use lnpd_signer::seed_file;
use lnpd_signer::seed_seal::{self, Sealing};

pub(crate) fn reseal(
    common: Common,
    to: SealKind,
    sealing: SealArgs,
    new_passphrase_file: Option<PathBuf>,
) -> Result<()> {
    let parts = open_parts(&common)?;
    let target = seal_target(to, &sealing, || {
        if new_passphrase_file.is_none() {
            if let Ok(p) = std::env::var("LNPD_SIGNER_NEW_PASSPHRASE") {
                std::env::remove_var("LNPD_SIGNER_NEW_PASSPHRASE");
                return Ok(zeroize::Zeroizing::new(p));
            }
            eprintln!("New passphrase:");
        }
        seed_file::read_passphrase(new_passphrase_file.as_deref())
    })?;
    let path = parts.dir.seed();
    let now = seed_seal::reseal(&path, &parts.seed, &target)
        .with_context(|| format!("resealing {} (left as it was)", path.display()))?;
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
