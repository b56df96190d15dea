//! `lnpd-signer copy-state`: this machine's state (redb) into etcd, once.

use anyhow::{anyhow, bail, Context, Result};
use lnpd_signer_core::store::Store;

use crate::cli::Common;

/// Copies state.redb into the etcd prefix `run --store` will use, checks
/// the copy, and renames state.redb so it is not run again by mistake.
pub(crate) fn copy_state(common: Common, store: Option<String>) -> Result<()> {
    let parts = crate::common::open_parts(&common)?;
    let settings = parts.etcd_settings(store.as_deref())?;
    let dir = &parts.dir;
    let path = dir.state();
    if !path.exists() {
        bail!("no state at {}: nothing to copy", path.display());
    }
    let source = lnpd_signer::store_redb::RedbStore::open(&path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| {
            format!(
                "opening {} (stop lnpd-signer first: a running daemon holds it)",
                path.display()
            )
        })?
        .load()
        .map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
    // An older copy of the state must not become the replicated one.
    let witness = lnpd_signer::witness::Witness::open(&dir.witness())?;
    if witness.recorded() > source.counter {
        bail!(
            "state-rollback-detected: {} is at state #{} but this machine acknowledged state #{} \
             ({}): restore the latest state.redb before copying it",
            path.display(),
            source.counter,
            witness.recorded(),
            dir.witness().display()
        );
    }
    let copied = lnpd_signer::migrate::copy_into_etcd(&settings, &source)?;
    let kept = path.with_extension("redb.copied-to-etcd");
    std::fs::rename(&path, &kept)
        .with_context(|| format!("renaming {} to {}", path.display(), kept.display()))?;
    println!(
        "copied {} channel record(s) and state #{} into etcd under {:?} ({}); checked by reading it back",
        copied.channels.len(),
        copied.counter,
        settings.prefix,
        settings.endpoints.join(",")
    );
    println!(
        "{} is now {} (a backup; do not run on it again). Start the replicas with: lnpd-signer run --store etcd://{}/{}",
        path.display(),
        kept.display(),
        settings.endpoints.join(","),
        settings.prefix
    );
    Ok(())
}
