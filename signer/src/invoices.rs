//! Invoices the node shows before paying them (`payment-invoiced`,
//! `payment-payee-allowlist`): the signer checks the payee at once and keeps
//! payment hash, amount, expiry and payee, durably, for when the outgoing
//! HTLC appears in a commitment.

use alloc::format;
use core::str::FromStr;

use bitcoin::hashes::Hash;
use lightning_invoice::Bolt11Invoice;
use lnpd_proto::signer as pb;

use crate::error::SignerError;
use crate::handler::Signer;
use crate::policy::RuleId;
use crate::state::ShownInvoice;
use crate::store::Store;

/// How long a shown invoice is kept after it expires (an HTLC for it may
/// still be settling).
const KEEP_AFTER_EXPIRY_SECS: u64 = 86_400;
/// Most invoices kept at once (the oldest go first).
const MAX_SHOWN: usize = 1_000;
/// Longest invoice accepted (BOLT 11 has no limit; bech32 data this long
/// is already far beyond any real invoice).
const MAX_INVOICE_LEN: usize = 7_089;

/// What the payment controls know of the invoice behind an HTLC.
pub struct KnownInvoice {
    /// Amount asked (msat).
    pub amount_msat: u64,
    /// Unix time it expires.
    pub expires_at: u64,
    /// Whether its payee is on the operator's allow-list.
    pub payee_allowed: bool,
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
        let payee = invoice.get_payee_pub_key();
        let allowed = self.policy.allowed_payees.contains(&payee.serialize());
        self.policy.check(
            RuleId::PaymentPayeeAllowlist,
            !self.policy.payee_allowlist || allowed,
            || format!("payee {payee} is not on the allow-list"),
        )?;
        let expires_at = invoice
            .duration_since_epoch()
            .as_secs()
            .saturating_add(invoice.expiry_time().as_secs());
        self.policy.check(
            RuleId::PaymentInvoiced,
            !self.policy.payment_invoiced || self.now <= expires_at,
            || format!("the invoice expired at {expires_at} (now {})", self.now),
        )?;
        // The controls that would refuse the HTLC refuse the invoice now,
        // before the node starts a payment that could only get stuck.
        let sat = amount_msat / 1000;
        crate::policy::payments::check_own_payment(&self.policy, sat)?;
        crate::policy::payments::check_velocity(
            &self.policy,
            self.recent_payments_sat().saturating_add(sat),
        )?;
        let hash = invoice.payment_hash().to_byte_array().to_vec();
        let mut meta = self.meta.clone();
        let now = self.now;
        meta.shown_invoices.retain(|s| {
            s.expires_at.saturating_add(KEEP_AFTER_EXPIRY_SECS) > now && s.payment_hash != hash
        });
        if meta.shown_invoices.len() >= MAX_SHOWN {
            meta.shown_invoices.remove(0);
        }
        meta.shown_invoices.push(ShownInvoice {
            payment_hash: hash.clone(),
            amount_msat,
            expires_at,
            payee: payee.serialize().to_vec(),
        });
        self.commit_meta(meta)?;
        Ok(pb::ShowInvoiceReply {
            payment_hash: hash,
            amount_msat,
            expires_at,
        })
    }

    /// The invoice shown for `hash`, if any.
    pub(crate) fn shown_invoice(&self, hash: &[u8]) -> Option<KnownInvoice> {
        self.meta
            .shown_invoices
            .iter()
            .find(|s| s.payment_hash == hash)
            .map(|s| KnownInvoice {
                amount_msat: s.amount_msat,
                expires_at: s.expires_at,
                payee_allowed: <[u8; 33]>::try_from(s.payee.as_slice())
                    .is_ok_and(|p| self.policy.allowed_payees.contains(&p)),
            })
    }
}
