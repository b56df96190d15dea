//! `log`: the audit log of refusals and approvals.

use crate::common::expand;
use anyhow::{Context, Result};
use lnpd_signer::DataDir;

pub(crate) fn show_log(data_dir: &str, json: bool, last: Option<usize>) -> Result<()> {
    let dir = DataDir(expand(data_dir));
    let entries = lnpd_signer::audit::read(&dir.audit_log())
        .with_context(|| format!("reading {}", dir.audit_log().display()))?;
    let skip = last.map_or(0, |n| entries.len().saturating_sub(n));
    for entry in entries.into_iter().skip(skip) {
        match entry {
            Ok(e) if json => println!("{}", serde_json::to_string(&e)?),
            Ok(e) => println!(
                "{}  {}  {:<32} {:<34} {}  {}",
                lnpd_signer::audit::rfc3339::format(e.time),
                e.event,
                e.rule,
                e.operation,
                e.channel
                    .as_deref()
                    .map(|c| &c[..c.len().min(16)])
                    .unwrap_or("-"),
                e.reason
            ),
            Err(why) => eprintln!("warning: unreadable audit entry ({why})"),
        }
    }
    Ok(())
}
