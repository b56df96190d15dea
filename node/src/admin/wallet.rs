//! The admin calls of the on-chain wallet: balance, withdraw, history, fee
//! bump, and the fee rate of a spend (`--fee-rate` or `--conf-target`).

use std::collections::HashSet;
use std::str::FromStr;

use bitcoin::{Amount, FeeRate, Psbt, Transaction, Txid};
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use lnpd_proto::node as pb;
use tonic::Status;

use super::AdminService;
use crate::node::Node;
use crate::wallet::{SpendAmount, WalletError};

/// Fee rates above this are refused as a typo (sat/vB).
const MAX_FEE_RATE_SAT_PER_VB: u64 = 10_000;

fn wallet_status(e: WalletError) -> Status {
    match e {
        WalletError::Insufficient { .. } | WalletError::Invalid(_) => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

impl AdminService {
    /// The fee rate a spend asks for: `sat_per_vb`, or the backend's
    /// estimate for `conf_target` blocks, or the node's estimate for
    /// `default` (the configured fallback when the backend has none).
    pub(super) async fn fee_rate(
        &self,
        sat_per_vb: Option<u64>,
        conf_target: Option<u32>,
        default: ConfirmationTarget,
    ) -> Result<FeeRate, Status> {
        let chain = &self.node.chain;
        match (sat_per_vb, conf_target) {
            (Some(_), Some(_)) => Err(Status::invalid_argument(
                "give a fee rate or a confirmation target, not both",
            )),
            (Some(r), None) => {
                if r == 0 || r > MAX_FEE_RATE_SAT_PER_VB {
                    return Err(Status::invalid_argument(format!(
                        "fee rate {r} sat/vB: give 1 to {MAX_FEE_RATE_SAT_PER_VB}"
                    )));
                }
                FeeRate::from_sat_per_vb(r)
                    .ok_or_else(|| Status::invalid_argument("fee rate out of range"))
            }
            (None, Some(t)) => {
                if t == 0 || t > 1008 {
                    return Err(Status::invalid_argument(format!(
                        "confirmation target {t}: give 1 to 1008 blocks"
                    )));
                }
                let max = chain.max_fee_target().await.unwrap_or(1008);
                let capped = u16::try_from(t).unwrap_or(1008).min(max);
                let per_kw = match chain.estimate_fee(capped).await {
                    Ok(Some(f)) => f,
                    _ => {
                        let f = chain.get_est_sat_per_1000_weight(default);
                        tracing::warn!(
                            target = t,
                            sat_per_kw = f,
                            "the chain backend has no fee estimate; using the node's"
                        );
                        f
                    }
                };
                Ok(FeeRate::from_sat_per_kwu(u64::from(per_kw)))
            }
            (None, None) => Ok(FeeRate::from_sat_per_kwu(u64::from(
                chain.get_est_sat_per_1000_weight(default),
            ))),
        }
    }

    /// Builds a wallet spend with `build` (its coins locked), has the
    /// signer sign it, has `record` tell the wallet, and broadcasts it. A
    /// spend not signed releases its coins. A signed one is recorded
    /// whatever the backend answers (an error may hide an accepted
    /// transaction; the wallet sends it again while the mempool lacks it),
    /// so its coins are never offered to a second spend. Runs on a task of
    /// its own: a client that hangs up does not cut it short.
    async fn sign_and_send(
        &self,
        what: &'static str,
        build: impl FnOnce(&Node) -> Result<Psbt, Status> + Send + 'static,
        record: impl FnOnce(&Node, &Transaction) + Send + 'static,
    ) -> Result<Txid, Status> {
        let node = self.node.clone();
        let task = tokio::spawn(async move {
            let signer_side = node.clone();
            let tx = tokio::task::spawn_blocking(move || {
                let node = signer_side;
                let psbt = build(&node)?;
                node.sign_wallet_psbt(&psbt).map_err(|e| {
                    node.wallet.release(&psbt, None);
                    Status::permission_denied(format!("the signer did not sign the {what}: {e}"))
                })
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
            record(&node, &tx);
            let txid = tx.compute_txid();
            node.chain.send_raw_transaction(&tx).await.map_err(|e| {
                Status::unavailable(format!(
                    "the backend did not confirm the broadcast of {txid} ({e}); the wallet keeps \
                     the transaction and sends it again while its mempool lacks it"
                ))
            })
        });
        task.await.map_err(|e| Status::internal(e.to_string()))?
    }

    pub(super) fn wallet_balance(&self) -> pb::BalanceReply {
        let b = self.node.wallet.balance();
        let channels = self
            .node
            .channel_manager
            .list_channels()
            .into_iter()
            .map(|c| pb::ChannelBalance {
                channel_id: c.channel_id.to_string(),
                outbound_msat: c.outbound_capacity_msat,
                inbound_msat: c.inbound_capacity_msat,
            })
            .collect();
        pb::BalanceReply {
            onchain_confirmed_sat: b.confirmed_sat,
            onchain_unconfirmed_sat: b.unconfirmed_sat,
            channels,
            onchain_immature_sat: b.immature_sat,
            onchain_reserved_sat: b.reserved_sat,
        }
    }

    pub(super) async fn wallet_withdraw(
        &self,
        r: pb::WithdrawRequest,
    ) -> Result<pb::WithdrawReply, Status> {
        let network = self.node.settings.network;
        let address = bitcoin::Address::from_str(&r.address)
            .ok()
            .and_then(|a| a.require_network(network).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{:?} is not a {} address",
                    r.address,
                    network.to_core_arg()
                ))
            })?;
        let amount = match (r.all, r.amount_sat) {
            (true, 0) => SpendAmount::All,
            (true, _) => {
                return Err(Status::invalid_argument(
                    "give an amount or --all, not both",
                ))
            }
            (false, 0) => return Err(Status::invalid_argument("give an amount, or --all")),
            (false, a) => SpendAmount::Exact(Amount::from_sat(a)),
        };
        let fee_rate = self
            .fee_rate(
                r.feerate_sat_per_vb.map(u64::from),
                r.conf_target,
                ConfirmationTarget::OutputSpendingFee,
            )
            .await?;
        let script = address.script_pubkey();
        let txid = self
            .sign_and_send(
                "withdrawal",
                move |node| {
                    let change = match amount {
                        SpendAmount::Exact(_) => node.change_script().map_err(|e| {
                            Status::unavailable(format!("no change script from the signer: {e}"))
                        })?,
                        // No change: every coin goes to the recipient.
                        SpendAmount::All => script.clone(),
                    };
                    node.wallet
                        .build_spend(script, amount, fee_rate, change)
                        .map_err(wallet_status)
                },
                |node, tx| node.wallet.note_broadcast(&[tx], None),
            )
            .await?;
        tracing::info!(%txid, %fee_rate, "withdrawal broadcast");
        Ok(pb::WithdrawReply {
            txid: txid.to_string(),
        })
    }

    pub(super) fn wallet_transactions(&self) -> pb::TransactionsReply {
        let transactions = self
            .node
            .wallet
            .transactions()
            .into_iter()
            .map(|t| pb::WalletTransaction {
                txid: t.txid.to_string(),
                confirmations: t.confirmations,
                height: t.height.unwrap_or(0),
                received_sat: t.received_sat,
                sent_sat: t.sent_sat,
                fee_sat: t.fee_sat,
            })
            .collect();
        pb::TransactionsReply { transactions }
    }

    pub(super) async fn wallet_bump_fee(
        &self,
        r: pb::BumpFeeRequest,
    ) -> Result<pb::BumpFeeReply, Status> {
        let txid = Txid::from_str(r.txid.trim())
            .map_err(|_| Status::invalid_argument(format!("{:?} is not a txid", r.txid)))?;
        let fee_rate = self
            .fee_rate(
                Some(r.fee_rate_sat_per_vb),
                None,
                ConfirmationTarget::OutputSpendingFee,
            )
            .await?;
        let funding: HashSet<Txid> = self
            .node
            .channel_manager
            .list_channels()
            .iter()
            .filter_map(|c| c.funding_txo.map(|o| o.txid))
            .collect();
        // Every channel's funding this node ever watched, closed ones too.
        let is_funding = funding.contains(&txid) || self.node.chain_watch.is_funding(&txid);
        let new_txid = self
            .sign_and_send(
                "replacement",
                move |node| {
                    let change = node.change_script().map_err(|e| {
                        Status::unavailable(format!("no change script from the signer: {e}"))
                    })?;
                    node.wallet
                        .bump_fee(txid, fee_rate, is_funding, change)
                        .map_err(wallet_status)
                },
                move |node, tx| node.wallet.note_replacement(tx, txid),
            )
            .await?;
        tracing::info!(replaced = %txid, txid = %new_txid, %fee_rate, "fee bumped");
        Ok(pb::BumpFeeReply {
            txid: new_txid.to_string(),
        })
    }
}
