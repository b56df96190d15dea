//! `lnpd-cli`: talks to a running `lnpd` over its admin API.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use lnpd_proto::node::{self as pb, node_client::NodeClient};
use lnpd_telemetry::progress::Progress;
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
        /// Wait until the channel is usable (its funding transaction
        /// confirmed and both sides ready), showing the confirmations;
        /// prints the channel's final id.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the
        /// channel goes on opening).
        #[arg(long, default_value_t = 7200)]
        timeout: u64,
        #[command(flatten)]
        fee: FeeArgs,
    },
    /// Wait until the node has caught up with its chain backend's best
    /// block, showing the heights.
    Waitsync {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
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
    ///
    /// On-chain: spendable (confirmed, mature, free), unconfirmed (change
    /// of our spends and receives not yet in a block), immature (coinbase
    /// under 100 confirmations), reserved (held for a channel funding or a
    /// spend being signed).
    Balance,
    /// Send on-chain funds (the signer only signs for its wallet, channels and allow-listed addresses).
    ///
    /// Coins are chosen by branch and bound (no change when an exact match
    /// exists), change goes back to the wallet only above dust, and the
    /// transaction signals replace-by-fee (see `bumpfee`).
    Withdraw {
        /// Destination address.
        address: String,
        /// Amount in satoshis (omit with --all).
        amount_sat: Option<u64>,
        /// Send every confirmed, free coin, less the fee (no change).
        #[arg(long, conflicts_with = "amount_sat")]
        all: bool,
        #[command(flatten)]
        fee: FeeArgs,
    },
    /// The on-chain wallet's transactions, newest first, with confirmations.
    Transactions,
    /// Replace a stuck (unconfirmed) wallet transaction with one paying a
    /// higher fee rate (BIP 125); prints the replacement's txid.
    ///
    /// The signer signs the replacement like any spend (its policy checks
    /// the fee). A channel's funding transaction cannot be replaced (the
    /// channel is bound to its txid).
    Bumpfee {
        /// The transaction to replace.
        txid: String,
        /// The new fee rate in sat/vB: at least the old one plus 1.
        #[arg(long)]
        fee_rate: u64,
    },
}

/// How a spend's fee rate is chosen (default: the node's estimate).
#[derive(clap::Args)]
struct FeeArgs {
    /// Fee rate in sat/vB.
    #[arg(long, alias = "feerate", conflicts_with = "conf_target")]
    fee_rate: Option<u64>,
    /// Aim for confirmation within this many blocks (the chain backend's
    /// estimate; the node's default when it has none).
    #[arg(long)]
    conf_target: Option<u32>,
}

/// Every channel, as `channels` lists them.
async fn list_channels<S>(client: &mut NodeClient<S>) -> Result<Vec<pb::Channel>>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    Ok(client
        .channels(pb::ChannelsRequest {})
        .await
        .map_err(explain)?
        .into_inner()
        .channels)
}

