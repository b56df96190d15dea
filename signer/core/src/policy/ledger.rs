//! The HTLC ledger and the payment controls (`payment-max`,
//! `payment-velocity`, `payment-invoiced`, `invoice-paid-once`,
//! `payment-approval`, `payment-payee-allowlist`, `merchant-no-sends`,
//! `routing-balanced`, and the expiry window `commitment-htlc-cltv-range`).
//!
//! Every HTLC we offer is admitted once, when it first appears in any live
//! commitment of its channel — ours (which we may broadcast) or the peer's
//! (which it may broadcast) — and stays in the ledger until no live
//! commitment carries it. An HTLC is identified by (payment hash, amount,
//! expiry), counted as a multiset: a second HTLC just like one already
//! there is new too.
//!
//! Admission: an HTLC is a forward only when an HTLC with the same payment
//! hash, received on another channel whose funding the signer saw proven
//! on its chain, is irrevocably committed there (in our latest commitment
//! and in every unrevoked commitment of the peer), expires at least
//! `forward_min_cltv_delta` blocks later, and still has that much value
//! not covering other forwards: each incoming HTLC covers outgoing value
//! once, in total. Anything else is a payment of our own and goes through
//! every control; a payment (its payment hash) counts all its parts, in
//! flight and settled, across channels and time.
//!
//! Resolution: an HTLC no live commitment carries any more was paid if the
//! node ever showed its preimage, else it failed (the balance rules have
//! checked its value came back). A failed forward frees the incoming
//! HTLC's cover; a paid one marks it as owed to us (`routing-incoming-
//! claimed`, checked by the balance rules).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use crate::state::CommitmentRecord;
use crate::state::{HtlcRecord, HtlcSide};

use crate::error::SignerError;
use crate::policy::facts::{Facts, Live};
use crate::policy::{PolicyConfig, RuleId};
use crate::state::{ChannelRecord, CoveringHtlc, MetaRecord, OutgoingHtlc, RecentPayment};
use crate::ChannelKeysId;

/// An HTLC's identity in commitments: payment hash, amount (msat), expiry.
pub type Key<'a> = (&'a [u8], u64, u32);

fn key(h: &HtlcRecord) -> Key<'_> {
    (&h.payment_hash, h.amount_msat, h.cltv_expiry)
}

/// HTLCs we offered in a commitment (`holder`: the commitment is ours, so
/// we are its broadcaster and "offered" means by us).
pub fn ours(c: &CommitmentRecord, holder: bool) -> impl Iterator<Item = &HtlcRecord> {
    let d = if holder {
        HtlcSide::Offered
    } else {
        HtlcSide::Received
    } as i32;
    c.htlcs.iter().filter(move |h| h.direction == d)
}

/// HTLCs the peer offered us in a commitment.
pub fn theirs(c: &CommitmentRecord, holder: bool) -> impl Iterator<Item = &HtlcRecord> {
    let d = if holder {
        HtlcSide::Received
    } else {
        HtlcSide::Offered
    } as i32;
    c.htlcs.iter().filter(move |h| h.direction == d)
}

/// Copies of each key in one commitment.
fn counts<'a>(
    c: &'a CommitmentRecord,
    holder: bool,
    offered_by_us: bool,
) -> BTreeMap<Key<'a>, usize> {
    let mut m = BTreeMap::new();
    let it: alloc::boxed::Box<dyn Iterator<Item = &HtlcRecord>> = if offered_by_us {
        alloc::boxed::Box::new(ours(c, holder))
    } else {
        alloc::boxed::Box::new(theirs(c, holder))
    };
    for h in it {
        *m.entry(key(h)).or_insert(0) += 1;
    }
    m
}

/// Copies of each key the live commitments carry: the most any one holds.
pub fn needed<'a>(live: &Live<'a>, offered_by_us: bool) -> BTreeMap<Key<'a>, usize> {
    let mut need: BTreeMap<Key<'a>, usize> = BTreeMap::new();
    let sides = [
        (live.holder, true),
        (live.counterparty, false),
        (live.counterparty_previous, false),
    ];
    for (c, holder) in sides {
        let Some(c) = c else { continue };
        for (k, n) in counts(c, holder, offered_by_us) {
            let e = need.entry(k).or_insert(0);
            *e = (*e).max(n);
        }
    }
    need
}

