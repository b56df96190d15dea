//! Caps on what a node can make the signer keep (`resource-limit`): keys
//! ids issued but not set up, first commitments parked before set-up,
//! wallet scripts handed out, invoices shown. A flood of requests cannot
//! grow the signer's state without end.

use alloc::format;
use alloc::vec::Vec;

use crate::state::ParkedValidation;

use crate::error::SignerError;
use crate::policy::facts::Facts;
use crate::policy::{PolicyConfig, RuleId};
use crate::state::{Approval, ShownInvoice};
use crate::ChannelKeysId;

/// Largest first commitment kept before its channel is set up (bytes).
pub const MAX_PARKED_TX_BYTES: usize = 2_000;
/// Most invoices kept at once.
pub const MAX_SHOWN_INVOICES: usize = 1_000;

/// The keys ids to forget before issuing one more: the oldest of those
/// issued and never set up, beyond `max_pending_channels`. `pending` pairs
/// each with its issue sequence number.
pub fn pending_to_forget(
    mut pending: Vec<(u64, ChannelKeysId)>,
    policy: &PolicyConfig,
) -> Vec<ChannelKeysId> {
    if pending.len() < policy.max_pending_channels {
        return Vec::new();
    }
    pending.sort();
    let excess = pending.len() + 1 - policy.max_pending_channels.max(1);
    pending.into_iter().take(excess).map(|(_, id)| id).collect()
}

/// A first holder commitment kept before set-up has no HTLCs and is small.
pub fn check_parked_first_commitment(
    id: &ChannelKeysId,
    r: &ParkedValidation,
) -> Result<(), SignerError> {
    let small =
        r.commitment.as_ref().is_some_and(|data| {
            data.htlcs.is_empty() && data.transaction.len() <= MAX_PARKED_TX_BYTES
        }) && r.htlc_signatures.is_empty()
            && r.outbound_htlc_preimages.is_empty();
    if small {
        return Ok(());
    }
    Err(SignerError::policy(
        RuleId::ResourceLimit,
        format!(
            "channel {id}: a first commitment kept before set-up has no HTLCs and at most \
             {MAX_PARKED_TX_BYTES} bytes"
        ),
    ))
}

/// One more wallet script may be handed out (`max_wallet_scripts`).
pub fn check_wallet_scripts(handed_out: u32, policy: &PolicyConfig) -> Result<(), SignerError> {
    if handed_out < policy.max_wallet_scripts {
        return Ok(());
    }
    Err(SignerError::policy(
        RuleId::ResourceLimit,
        format!("{handed_out} wallet scripts handed out, the limit (max_wallet_scripts)"),
    ))
}

/// Which shown invoice to forget to make room for one more, if the list is
/// full. What was paid for an invoice is kept until it expires: only an
/// unpaid, unapproved one with no payment in flight makes room; if none,
/// `resource-limit`.
pub fn invoice_to_forget(
    shown: &[ShownInvoice],
    facts: &Facts,
) -> Result<Option<usize>, SignerError> {
    if shown.len() < MAX_SHOWN_INVOICES {
        return Ok(None);
    }
    let in_flight = |hash: &[u8]| {
        facts.channels.values().any(|c| {
            c.outgoing
                .iter()
                .any(|e| e.forward_from.is_empty() && e.payment_hash == hash)
        })
    };
    shown
        .iter()
        .position(|s| {
            s.paid_msat == 0
                && s.approval != Approval::Approved as i32
                && !in_flight(&s.payment_hash)
        })
        .map(Some)
        .ok_or_else(|| {
            SignerError::policy(
                RuleId::ResourceLimit,
                format!(
                    "{MAX_SHOWN_INVOICES} invoices shown and paid or approved, none expired yet"
                ),
            )
        })
}
