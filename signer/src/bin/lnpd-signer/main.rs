//! `lnpd-signer`: the policy-enforcing signer daemon of an lnpd node.

mod allowlist;
mod approvals;
mod cli;
mod common;
mod copy_state;
mod device;
mod info;
mod init;
mod log;
mod reseal;
mod run;

use crate::cli::{Cli, Command};
use anyhow::anyhow;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            common,
            network,
            listen,
            tls_hosts,
            for_device: true,
            ..
        } => init::init_for_device(&common.data_dir, &network, &listen, &tls_hosts),
        Command::Init {
            common,
            network,
            restore,
            listen,
            tls_hosts,
            seal,
            sealing,
            no_show_mnemonic,
            for_device: false,
        } => init::init(
            common,
            init::InitArgs {
                network,
                restore,
                listen,
                tls_hosts,
                seal,
                sealing,
                no_show_mnemonic,
            },
        ),
        Command::Reseal {
            common,
            to,
            sealing,
            new_passphrase_file,
        } => reseal::reseal(common, to, sealing, new_passphrase_file),
        Command::Run {
            common,
            listen,
            connect,
            metrics_listen,
            log,
            device,
            accept_older_state,
            store,
            busy_poll_us,
        } => {
            lnpd_proto::busy_poll::set_window(std::time::Duration::from_micros(busy_poll_us));
            let rt = tokio::runtime::Builder::new_multi_thread()
                // One worker: requests are served one at a time under the
                // signer's lock anyway, and a second worker only costs a
                // cross-thread wake-up on every request.
                .worker_threads(1)
                .enable_all()
                .build();
            match rt {
                Ok(rt) => {
                    let reach = run::Reach {
                        listen,
                        connect,
                        metrics: metrics_listen,
                    };
                    match device {
                        Some(d) => rt.block_on(run::run_device(common, reach, log, d)),
                        None => {
                            rt.block_on(run::run_any(common, reach, log, accept_older_state, store))
                        }
                    }
                }
                Err(e) => Err(anyhow!("cannot start the runtime: {e}")),
            }
        }
        Command::Pair {
            data_dir,
            device,
            yes,
        } => device::pair(&data_dir, &device, yes),
        Command::Allowlist {
            data_dir,
            device: Some(device),
            action,
        } => device::allowlist_on_device(&data_dir, &device, action),
        Command::Allowlist {
            data_dir,
            device: None,
            action,
        } => allowlist::allowlist(&data_dir, action),
        Command::Info { common, json } => info::info(common, json),
        Command::CopyState { common, store } => copy_state::copy_state(common, store),
        Command::Log {
            data_dir,
            json,
            last,
        } => log::show_log(&data_dir, json, last),
        Command::Pending { data_dir, json } => approvals::pending(&data_dir, json),
        Command::Approve { data_dir, id } => {
            approvals::answer(&data_dir, &id, lnpd_signer::approvals::Decision::Approved)
        }
        Command::Deny { data_dir, id } => {
            approvals::answer(&data_dir, &id, lnpd_signer::approvals::Decision::Denied)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        // A PIN the HSM refused: retrying would spend its tries.
        let pin = e.chain().any(|c| {
            c.downcast_ref::<lnpd_signer::seed_hsm::HsmError>()
                .is_some_and(|h| h.is_pin_refusal())
                || c.downcast_ref::<lnpd_signer::seed_seal::SealError>()
                    .is_some_and(|s| matches!(s, lnpd_signer::seed_seal::SealError::Hsm(h) if h.is_pin_refusal()))
        });
        std::process::exit(if pin {
            lnpd_signer::seed_hsm::EXIT_PIN
        } else {
            1
        });
    }
}