/// The first characters of a node id, for a progress line.
fn short(id: &str) -> &str {
    &id[..id.len().min(16)]
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
            wait,
            timeout,
            fee,
        } => {
            let r = client
                .open_channel(pb::OpenChannelRequest {
                    node_id: node_id.clone(),
                    amount_sat,
                    push_msat: 0,
                    announce,
                    fee_rate_sat_per_vb: fee.fee_rate,
                    conf_target: fee.conf_target,
                })
                .await
                .map_err(explain)?
                .into_inner();
            if !wait {
                println!("{}", r.channel_id);
                return Ok(());
            }
            let mut progress = Progress::new(
                &format!("opening {amount_sat} sat to {}", short(&node_id)),
                cli.json,
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            let mut seen = false;
            loop {
                // Followed by the node's own id of it: the channel id
                // changes once the funding transaction exists.
                let chan = list_channels(&mut client)
                    .await?
                    .into_iter()
                    .find(|c| c.user_channel_id == r.user_channel_id);
                match &chan {
                    Some(c) if c.is_usable => {
                        progress.finish();
                        println!("{}", c.channel_id);
                        return Ok(());
                    }
                    Some(c) if c.funding_txo.is_empty() => {
                        progress.update("negotiating with the peer")
                    }
                    Some(c) if c.confirmations < c.confirmations_required.max(1) => progress
                        .update(&format!(
                            "funding {} confirmed {}/{}",
                            c.funding_txo, c.confirmations, c.confirmations_required
                        )),
                    Some(_) => progress.update("confirmed; waiting for the peer's channel_ready"),
                    None if seen => {
                        progress.finish();
                        bail!(
                            "channel {} closed before it was usable (see the node's log)",
                            r.channel_id
                        );
                    }
                    None => progress.update("waiting for the peer"),
                }
                seen |= chan.is_some();
                if std::time::Instant::now() > deadline {
                    progress.finish();
                    bail!(
                        "channel {} not usable within {timeout} s (it goes on opening)",
                        chan.map_or(r.channel_id, |c| c.channel_id)
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Cmd::Waitsync { timeout } => {
            let mut progress = Progress::new("syncing with the chain", cli.json);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let i = client
                    .get_info(pb::GetInfoRequest {})
                    .await
                    .map_err(explain)?
                    .into_inner();
                if i.chain_tip_height > 0 && i.block_height >= i.chain_tip_height {
                    progress.finish();
                    if cli.json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "block_height": i.block_height,
                                "signer_block_height": i.signer_block_height,
                            })
                        );
                    } else {
                        println!("synced at block {}", i.block_height);
                    }
                    return Ok(());
                }
                progress.update(&format!(
                    "block {} of {} (signer checked {})",
                    i.block_height, i.chain_tip_height, i.signer_block_height
                ));
                if std::time::Instant::now() > deadline {
                    progress.finish();
                    bail!(
                        "not synced within {timeout} s: block {} of {}",
                        i.block_height,
                        i.chain_tip_height
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
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
            // The payment's hash, to follow it while `pay` waits.
            let hash = invoice
                .trim()
                .parse::<lightning_invoice::Bolt11Invoice>()
                .ok()
                .map(|i| i.payment_hash().to_string());
            let mut progress = Progress::new("paying", cli.json);
            let mut follower = client.clone();
            let paying = client.pay(pb::PayRequest {
                invoice,
                amount_msat,
                timeout_secs: timeout,
            });
            tokio::pin!(paying);
            let r = loop {
                tokio::select! {
                    r = &mut paying => break r.map_err(explain)?.into_inner(),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)), if progress.enabled() => {
                        let listed = follower.payments(pb::PaymentsRequest {}).await.ok();
                        let p = listed.and_then(|l| {
                            l.into_inner()
                                .payments
                                .into_iter()
                                .find(|p| Some(&p.payment_hash) == hash.as_ref())
                        });
                        match p {
                            Some(p) if p.status == "awaiting_approval" => progress.update(&p.reason),
                            Some(p) => progress.update(&format!("{} msat, {}", p.amount_msat, p.status)),
                            None => progress.update("asking the signer"),
                        }
                    }
                }
            };
            progress.finish();
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
                let line = serde_json::json!({
                    "onchain_spendable_sat": b.onchain_confirmed_sat,
                    "onchain_unconfirmed_sat": b.onchain_unconfirmed_sat,
                    "onchain_immature_sat": b.onchain_immature_sat,
                    "onchain_reserved_sat": b.onchain_reserved_sat,
                    "channels": b.channels.len(),
                });
                println!("{line}");
            } else {
                println!(
                    "on-chain spendable:   {} sat\non-chain unconfirmed: {} sat\non-chain immature:    {} sat\non-chain reserved:    {} sat",
                    b.onchain_confirmed_sat,
                    b.onchain_unconfirmed_sat,
                    b.onchain_immature_sat,
                    b.onchain_reserved_sat
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
            fee,
        } => {
            if amount_sat.is_none() && !all {
                bail!("give an amount in satoshis, or --all");
            }
            let feerate_sat_per_vb = fee
                .fee_rate
                .map(|f| u32::try_from(f).map_err(|_| anyhow!("fee rate {f} sat/vB is too high")))
                .transpose()?;
            let r = client
                .withdraw(pb::WithdrawRequest {
                    address,
                    amount_sat: amount_sat.unwrap_or(0),
                    all,
                    feerate_sat_per_vb,
                    conf_target: fee.conf_target,
                })
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", r.txid);
        }
        Cmd::Transactions => {
            let list = client
                .transactions(pb::TransactionsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .transactions;
            for t in list {
                if cli.json {
                    let line = serde_json::json!({
                        "txid": t.txid,
                        "confirmations": t.confirmations,
                        "height": t.height,
                        "received_sat": t.received_sat,
                        "sent_sat": t.sent_sat,
                        "fee_sat": t.fee_sat,
                    });
                    println!("{line}");
                } else {
                    let net = i128::from(t.received_sat) - i128::from(t.sent_sat);
                    let fee = t.fee_sat.map_or("-".to_string(), |f| format!("{f} sat"));
                    println!(
                        "{} {:>14} sat  fee {:>10}  {}",
                        t.txid,
                        format!("{net:+}"),
                        fee,
                        if t.confirmations == 0 {
                            "unconfirmed".to_string()
                        } else {
                            format!("{} confirmations (block {})", t.confirmations, t.height)
                        }
                    );
                }
            }
        }
        Cmd::Bumpfee { txid, fee_rate } => {
            let r = client
                .bump_fee(pb::BumpFeeRequest {
                    txid,
                    fee_rate_sat_per_vb: fee_rate,
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
                        "confirmations": c.confirmations,
                        "confirmations_required": c.confirmations_required,
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
