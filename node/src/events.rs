//! LDK's events, handled: funding, payments (and hold invoices), closes,
//! spendable outputs and fee bumps.

use crate::node::{Node, PaymentRecord};
use lightning::events::Event;
use lightning::sign::EntropySource;

impl Node {
    pub(crate) fn handle_event(&self, event: Event) -> Result<(), lightning::events::ReplayEvent> {
        use lightning::events::InboundChannelFunds;
        match event {
            Event::OpenChannelRequest {
                temporary_channel_id,
                counterparty_node_id,
                channel_negotiation_type,
                funding_satoshis,
                ..
            } => {
                let push_msat = match channel_negotiation_type {
                    // A push is the peer's gift: the signer learns it from
                    // the first commitment of ours the peer signs, never
                    // from us, and the wallet never funds an inbound channel.
                    InboundChannelFunds::PushMsat(p) => p,
                    InboundChannelFunds::DualFunded => {
                        tracing::warn!(%counterparty_node_id, "refusing a dual-funded channel: not supported");
                        let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                            &temporary_channel_id,
                            &counterparty_node_id,
                            "dual funding is not supported".into(),
                        );
                        return Ok(());
                    }
                };
                let user_id = u128::from_be_bytes(
                    self.keys.get_secure_random_bytes()[..16]
                        .try_into()
                        .unwrap_or([0; 16]),
                );
                match self.channel_manager.accept_inbound_channel(
                    &temporary_channel_id,
                    &counterparty_node_id,
                    user_id,
                    None,
                ) {
                    Ok(()) => {
                        tracing::info!(%counterparty_node_id, funding_satoshis, push_msat, "accepted an inbound channel")
                    }
                    Err(e) => {
                        tracing::warn!("cannot accept channel from {counterparty_node_id}: {e:?}")
                    }
                }
            }
            Event::FundingGenerationReady {
                temporary_channel_id,
                counterparty_node_id,
                channel_value_satoshis,
                output_script,
                user_channel_id,
                ..
            } => {
                let fail = |why: String| {
                    tracing::error!("cannot fund channel {temporary_channel_id}: {why}");
                    let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                        &temporary_channel_id,
                        &counterparty_node_id,
                        "funding failed".into(),
                    );
                };
                let fee_rate = self.funding_fee_rate(user_channel_id);
                let change = match self.change_script() {
                    Ok(c) => c,
                    Err(e) => {
                        fail(format!("no change script from the signer: {e}"));
                        return Ok(());
                    }
                };
                let built = self.wallet.build_funding(
                    user_channel_id,
                    output_script.clone(),
                    bitcoin::Amount::from_sat(channel_value_satoshis),
                    fee_rate,
                    change,
                );
                let psbt = match built {
                    Ok(p) => p,
                    Err(e) => {
                        fail(e.to_string());
                        return Ok(());
                    }
                };
                let tx = &psbt.unsigned_tx;
                let Some(vout) = tx
                    .output
                    .iter()
                    .position(|o| o.script_pubkey == output_script)
                else {
                    self.wallet.release(&psbt, Some(user_channel_id));
                    fail("the funding output is missing from the built transaction".into());
                    return Ok(());
                };
                let outpoint = lightning::chain::transaction::OutPoint {
                    txid: tx.compute_txid(),
                    index: vout as u16,
                };
                // Segwit inputs only: the txid is final before any signature.
                match self
                    .channel_manager
                    .unsafe_manual_funding_transaction_generated(
                        temporary_channel_id,
                        counterparty_node_id,
                        outpoint,
                    ) {
                    Ok(()) => {
                        tracing::info!(channel = %temporary_channel_id, txid = %outpoint.txid, %fee_rate, "funding transaction built, its coins reserved; it is signed once the peer countersigned our first commitment");
                    }
                    Err(e) => {
                        self.wallet.release(&psbt, Some(user_channel_id));
                        tracing::error!("funding {temporary_channel_id}: {e:?}")
                    }
                }
            }
            Event::FundingTxBroadcastSafe {
                channel_id,
                user_channel_id,
                counterparty_node_id,
                ..
            } => {
                let Some(psbt) = self.wallet.funding_psbt(user_channel_id) else {
                    tracing::error!(%channel_id, "no funding transaction kept for this channel");
                    return Ok(());
                };
                match self.sign_and_broadcast_funding(psbt.clone(), user_channel_id) {
                    Ok(txid) => {
                        tracing::info!(%channel_id, %txid, "funding transaction signed and broadcast")
                    }
                    Err(e) if e.is_unavailable() => {
                        // Kept (coins and PSBT): LDK hands the event back later.
                        tracing::warn!(%channel_id, "funding transaction not signed yet, retrying: {e}");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        return Err(lightning::events::ReplayEvent());
                    }
                    Err(e) => {
                        // Never funded: the channel is given up (nothing of
                        // ours is on chain) and its coins are free again.
                        self.wallet.release(&psbt, Some(user_channel_id));
                        tracing::error!(%channel_id, "the signer refused the funding transaction; closing the unfunded channel, its coins are free again: {e}");
                        let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                            &channel_id,
                            &counterparty_node_id,
                            "funding refused by the signer".into(),
                        );
                    }
                }
            }
            Event::PaymentClaimable {
                payment_hash,
                purpose,
                amount_msat,
                ..
            } => match purpose.preimage() {
                Some(preimage)
                    if self.hold_state(&payment_hash.0) == crate::hold::HoldState::Held =>
                {
                    tracing::info!(payment_hash = %payment_hash, amount_msat, "payment held: settle or cancel it");
                    self.record_payment(
                        payment_hash.0,
                        "inbound",
                        "held",
                        amount_msat,
                        0,
                        Some(preimage.0),
                    );
                }
                Some(_)
                    if self.hold_state(&payment_hash.0) == crate::hold::HoldState::Cancelled =>
                {
                    tracing::info!(payment_hash = %payment_hash, "payment to a cancelled hold invoice: failed back");
                    self.record_payment(
                        payment_hash.0,
                        "inbound",
                        "cancelled",
                        amount_msat,
                        0,
                        None,
                    );
                    self.channel_manager.fail_htlc_backwards(&payment_hash);
                }
                Some(preimage) => {
                    self.record_payment(
                        payment_hash.0,
                        "inbound",
                        "pending",
                        amount_msat,
                        0,
                        Some(preimage.0),
                    );
                    self.channel_manager.claim_funds(preimage);
                }
                None => {
                    tracing::warn!(payment_hash = %payment_hash, "payment without a known preimage left unclaimed")
                }
            },
            Event::PaymentClaimed {
                payment_hash,
                amount_msat,
                ..
            } => {
                self.record_payment(payment_hash.0, "inbound", "succeeded", amount_msat, 0, None);
            }
            Event::PaymentSent {
                payment_hash,
                payment_preimage,
                amount_msat,
                fee_paid_msat,
                ..
            } => {
                self.record_payment(
                    payment_hash.0,
                    "outbound",
                    "succeeded",
                    amount_msat.unwrap_or(0),
                    fee_paid_msat.unwrap_or(0),
                    Some(payment_preimage.0),
                );
            }
            Event::PaymentFailed {
                payment_hash,
                reason,
                ..
            } => {
                if let Some(h) = payment_hash {
                    tracing::warn!(payment_hash = %h, "payment failed: {reason:?}");
                    self.record_payment(h.0, "outbound", "failed", 0, 0, None);
                    if let Ok(mut p) = self.payments.lock() {
                        if let Some(r) = p.get_mut(&h.0) {
                            r.reason = Some(match reason {
                                Some(r) => format!("{r:?}"),
                                None => "no reason given by the peer".into(),
                            });
                        }
                    }
                }
            }
            Event::SpendableOutputs {
                outputs,
                channel_id,
            } => {
                // One owner per coin: outputs paying a wallet script (a
                // cooperative close, our shutdown or destination script) are
                // the wallet's already; only outputs under channel keys go
                // to the sweeper, which moves them to the wallet.
                let (static_outputs, to_sweep): (Vec<_>, Vec<_>) = outputs.iter().partition(|d| {
                    matches!(
                        d,
                        lightning::sign::SpendableOutputDescriptor::StaticOutput { .. }
                    )
                });
                tracing::info!(
                    channel = ?channel_id,
                    to_sweeper = to_sweep.len(),
                    already_in_wallet = static_outputs.len(),
                    "outputs of a closed channel are ours: the sweeper claims those under channel keys"
                );
                if self
                    .sweeper
                    .track_spendable_outputs(outputs, channel_id, true, None)
                    .is_err()
                {
                    tracing::error!("the sweeper could not persist the outputs; retrying");
                    return Err(lightning::events::ReplayEvent());
                }
            }
            Event::BumpTransaction(bump) => {
                tracing::info!("fee bump requested: {}", bump_summary(&bump));
                self.fee_bump_wallet.remember(&bump);
                self.bumper.handle_event(&bump);
            }
            Event::ChannelClosed {
                channel_id,
                reason,
                counterparty_node_id,
                user_channel_id,
                ..
            } => {
                tracing::info!(%channel_id, peer = ?counterparty_node_id, "channel closed: {reason}");
                self.forget_funding_fee_rate(user_channel_id);
                // Coins reserved for a funding never broadcast are free again.
                if let Some(psbt) = self.wallet.funding_psbt(user_channel_id) {
                    self.wallet.release(&psbt, Some(user_channel_id));
                    tracing::info!(%channel_id, "the unbroadcast funding's coins are free again");
                }
            }
            Event::PaymentForwarded {
                prev_channel_id,
                next_channel_id,
                total_fee_earned_msat,
                outbound_amount_forwarded_msat,
                ..
            } => {
                tracing::info!(
                    from = ?prev_channel_id,
                    to = ?next_channel_id,
                    amount_msat = ?outbound_amount_forwarded_msat,
                    fee_msat = ?total_fee_earned_msat,
                    "forwarded a payment"
                );
            }
            other => tracing::debug!("event: {other:?}"),
        }
        Ok(())
    }

    fn record_payment(
        &self,
        hash: [u8; 32],
        direction: &'static str,
        status: &str,
        amount_msat: u64,
        fee_msat: u64,
        preimage: Option<[u8; 32]>,
    ) {
        if let Ok(mut p) = self.payments.lock() {
            // Counted once, when it ends.
            let before = p.get(&hash).map(|r| r.status.clone());
            if matches!(status, "succeeded" | "failed") && before.as_deref() != Some(status) {
                metrics::counter!(
                    "lnpd_node_payments_total",
                    "direction" => direction,
                    "outcome" => status.to_string()
                )
                .increment(1);
            }
            let e = p.entry(hash).or_insert(PaymentRecord {
                direction,
                status: status.into(),
                amount_msat,
                fee_msat,
                preimage: None,
                reason: None,
            });
            e.status = status.into();
            if amount_msat > 0 {
                e.amount_msat = amount_msat;
            }
            if fee_msat > 0 {
                e.fee_msat = fee_msat;
            }
            if preimage.is_some() {
                e.preimage = preimage;
            }
        }
    }
}

/// One line on a fee-bump event, for the log.
fn bump_summary(e: &lightning::events::bump_transaction::BumpTransactionEvent) -> String {
    use lightning::events::bump_transaction::BumpTransactionEvent as B;
    match e {
        B::ChannelClose {
            channel_id,
            commitment_tx,
            package_target_feerate_sat_per_1000_weight,
            ..
        } => format!(
            "channel {channel_id}: commitment {} to confirm at {package_target_feerate_sat_per_1000_weight} sat/kw",
            commitment_tx.compute_txid()
        ),
        B::HTLCResolution {
            channel_id,
            htlc_descriptors,
            target_feerate_sat_per_1000_weight,
            ..
        } => format!(
            "channel {channel_id}: {} HTLC claim(s) at {target_feerate_sat_per_1000_weight} sat/kw",
            htlc_descriptors.len()
        ),
    }
}
