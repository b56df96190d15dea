//! `lnpd-cli`: talks to a running `lnpd` over its admin API.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use lnpd_proto::node::{self as pb, node_client::NodeClient};
use tonic::transport::Channel;

/// Control a running lnpd node. The admin address and token are read from
/// the node's data directory unless given.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The node's data directory (for admin.addr and admin.token).
    #[arg(long, env = "LNPD_DIR", default_value = "~/.lnpd")]
    data_dir: String,
    /// Admin API address (default: from <data-dir>/admin.addr).
    #[arg(long)]
    rpc: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Node id, chain height, peers, channels, signer connection.
    Getinfo,
    /// Connect to a peer: NODE_ID@HOST:PORT.
    Connect {
        /// NODE_ID@HOST:PORT
        peer: String,
    },
    /// Connected peers.
    Peers,
    /// Channels and their balances.
    Channels,
    /// A new on-chain receive address of the node's wallet.
    Newaddress,
    /// Open a channel to a connected peer, funded from the on-chain wallet.
    Openchannel {
        /// The peer's node id.
        node_id: String,
        /// Channel size in satoshis.
        amount_sat: u64,
        /// Announce the channel for forwarding.
        #[arg(long)]
        announce: bool,
    },
    /// Close a channel cooperatively (or unilaterally with --force).
    Closechannel {
        /// The channel id.
        channel_id: String,
        /// Broadcast our latest commitment instead of negotiating.
        #[arg(long)]
        force: bool,
    },
    /// Create a BOLT 11 invoice.
    Invoice {
        /// Amount in millisatoshis (omit for any amount).
        amount_msat: Option<u64>,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Expiry in seconds.
        #[arg(long, default_value_t = 3600)]
        expiry: u32,
        /// Hold the payment when it arrives (status "held") until
        /// `settleinvoice` or `cancelinvoice`; unanswered, it is failed
        /// back before its HTLCs expire.
        #[arg(long)]
        hold: bool,
    },
    /// Claim a held payment (see `invoice --hold`): at once if it has
    /// arrived, else when it does (the node keeps the preimage).
    Settleinvoice {
        /// The payment hash (hex).
        payment_hash: String,
    },
    /// Fail a held payment back to the payer, or refuse it before it comes.
    Cancelinvoice {
        /// The payment hash (hex).
        payment_hash: String,
    },
    /// Pay a BOLT 11 invoice and wait for the outcome.
    ///
    /// The signer sees the invoice first. Above its approval threshold the
    /// payment waits for its operator (`lnpd-signer approve <id>` on the
    /// signer's machine; the node's log names the id) before it starts.
    Pay {
        /// The invoice.
        invoice: String,
        /// Amount in millisatoshis, for invoices without one.
        #[arg(long)]
        amount_msat: Option<u64>,
        /// Seconds to wait for the payment once started.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Payments sent and received.
    Payments,
    /// On-chain and channel balances.
    Balance,
    /// Send on-chain funds (the signer only signs for its wallet, channels and allow-listed addresses).
    Withdraw {
        /// Destination address.
        address: String,
        /// Amount in satoshis (omit with --all).
        amount_sat: Option<u64>,
        /// Send everything.
        #[arg(long)]
        all: bool,
        /// Feerate in sat/vB (default: the node's estimate).
        #[arg(long)]
        feerate: Option<u32>,
    },
}