/// Copies of an incoming HTLC that are irrevocably committed: in our latest
/// commitment and in every unrevoked commitment of the peer.
fn irrevocable_copies(live: &Live, k: Key) -> usize {
    let count = |c: Option<&CommitmentRecord>, holder: bool| {
        c.map(|c| theirs(c, holder).filter(|h| key(h) == k).count())
    };
    let mut copies = count(live.holder, true).unwrap_or(0);
    copies = copies.min(count(live.counterparty, false).unwrap_or(0));
    if let Some(n) = count(live.counterparty_previous, false) {
        copies = copies.min(n);
    }
    copies
}

/// One update of a channel's commitments, as the ledger sees it.
pub struct Update<'a> {
    /// The channel.
    pub id: &'a ChannelKeysId,
    /// Its record before the update.
    pub record: &'a ChannelRecord,
    /// Its live commitments once the update is applied.
    pub after: Live<'a>,
    /// Payment hashes whose preimages the node showed with this request.
    pub shown_hashes: &'a [[u8; 32]],
}

/// What an update changes in the signer's records.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The channel's HTLCs we offered, after the update.
    pub outgoing: Vec<OutgoingHtlc>,
    /// The channel's incoming HTLCs that cover forwards, after the update.
    pub covering: Vec<CoveringHtlc>,
    /// Other channels whose cover changed.
    pub others: BTreeMap<ChannelKeysId, ChannelRecord>,
    /// The signer-wide record, when payments or invoices changed.
    pub meta: Option<MetaRecord>,
    /// Our own payments admitted (msat each).
    pub own_admitted: Vec<u64>,
}

/// Runs the ledger over an update: admits new HTLCs we offer (every
/// control), resolves those no live commitment carries any more.
pub fn apply(u: &Update, facts: &Facts) -> Result<Outcome, SignerError> {
    let policy = facts.policy;
    let mut out = Outcome {
        outgoing: u.record.outgoing.clone(),
        covering: u.record.covering.clone(),
        ..Default::default()
    };
    for e in out.outgoing.iter_mut() {
        if u.shown_hashes.iter().any(|h| e.payment_hash == h[..]) {
            e.settled = true;
        }
    }
    let need = needed(&u.after, true);

    // Resolve what left every live commitment.
    let mut have: BTreeMap<(Vec<u8>, u64, u32), usize> = BTreeMap::new();
    for e in &out.outgoing {
        *have
            .entry((e.payment_hash.clone(), e.amount_msat, e.cltv_expiry))
            .or_insert(0) += 1;
    }
    for ((hash, amount, expiry), n) in have {
        let live = need
            .get(&(hash.as_slice(), amount, expiry))
            .copied()
            .unwrap_or(0);
        for _ in live..n {
            let Some(i) = out.outgoing.iter().rposition(|e| {
                e.payment_hash == hash && e.amount_msat == amount && e.cltv_expiry == expiry
            }) else {
                break;
            };
            let gone = out.outgoing.remove(i);
            resolve(&gone, u, facts, &mut out);
        }
    }

    // Cover of incoming HTLCs that left every live commitment is released.
    let need_in = needed(&u.after, false);
    out.covering.retain(|c| {
        need_in
            .get(&(c.payment_hash.as_slice(), c.amount_msat, c.cltv_expiry))
            .is_some_and(|n| *n > 0)
    });

    // Admit what is new.
    let mut have: BTreeMap<(Vec<u8>, u64, u32), usize> = BTreeMap::new();
    for e in &out.outgoing {
        *have
            .entry((e.payment_hash.clone(), e.amount_msat, e.cltv_expiry))
            .or_insert(0) += 1;
    }
    for ((hash, amount, expiry), n) in &need {
        let known = have
            .get(&(hash.to_vec(), *amount, *expiry))
            .copied()
            .unwrap_or(0);
        for _ in known..*n {
            let entry = admit(u, facts, &mut out, (hash, *amount, *expiry))?;
            out.outgoing.push(entry);
        }
    }

    if !out.own_admitted.is_empty() && policy.velocity_limit_sat.is_some() {
        let mut meta = out.meta.take().unwrap_or_else(|| facts.meta.clone());
        let window = policy.velocity_window_secs;
        meta.recent_payments
            .retain(|p| p.at.saturating_add(window) > facts.now);
        meta.recent_payments
            .extend(out.own_admitted.iter().map(|msat| RecentPayment {
                at: facts.now,
                sat: msat / 1000,
            }));
        bound_records(&mut meta.recent_payments);
        out.meta = Some(meta);
    }
    Ok(out)
}

