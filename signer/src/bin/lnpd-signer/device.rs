//! A hardware signer: pairing, and its allow-list (confirmed on the device).

use crate::cli::AllowlistAction;
use crate::common::expand;
use anyhow::{bail, Context, Result};
use lnpd_signer::DataDir;

pub(crate) fn pair(data_dir: &str, device: &str, yes: bool) -> Result<()> {
    use lnpd_signer::device_bridge::{self, DeviceSpec, HostKey};
    let dir = DataDir(expand(data_dir));
    std::fs::create_dir_all(dir.path())
        .with_context(|| format!("creating {}", dir.path().display()))?;
    let spec: DeviceSpec = device.parse()?;
    let host = HostKey::load_or_create(&dir.host_key())?;
    let paired = device_bridge::pair(&spec, &host, &dir.paired_device(), |code| {
        if yes {
            return true;
        }
        eprint!("Did the device show {code}? [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok() && line.trim().eq_ignore_ascii_case("y")
    })?;
    println!("paired with device {}", paired.device_key);
    println!("saved:       {}", dir.paired_device().display());
    Ok(())
}

/// `allowlist add --device`: the entry goes to the device, whose user confirms it.
pub(crate) fn allowlist_on_device(
    data_dir: &str,
    device: &str,
    action: AllowlistAction,
) -> Result<()> {
    use lnpd_signer::device_bridge::{self, DeviceSpec, HostKey, Paired};
    let AllowlistAction::Add { entry } = action else {
        bail!("a hardware signer keeps its allow-list itself: only `add` (confirmed on the device) is supported with --device");
    };
    let dir = DataDir(expand(data_dir));
    let spec: DeviceSpec = device.parse()?;
    let host = HostKey::load_or_create(&dir.host_key())?;
    let paired = Paired::load(&dir.paired_device())?;
    println!("confirm {entry} on the device");
    device_bridge::allowlist_add(&spec, &host, &paired, &entry)?;
    println!("added {entry} on the device");
    Ok(())
}
