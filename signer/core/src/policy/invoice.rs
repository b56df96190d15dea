//! Rules on an invoice the node shows before paying it (`ShowInvoice`):
//! the controls that would refuse its HTLC refuse it now, before the node
//! starts a payment that could only get stuck — the payee allow-list
//! (`payment-payee-allowlist`), expiry (`payment-invoiced`), the single
//! payment and velocity limits (`payment-max`, `payment-velocity`), an
//! invoice paid once (`invoice-paid-once`) and whether the operator must
//! approve it (`payment-approval`).

use alloc::format;

use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::ledger::{check_own_payment, check_velocity, recent_payments_sat};
use crate::policy::RuleId;

/// An invoice as the signer decoded it.
pub struct Shown<'a> {
    /// Its payment hash.
    pub payment_hash: &'a [u8],
    /// The amount paid (msat): the invoice's, or the node's for an
    /// amount-less invoice.
    pub amount_msat: u64,
    /// Whether the invoice names no amount (the amount is the node's word).
    pub amountless: bool,
    /// The payee's node id (33 bytes).
    pub payee: &'a [u8; 33],
    /// Unix time it expires.
    pub expires_at: u64,
}

/// What showing the invoice leads to.
pub struct ShownVerdict {
    /// What was paid for it before (msat), kept across showings.
    pub earlier_paid_msat: u64,
    /// Whether the operator must approve the payment first.
    pub needs_approval: bool,
}

/// The validator of `ShowInvoice`.
pub fn validate_shown_invoice(s: &Shown, facts: &Facts) -> Result<ShownVerdict, SignerError> {
    let policy = facts.policy;
    let allowed = policy.allowed_payees.contains(s.payee);
    policy.check(
        RuleId::PaymentPayeeAllowlist,
        !policy.payee_allowlist || allowed,
        || format!("payee {} is not on the allow-list", hex(s.payee)),
    )?;
    policy.check(
        RuleId::PaymentInvoiced,
        !policy.payment_invoiced || facts.now <= s.expires_at,
        || {
            format!(
                "the invoice expired at {} (now {})",
                s.expires_at, facts.now
            )
        },
    )?;
    let sat = s.amount_msat / 1000;
    check_own_payment(policy, sat)?;
    check_velocity(
        policy,
        recent_payments_sat(policy, facts.meta, facts.now).saturating_add(sat),
    )?;
    let earlier_paid_msat = facts
        .shown_invoice(s.payment_hash)
        .map_or(0, |e| e.paid_msat);
    // An amount-less invoice's amount is the node's word: once part of it
    // is paid, the node cannot raise it by showing it again.
    let settled = earlier_paid_msat >= s.amount_msat || (s.amountless && earlier_paid_msat > 0);
    policy.check(
        RuleId::InvoicePaidOnce,
        !policy.payment_invoiced || !settled,
        || format!("the invoice was already paid ({earlier_paid_msat} msat)"),
    )?;
    // In warn mode the check logs and lets the payment go unapproved.
    let most_sat = policy.with_fee_allowance(s.amount_msat) / 1000;
    let needs_approval = match policy.approval_above_sat {
        Some(t) if most_sat > t => policy
            .check(RuleId::PaymentApproval, false, || {
                format!("payment of up to {most_sat} sat above the {t} sat approval threshold")
            })
            .is_err(),
        _ => false,
    };
    Ok(ShownVerdict {
        earlier_paid_msat,
        needs_approval,
    })
}

fn hex(b: &[u8]) -> alloc::string::String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
