//! Invoices the node shows before paying them (`payment-invoiced`,
//! `payment-payee-allowlist`): the signer checks the payee at once and keeps
//! payment hash, amount, expiry and payee, durably, for when the outgoing
//! HTLC appears in a commitment.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::str::FromStr;

use bitcoin::hashes::Hash;
use lightning_invoice::Bolt11Invoice;
use lnpd_proto::signer as pb;

use crate::error::SignerError;
use crate::policy::invoice::{validate_shown_invoice, Shown, ShownVerdict};
use crate::policy::resources::invoice_to_forget;
use crate::signer::Signer;
use crate::state::{Approval, ShownInvoice};
use crate::store::Store;

/// How long a shown invoice is kept after it expires (an HTLC for it may
/// still be settling).
const KEEP_AFTER_EXPIRY_SECS: u64 = 86_400;
/// Longest invoice accepted (BOLT 11 has no limit; bech32 data this long
/// is already far beyond any real invoice).
const MAX_INVOICE_LEN: usize = 7_089;

/// A payment waiting for the operator (`payment-approval`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingApproval {
    /// What the operator approves it by: the payment hash's first 8 bytes, hex.
    pub id: String,
    /// Its payment hash.
    pub payment_hash: Vec<u8>,
    /// The amount (msat).
    pub amount_msat: u64,
    /// The payee's node id.
    pub payee: Vec<u8>,
    /// Unix time the node first showed it.
    pub shown_at: u64,
}

/// The approval id of a payment hash (its first 8 bytes in hex: what the
/// operator types; the signer itself always goes by the whole hash).
pub fn approval_id(hash: &[u8]) -> String {
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl<S: Store> Signer<S> {
    pub(crate) fn show_invoice(
        &mut self,
        r: &pb::ShowInvoiceRequest,
    ) -> Result<pb::ShowInvoiceReply, SignerError> {
        if r.bolt11.len() > MAX_INVOICE_LEN {
            return Err(SignerError::invalid("invoice too long"));
        }
        let invoice = Bolt11Invoice::from_str(r.bolt11.trim())
            .map_err(|e| SignerError::invalid(format!("not a valid BOLT 11 invoice: {e}")))?;
        if invoice.network() != self.keys.network() {
            return Err(SignerError::invalid(format!(
                "the invoice is for {}, the signer for {}",
                invoice.network(),
                self.keys.network()
            )));
        }
        let amount_msat = match (invoice.amount_milli_satoshis(), r.amount_msat) {
            (Some(a), _) => a,
            (None, a) if a > 0 => a,
            (None, _) => {
                return Err(SignerError::invalid(
                    "the invoice names no amount: say how much the node pays",
                ))
            }
        };
        let payee = invoice.get_payee_pub_key().serialize();
        let expires_at = invoice
            .duration_since_epoch()
            .as_secs()
            .saturating_add(invoice.expiry_time().as_secs());
        let hash = invoice.payment_hash().to_byte_array().to_vec();
        let ShownVerdict {
            earlier_paid_msat: earlier_paid,
            needs_approval,
        } = validate_shown_invoice(
            &Shown {
                payment_hash: &hash,
                amount_msat,
                amountless: invoice.amount_milli_satoshis().is_none(),
                payee: &payee,
                expires_at,
            },
            &self.facts(),
        )?;
        let now = self.now;
        let earlier = self
            .meta
            .shown_invoices
            .iter()
            .find(|s| s.payment_hash == hash)
            .cloned();
        // An approval covers the amount it was given for, not a larger one
        // the node names later for the same (amount-less) invoice.
        let approval = match &earlier {
            _ if !needs_approval => Approval::NotNeeded,
            Some(e) if e.approval == Approval::Approved as i32 && e.amount_msat >= amount_msat => {
                Approval::Approved
            }
            _ => Approval::Pending,
        };
        let shown_at = earlier
            .as_ref()
            .filter(|e| e.approval == approval as i32)
            .map_or(now, |e| e.shown_at);
        let mut meta = self.meta.clone();
        meta.shown_invoices.retain(|s| {
            s.expires_at.saturating_add(KEEP_AFTER_EXPIRY_SECS) > now && s.payment_hash != hash
        });
        if let Some(i) = invoice_to_forget(&meta.shown_invoices, &self.facts())? {
            meta.shown_invoices.remove(i);
        }
        meta.shown_invoices.push(ShownInvoice {
            payment_hash: hash.clone(),
            amount_msat,
            expires_at,
            payee: payee.to_vec(),
            approval: approval as i32,
            shown_at,
            paid_msat: earlier_paid,
        });
        self.commit_meta(meta)?;
        let awaiting_approval = approval == Approval::Pending;
        Ok(pb::ShowInvoiceReply {
            approval_id: if awaiting_approval {
                approval_id(&hash)
            } else {
                String::new()
            },
            payment_hash: hash,
            amount_msat,
            expires_at,
            awaiting_approval,
        })
    }

    /// Payments waiting for the operator's approval (`payment-approval`),
    /// oldest first.
    pub fn pending_approvals(&self) -> Vec<PendingApproval> {
        self.meta
            .shown_invoices
            .iter()
            .filter(|s| s.approval == Approval::Pending as i32)
            .map(|s| PendingApproval {
                id: approval_id(&s.payment_hash),
                payment_hash: s.payment_hash.clone(),
                amount_msat: s.amount_msat,
                payee: s.payee.clone(),
                shown_at: s.shown_at,
            })
            .collect()
    }

    /// The operator's answer to the pending payment `seen` (as shown to
    /// the operator): approved, its HTLCs may be signed; declined, it is
    /// forgotten (shown again, it waits anew). Refused if the invoice
    /// changed since (another amount or payee): the operator answered for
    /// something else. Only the operator's side (daemon command, device
    /// button) calls this, never a request from the node.
    pub fn decide_payment(
        &mut self,
        seen: &PendingApproval,
        approve: bool,
    ) -> Result<(), SignerError> {
        let current = self.pending_approvals().into_iter().find(|p| {
            p.payment_hash == seen.payment_hash
                && p.amount_msat == seen.amount_msat
                && p.payee == seen.payee
        });
        if current.is_none() {
            return Err(SignerError::precondition(format!(
                "payment {} no longer waits as the operator saw it (changed or answered)",
                seen.id
            )));
        }
        let mut meta = self.meta.clone();
        if approve {
            for s in meta.shown_invoices.iter_mut() {
                if s.payment_hash == seen.payment_hash {
                    s.approval = Approval::Approved as i32;
                }
            }
        } else {
            meta.shown_invoices
                .retain(|s| s.payment_hash != seen.payment_hash);
        }
        self.commit_meta(meta)
    }
}