/// The record of another channel as this update left it.
fn other<'o>(
    out: &'o mut Outcome,
    facts: &Facts,
    id: &ChannelKeysId,
) -> Option<&'o mut ChannelRecord> {
    if !out.others.contains_key(id) {
        let r = facts.channels.get(id)?.clone();
        out.others.insert(*id, r);
    }
    out.others.get_mut(id)
}

/// An HTLC we offered left every live commitment.
fn resolve(gone: &OutgoingHtlc, u: &Update, facts: &Facts, out: &mut Outcome) {
    if gone.forward_from.is_empty() {
        if gone.settled && facts.shown_invoice(&gone.payment_hash).is_some() {
            {
                let meta = out.meta.get_or_insert_with(|| facts.meta.clone());
                if let Some(s) = meta
                    .shown_invoices
                    .iter_mut()
                    .find(|s| s.payment_hash == gone.payment_hash)
                {
                    s.paid_msat = s.paid_msat.saturating_add(gone.amount_msat);
                }
            }
        }
        return;
    }
    let Ok(from) = ChannelKeysId::from_slice(&gone.forward_from) else {
        return;
    };
    let same = |c: &CoveringHtlc| {
        c.payment_hash == gone.payment_hash
            && c.amount_msat == gone.forward_in_amount_msat
            && c.cltv_expiry == gone.forward_in_cltv_expiry
    };
    if from == *u.id {
        return;
    }
    if let Some(rec) = other(out, facts, &from) {
        if let Some(c) = rec.covering.iter_mut().find(|c| same(c)) {
            if gone.settled {
                // Paid out: the incoming HTLC is owed to us now.
                c.claimable = true;
            } else {
                c.covered_msat = c.covered_msat.saturating_sub(gone.amount_msat);
            }
        }
    }
}

/// Everything our own HTLCs with `hash` carry, in flight on every channel
/// (this update's view of this channel and of the others it changed) and
/// already paid for its invoice.
fn spent_msat(hash: &[u8], u: &Update, facts: &Facts, out: &Outcome) -> u64 {
    let own = |e: &&OutgoingHtlc| e.forward_from.is_empty() && e.payment_hash == hash;
    let mut total: u64 = out
        .outgoing
        .iter()
        .filter(own)
        .fold(0u64, |a, e| a.saturating_add(e.amount_msat));
    for (id, rec) in facts.channels {
        if id == u.id {
            continue;
        }
        let rec = out.others.get(id).unwrap_or(rec);
        total = rec
            .outgoing
            .iter()
            .filter(own)
            .fold(total, |a, e| a.saturating_add(e.amount_msat));
    }
    let paid = out
        .meta
        .as_ref()
        .and_then(|m| m.shown_invoices.iter().find(|s| s.payment_hash == hash))
        .map(|s| s.paid_msat)
        .or_else(|| facts.shown_invoice(hash).map(|s| s.paid_msat))
        .unwrap_or(0);
    total.saturating_add(paid)
}

/// Why no incoming HTLC with the payment hash covers a forward (for
/// `routing-balanced`); none when no channel has one at all.
struct NoCover(alloc::string::String);

