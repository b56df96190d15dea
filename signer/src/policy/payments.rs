//! Payment controls (`payment-max`, `payment-velocity`, `merchant-no-sends`,
//! `routing-balanced`), all off unless configured. They look at the HTLCs we
//! newly offer in a counterparty commitment: one matched by an HTLC the
//! peer of another channel offered us with the same payment hash is a
//! forward; any other is a payment of our own.

use alloc::format;
use alloc::vec::Vec;

use lnpd_proto::signer::{CommitmentData, Htlc, HtlcDirection};

use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};

/// What a commitment update sends out of the channel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Our own payments (sat each).
    pub own: Vec<u64>,
}

/// HTLCs we offer on a commitment the counterparty broadcasts.
pub fn offered_by_us(c: &CommitmentData) -> impl Iterator<Item = &Htlc> {
    c.htlcs
        .iter()
        .filter(|h| h.direction == HtlcDirection::Received as i32)
}

/// HTLCs the peer offers us, on a commitment it broadcasts.
pub fn offered_to_us(c: &CommitmentData) -> impl Iterator<Item = &Htlc> {
    c.htlcs
        .iter()
        .filter(|h| h.direction == HtlcDirection::Offered as i32)
}

/// Checks the HTLCs `next` adds over `previous` (counterparty commitments
/// of one channel). `incoming(hash)` gives the largest HTLC with that hash
/// other channels' peers offer us (msat). `recent_sat` is what we paid in
/// the velocity window so far. Returns our own new payments.
pub fn check_new_htlcs(
    policy: &PolicyConfig,
    previous: &CommitmentData,
    next: &CommitmentData,
    incoming: impl Fn(&[u8]) -> Option<u64>,
    invoice: impl Fn(&[u8]) -> Option<crate::invoices::KnownInvoice>,
    recent_sat: u64,
    now: u64,
) -> Result<Outgoing, SignerError> {
    // A multiset: a second HTLC just like one already there is new too.
    let mut before: Vec<_> = offered_by_us(previous)
        .map(|h| (&h.payment_hash, h.amount_msat, h.cltv_expiry))
        .collect();
    let mut out = Outgoing::default();
    for h in offered_by_us(next) {
        let key = (&h.payment_hash, h.amount_msat, h.cltv_expiry);
        if let Some(i) = before.iter().position(|b| *b == key) {
            before.swap_remove(i);
            continue;
        }
        let sat = h.amount_msat / 1000;
        match incoming(&h.payment_hash) {
            Some(in_msat) => {
                if policy.routing_balanced {
                    policy.check(RuleId::RoutingBalanced, in_msat >= h.amount_msat, || {
                        format!(
                            "forward of {} msat against an incoming HTLC of only {in_msat} msat",
                            h.amount_msat
                        )
                    })?;
                }
            }
            None => {
                check_own_payment(policy, sat)?;
                let shown = invoice(&h.payment_hash);
                if policy.payment_invoiced {
                    check_invoiced(policy, h, shown.as_ref(), now)?;
                }
                if let Some(t) = policy.approval_above_sat {
                    // Parts of one payment count together: splitting it
                    // into HTLCs under the threshold does not avoid approval.
                    let total_msat = offered_by_us(next)
                        .filter(|o| o.payment_hash == h.payment_hash)
                        .fold(0u64, |a, o| a.saturating_add(o.amount_msat));
                    let needed =
                        total_msat / 1000 > t || shown.as_ref().is_some_and(|s| s.needs_approval);
                    if needed {
                        check_approved(policy, total_msat, shown.as_ref(), t)?;
                    }
                }
                policy.check(
                    RuleId::PaymentPayeeAllowlist,
                    !policy.payee_allowlist || shown.as_ref().is_some_and(|s| s.payee_allowed),
                    || "payment to a payee not on the allow-list (or no invoice shown)".into(),
                )?;
                out.own.push(sat);
            }
        }
    }
    check_velocity(policy, recent_sat.saturating_add(out.own.iter().sum()))?;
    Ok(out)
}

/// `merchant-no-sends` and `payment-max` on one payment of our own (sat).
pub fn check_own_payment(policy: &PolicyConfig, sat: u64) -> Result<(), SignerError> {
    policy.check(RuleId::MerchantNoSends, !policy.merchant_no_sends, || {
        format!("receive-only: an outgoing payment of {sat} sat is not a forward")
    })?;
    if let Some(max) = policy.max_payment_sat {
        policy.check(RuleId::PaymentMax, sat <= max, || {
            format!("payment of {sat} sat above the {max} sat limit")
        })?;
    }
    Ok(())
}

/// `payment-velocity`: `total_sat` paid within the window, this included.
pub fn check_velocity(policy: &PolicyConfig, total_sat: u64) -> Result<(), SignerError> {
    match policy.velocity_limit_sat {
        Some(limit) => policy.check(RuleId::PaymentVelocity, total_sat <= limit, || {
            format!(
                "{total_sat} sat paid within {} s, limit {limit} sat",
                policy.velocity_window_secs
            )
        }),
        None => Ok(()),
    }
}

/// `payment-approval`: an own payment above `threshold_sat` (all its HTLCs
/// in this commitment, `total_msat`) carries at most what the operator
/// approved (the invoice's amount plus the fee allowance).
fn check_approved(
    policy: &PolicyConfig,
    total_msat: u64,
    shown: Option<&crate::invoices::KnownInvoice>,
    threshold_sat: u64,
) -> Result<(), SignerError> {
    let approved = shown
        .filter(|s| s.approved)
        .map(|s| crate::invoices::with_allowance(policy, s.amount_msat));
    policy.check(
        RuleId::PaymentApproval,
        approved.is_some_and(|most| total_msat <= most),
        || match approved {
            Some(most) => format!(
                "{total_msat} msat in HTLCs for this payment, above the {most} msat the operator approved"
            ),
            None => format!(
                "payment of {total_msat} msat above the {threshold_sat} sat approval threshold \
                 was not approved by the operator"
            ),
        },
    )
}

/// `payment-invoiced`: an invoice was shown for the HTLC's hash, it has not
/// expired, and the HTLC carries at most its amount plus a routing-fee
/// allowance.
fn check_invoiced(
    policy: &PolicyConfig,
    h: &Htlc,
    shown: Option<&crate::invoices::KnownInvoice>,
    now: u64,
) -> Result<(), SignerError> {
    let Some(inv) = shown else {
        return policy.check(RuleId::PaymentInvoiced, false, || {
            "an outgoing payment for an invoice the signer was not shown".into()
        });
    };
    let most = crate::invoices::with_allowance(policy, inv.amount_msat);
    policy.check(RuleId::PaymentInvoiced, h.amount_msat <= most, || {
        format!(
            "HTLC of {} msat for an invoice of {} msat (at most {most} msat with fees)",
            h.amount_msat, inv.amount_msat
        )
    })?;
    policy.check(RuleId::PaymentInvoiced, now <= inv.expires_at, || {
        format!("the invoice expired at {} (now {now})", inv.expires_at)
    })
}