fn explain(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow!(
            "the node did not answer ({}); is lnpd running?",
            s.message()
        ),
        tonic::Code::Unauthenticated => anyhow!("{}", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}

async fn run(cli: Cli) -> Result<()> {
    let dir = lnpd_node::config::expand_home(&cli.data_dir);
    let addr = match cli.rpc {
        Some(a) => a,
        None => std::fs::read_to_string(dir.join("admin.addr")).with_context(|| {
            format!(
                "no admin address in {} (is lnpd running? or pass --rpc)",
                dir.display()
            )
        })?,
    };
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .with_context(|| format!("reading {}", dir.join("admin.token").display()))?;
    let channel = Channel::from_shared(format!("http://{}", addr.trim()))?
        .connect()
        .await
        .with_context(|| format!("cannot reach lnpd at {addr}; is it running?"))?;
    let auth = format!("Bearer {}", token.trim()).parse::<tonic::metadata::MetadataValue<_>>()?;
    let mut client = NodeClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    });
    match cli.command {
        Cmd::Getinfo => {
            let i = client
                .get_info(pb::GetInfoRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                println!(
                    "{{\"node_id\":\"{}\",\"alias\":\"{}\",\"network\":\"{}\",\"block_height\":{},\"block_hash\":\"{}\",\"num_peers\":{},\"num_channels\":{},\"signer\":\"{}\",\"signer_connected\":{},\"signer_block_height\":{},\"signer_state_counter\":{},\"signer_rollback\":{:?}}}",
                    i.node_id, i.alias, i.network, i.block_height, i.block_hash, i.num_peers, i.num_channels, i.signer_endpoint, i.signer_connected, i.signer_block_height, i.signer_state_counter, i.signer_rollback
                );
            } else {
                println!("node id:   {}\nalias:     {}\nnetwork:   {}\nblock:     {} ({})\npeers:     {}\nchannels:  {}\nsigner:    {} ({}, chain checked to block {})",
                    i.node_id, i.alias, i.network, i.block_height, i.block_hash, i.num_peers, i.num_channels, i.signer_endpoint,
                    if i.signer_connected { "connected" } else { "not connected" }, i.signer_block_height);
                if !i.signer_rollback.is_empty() {
                    println!(
                        "SIGNER REFUSES TO SIGN (state-rollback-detected): {}",
                        i.signer_rollback
                    );
                }
            }
        }
        Cmd::Connect { peer } => {
            let Some((id, address)) = peer.split_once('@') else {
                bail!("expected NODE_ID@HOST:PORT, got {peer:?}")
            };
            client
                .connect_peer(pb::ConnectPeerRequest {
                    node_id: id.to_string(),
                    address: address.to_string(),
                })
                .await
                .map_err(explain)?;
            println!("connected to {id}");
        }
        Cmd::Peers => {
            let peers = client
                .peers(pb::PeersRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .peers;
            for p in peers {
                if cli.json {
                    println!(
                        "{{\"node_id\":\"{}\",\"address\":\"{}\"}}",
                        p.node_id, p.address
                    );
                } else {
                    println!("{}  {}", p.node_id, p.address);
                }
            }
        }
        Cmd::Openchannel {
            node_id,
            amount_sat,
            announce,
        } => {
            let r = client
                .open_channel(pb::OpenChannelRequest {
                    node_id,
                    amount_sat,
                    push_msat: 0,
                    announce,
                })
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", r.channel_id);
        }
        Cmd::Closechannel { channel_id, force } => {
            client
                .close_channel(pb::CloseChannelRequest {
                    channel_id: channel_id.clone(),
                    force,
                })
                .await
                .map_err(explain)?;
            println!("closing {channel_id}");
        }
        Cmd::Invoice {
            amount_msat,
            description,
            expiry,
            hold,
        } => {
            let r = client
                .invoice(pb::InvoiceRequest {
                    amount_msat,
                    description,
                    expiry_secs: expiry,
                    hold,
                })
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", r.invoice);
        }
        Cmd::Settleinvoice { payment_hash } => {
            client
                .settle_invoice(pb::SettleInvoiceRequest { payment_hash })
                .await
                .map_err(explain)?;
            println!("settled");
        }
        Cmd::Cancelinvoice { payment_hash } => {
            client
                .cancel_invoice(pb::CancelInvoiceRequest { payment_hash })
                .await
                .map_err(explain)?;
            println!("cancelled");
        }
        Cmd::Pay {
            invoice,
            amount_msat,
            timeout,
        } => {
            let r = client
                .pay(pb::PayRequest {
                    invoice,
                    amount_msat,
                    timeout_secs: timeout,
                })
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "payment_hash": r.payment_hash,
                        "status": r.status,
                        "preimage": r.preimage,
                        "fee_msat": r.fee_msat,
                        "reason": r.reason,
                    })
                );
            } else {
                println!("{} {} (fee {} msat)", r.payment_hash, r.status, r.fee_msat);
            }
            if r.status != "succeeded" {
                bail!("payment {}: {}", r.status, r.reason);
            }
        }
        Cmd::Payments => {
            for p in client
                .payments(pb::PaymentsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .payments
            {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "payment_hash": p.payment_hash,
                            "direction": p.direction,
                            "status": p.status,
                            "amount_msat": p.amount_msat,
                            "fee_msat": p.fee_msat,
                            "reason": p.reason,
                        })
                    );
                } else {
                    println!(
                        "{}  {:<8} {:<9} {} msat (fee {} msat){}",
                        p.payment_hash,
                        p.direction,
                        p.status,
                        p.amount_msat,
                        p.fee_msat,
                        if p.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", p.reason)
                        }
                    );
                }
            }
        }
        Cmd::Newaddress => {
            let a = client
                .new_address(pb::NewAddressRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", a.address);
        }
        Cmd::Balance => {
            let b = client
                .balance(pb::BalanceRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                println!(
                    "{{\"onchain_spendable_sat\":{},\"onchain_immature_sat\":{},\"channels\":{}}}",
                    b.onchain_confirmed_sat,
                    b.onchain_unconfirmed_sat,
                    b.channels.len()
                );
            } else {
                println!(
                    "on-chain spendable: {} sat\non-chain immature:  {} sat",
                    b.onchain_confirmed_sat, b.onchain_unconfirmed_sat
                );
                for c in b.channels {
                    println!(
                        "channel {}: out {} msat, in {} msat",
                        c.channel_id, c.outbound_msat, c.inbound_msat
                    );
                }
            }
        }
        Cmd::Withdraw {
            address,
            amount_sat,
            all,
            feerate,
        } => {
            if amount_sat.is_none() && !all {
                bail!("give an amount in satoshis, or --all");
            }
            let r = client
                .withdraw(pb::WithdrawRequest {
                    address,
                    amount_sat: amount_sat.unwrap_or(0),
                    all,
                    feerate_sat_per_vb: feerate,
                })
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", r.txid);
        }
        Cmd::Channels => {
            let chans = client
                .channels(pb::ChannelsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .channels;
            for c in chans {
                if cli.json {
                    let line = serde_json::json!({
                        "channel_id": c.channel_id,
                        "counterparty_node_id": c.counterparty_node_id,
                        "funding_txo": c.funding_txo,
                        "short_channel_id": c.short_channel_id,
                        "capacity_sat": c.capacity_sat,
                        "outbound_msat": c.outbound_msat,
                        "inbound_msat": c.inbound_msat,
                        "is_ready": c.is_ready,
                        "is_usable": c.is_usable,
                        "feerate_sat_per_kw": c.feerate_sat_per_kw,
                        "is_outbound": c.is_outbound,
                    });
                    println!("{line}");
                    continue;
                }
                println!(
                    "{}  peer {}  capacity {} sat  out {} msat  in {} msat  {} sat/kw  {}  {}",
                    c.channel_id,
                    c.counterparty_node_id,
                    c.capacity_sat,
                    c.outbound_msat,
                    c.inbound_msat,
                    c.feerate_sat_per_kw,
                    if c.is_outbound { "outbound" } else { "inbound" },
                    if c.is_usable { "usable" } else { "not usable" }
                );
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