/// Finds an incoming HTLC that covers `k` as a forward and books the cover.
fn find_cover(
    u: &Update,
    facts: &Facts,
    out: &mut Outcome,
    k: Key,
) -> Result<Option<OutgoingHtlc>, Option<NoCover>> {
    let (hash, amount, expiry) = k;
    let mut why: Option<NoCover> = None;
    let mut found: Option<(ChannelKeysId, u64, u32)> = None;
    for (aid, arec) in facts.channels {
        if aid == u.id {
            continue;
        }
        let live = Live::of(arec);
        let Some(holder) = live.holder else { continue };
        for h in theirs(holder, true).filter(|h| h.payment_hash == hash) {
            let j = key(h);
            if !facts.is_funded(arec) {
                why = Some(NoCover(format!(
                    "the incoming HTLC's channel {aid} has no funding proven on the signer's chain"
                )));
                continue;
            }
            let copies = irrevocable_copies(&live, j);
            if copies == 0 {
                why = Some(NoCover(format!(
                    "the incoming HTLC on channel {aid} is not irrevocably committed"
                )));
                continue;
            }
            let delta = facts.policy.forward_min_cltv_delta as u64;
            if (h.cltv_expiry as u64) < facts.height as u64 + delta {
                why = Some(NoCover(format!(
                    "the incoming HTLC expires at {}, less than {delta} blocks past the chain tip {}: \
                     no time left to claim it",
                    h.cltv_expiry, facts.height
                )));
                continue;
            }
            if (h.cltv_expiry as u64) < expiry as u64 + delta {
                why = Some(NoCover(format!(
                    "the incoming HTLC expires at {}, less than {} blocks after the forward's {expiry}",
                    h.cltv_expiry, facts.policy.forward_min_cltv_delta
                )));
                continue;
            }
            let rec = out.others.get(aid).unwrap_or(arec);
            let covered = rec
                .covering
                .iter()
                .find(|c| {
                    c.payment_hash == hash
                        && c.amount_msat == h.amount_msat
                        && c.cltv_expiry == h.cltv_expiry
                })
                .map_or(0, |c| c.covered_msat);
            let capacity = h.amount_msat.saturating_mul(copies as u64);
            if capacity.saturating_sub(covered) < amount {
                why = Some(NoCover(format!(
                    "forward of {amount} msat against an incoming HTLC with {} msat left uncovered",
                    capacity.saturating_sub(covered)
                )));
                continue;
            }
            found = Some((*aid, h.amount_msat, h.cltv_expiry));
            break;
        }
        if found.is_some() {
            break;
        }
    }
    let Some((aid, in_amount, in_expiry)) = found else {
        return Err(why);
    };
    let Some(rec) = other(out, facts, &aid) else {
        return Err(None);
    };
    match rec.covering.iter_mut().find(|c| {
        c.payment_hash == hash && c.amount_msat == in_amount && c.cltv_expiry == in_expiry
    }) {
        Some(c) => c.covered_msat = c.covered_msat.saturating_add(amount),
        None => rec.covering.push(CoveringHtlc {
            payment_hash: hash.to_vec(),
            amount_msat: in_amount,
            cltv_expiry: in_expiry,
            covered_msat: amount,
            claimable: false,
        }),
    }
    Ok(Some(OutgoingHtlc {
        payment_hash: hash.to_vec(),
        amount_msat: amount,
        cltv_expiry: expiry,
        forward_from: aid.0.to_vec(),
        forward_in_amount_msat: in_amount,
        forward_in_cltv_expiry: in_expiry,
        settled: false,
    }))
}

