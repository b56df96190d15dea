//! `allowlist`: the operator's allowed destinations and payees.

use crate::cli::AllowlistAction;
use crate::common::{config_of, expand};
use anyhow::{bail, Result};
use lnpd_signer::DataDir;

pub(crate) fn allowlist(data_dir: &str, action: AllowlistAction) -> Result<()> {
    use lnpd_signer::allowlist::{parse_entry, Allowlist, Entry};
    let dir = DataDir(expand(data_dir));
    let (_, network) = config_of(&dir)?;
    let path = dir.allowlist();
    let mut list = Allowlist::load(&path)?;
    match action {
        AllowlistAction::List => {
            for a in &list.addresses {
                println!("address  {a}");
            }
            for p in &list.payees {
                println!("payee    {p}");
            }
            return Ok(());
        }
        AllowlistAction::Add { entry } => {
            let added = match parse_entry(&entry, network)? {
                Entry::Address(a) => list.addresses.insert(a),
                Entry::Payee(p) => list.payees.insert(p),
            };
            println!(
                "{} {entry}",
                if added { "added" } else { "already allowed:" }
            );
        }
        AllowlistAction::Remove { entry } => {
            let removed = match parse_entry(&entry, network)? {
                Entry::Address(a) => list.addresses.remove(&a),
                Entry::Payee(p) => list.payees.remove(&p),
            };
            if !removed {
                bail!("{entry} is not in the allow-list");
            }
            println!("removed {entry}");
        }
    }
    list.save(&path)?;
    Ok(())
}