/// Admits one new HTLC we offer, as a forward or a payment of our own.
fn admit(
    u: &Update,
    facts: &Facts,
    out: &mut Outcome,
    k: Key,
) -> Result<OutgoingHtlc, SignerError> {
    let policy = facts.policy;
    let (hash, amount, expiry) = k;
    let latest = facts.height.saturating_add(policy.max_htlc_cltv_window);
    policy.check(RuleId::CommitmentHtlcCltvRange, expiry <= latest, || {
        format!(
            "HTLC expiring at height {expiry} while the chain is at {} (at most {} blocks ahead)",
            facts.height, policy.max_htlc_cltv_window
        )
    })?;
    let no_cover = match find_cover(u, facts, out, k) {
        Ok(Some(forward)) => return Ok(forward),
        Ok(None) => None,
        Err(why) => why,
    };
    if let (true, Some(NoCover(why))) = (policy.routing_balanced, &no_cover) {
        policy.check(RuleId::RoutingBalanced, false, || why.clone())?;
    }
    check_own_payment(policy, amount / 1000)?;
    let spent = spent_msat(hash, u, facts, out);
    let total = spent.saturating_add(amount);
    if let Some(max) = policy.max_payment_sat {
        policy.check(RuleId::PaymentMax, total / 1000 <= max, || {
            format!(
                "payment of {} sat in all (this HTLC {} sat) above the {max} sat limit",
                total / 1000,
                amount / 1000
            )
        })?;
    }
    let shown = facts.shown_invoice(hash);
    if policy.payment_invoiced {
        let Some(inv) = shown else {
            return policy
                .check(RuleId::PaymentInvoiced, false, || {
                    "an outgoing payment for an invoice the signer was not shown".into()
                })
                .map(|_| own_entry(k));
        };
        let most = policy.with_fee_allowance(inv.amount_msat);
        policy.check(RuleId::PaymentInvoiced, amount <= most, || {
            format!(
                "HTLC of {amount} msat for an invoice of {} msat (at most {most} msat with fees)",
                inv.amount_msat
            )
        })?;
        policy.check(RuleId::PaymentInvoiced, facts.now <= inv.expires_at, || {
            format!(
                "the invoice expired at {} (now {})",
                inv.expires_at, facts.now
            )
        })?;
        policy.check(RuleId::InvoicePaidOnce, total <= most, || {
            format!(
                "the invoice of {} msat was already paid or is being paid ({spent} msat); \
                 {amount} msat more would make {total} msat (at most {most} msat)",
                inv.amount_msat
            )
        })?;
    }
    if let Some(t) = policy.approval_above_sat {
        let needs = total / 1000 > t
            || shown.is_some_and(|s| s.approval != crate::state::Approval::NotNeeded as i32);
        if needs {
            let approved = shown
                .filter(|s| s.approval == crate::state::Approval::Approved as i32)
                .map(|s| policy.with_fee_allowance(s.amount_msat));
            policy.check(
                RuleId::PaymentApproval,
                approved.is_some_and(|most| total <= most),
                || match approved {
                    Some(most) => format!(
                        "{total} msat for this payment in all, above the {most} msat the operator approved"
                    ),
                    None => format!(
                        "payment of {total} msat above the {t} sat approval threshold was not approved by the operator"
                    ),
                },
            )?;
        }
    }
    let payee_ok = shown
        .and_then(|s| <[u8; 33]>::try_from(s.payee.as_slice()).ok())
        .is_some_and(|p| policy.allowed_payees.contains(&p));
    policy.check(
        RuleId::PaymentPayeeAllowlist,
        !policy.payee_allowlist || payee_ok,
        || "payment to a payee not on the allow-list (or no invoice shown)".into(),
    )?;
    let recent = recent_payments_sat(policy, facts.meta, facts.now);
    let now_sat: u64 = out.own_admitted.iter().map(|m| m / 1000).sum();
    check_velocity(
        policy,
        recent.saturating_add(now_sat).saturating_add(amount / 1000),
    )?;
    out.own_admitted.push(amount);
    Ok(own_entry(k))
}

fn own_entry(k: Key) -> OutgoingHtlc {
    OutgoingHtlc {
        payment_hash: k.0.to_vec(),
        amount_msat: k.1,
        cltv_expiry: k.2,
        ..Default::default()
    }
}

/// Most records kept of payments (or fees) in the rolling window.
const MAX_RECENT: usize = 1_000;

/// Keeps at most [`MAX_RECENT`] records: the two oldest merge into one,
/// at the later time (the sum stays counted, a little longer: stricter).
/// A signer without a clock (a device) would keep every record otherwise.
pub fn bound_records(records: &mut Vec<RecentPayment>) {
    while records.len() > MAX_RECENT {
        let first = records.remove(0);
        if let Some(next) = records.first_mut() {
            next.at = next.at.max(first.at);
            next.sat = next.sat.saturating_add(first.sat);
        }
    }
}

/// What we paid within the velocity window (sat).
pub fn recent_payments_sat(policy: &PolicyConfig, meta: &MetaRecord, now: u64) -> u64 {
    let window = policy.velocity_window_secs;
    meta.recent_payments
        .iter()
        .filter(|p| p.at.saturating_add(window) > now)
        .map(|p| p.sat)
        .sum()
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

/// The ledger of a record written before the ledger existed: the HTLCs we
/// offered in its live commitments, taken as they are (they were signed
/// under the rules of the day), so the next update admits only new ones.
pub fn initial_entries(record: &ChannelRecord) -> Vec<OutgoingHtlc> {
    needed(&Live::of(record), true)
        .into_iter()
        .flat_map(|(k, n)| core::iter::repeat_n(own_entry(k), n))
        .collect()
}
