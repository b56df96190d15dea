//! The signer's policy: the rule catalogue, its configuration and the check
//! helper every rule goes through. A rule lives in the file named after the
//! transaction kind it guards (`channel.rs`, `commitment.rs`, ...).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::SignerError;
pub use lnpd_proto::RuleId;

pub mod balance;
pub mod channel;
pub mod close;
pub mod commitment;
pub mod commitment_tx;
pub mod facts;
pub mod invoice;
pub mod ledger;
pub mod node;
pub mod onchain;
pub mod resources;
pub mod revocation;
pub mod sweep;

/// Whether a rule refuses (`Enforce`) or only logs (`Warn`) a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RuleMode {
    /// Refuse the request (the default).
    #[default]
    Enforce,
    /// Log the violation and sign anyway.
    Warn,
}

/// Limits and per-rule modes. Defaults are safe for a mainnet node.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// Per-rule override of the default `Enforce`.
    pub modes: BTreeMap<RuleId, RuleMode>,
    /// Shortest `to_self_delay` either side may have (blocks).
    pub min_to_self_delay: u16,
    /// Longest `to_self_delay` either side may have (blocks).
    pub max_to_self_delay: u16,
    /// Largest channel value (sat).
    pub max_channel_value_sat: u64,
    /// Smallest dust limit either side may have (sat).
    pub min_dust_limit_sat: u64,
    /// Largest dust limit either side may have (sat).
    pub max_dust_limit_sat: u64,
    /// Lowest commitment feerate (sat per 1000 weight).
    pub min_feerate_per_kw: u32,
    /// Highest commitment feerate (sat per 1000 weight).
    pub max_feerate_per_kw: u32,
    /// Most non-dust HTLCs in one commitment.
    pub max_htlcs: usize,
    /// Most value in non-dust HTLCs in one commitment (sat), both ways.
    pub max_htlc_inflight_sat: u64,
    /// Most value a commitment may leave out of its outputs (HTLCs trimmed
    /// as dust, which the signer does not see), in sat.
    pub max_dust_exposure_sat: u64,
    /// Most value our side may lose, net, to trimmed outputs over a
    /// channel's life, along each side's commitments (sat). Trimmed HTLCs
    /// we pay count here: the signer cannot see them.
    pub max_trimmed_loss_sat: u64,
    /// Highest feerate of transactions we pay fees on alone: mutual closes
    /// (as funder) and sweeps (sat per 1000 weight).
    pub max_onchain_feerate_per_kw: u32,
    /// Largest share of the value a sweep spends that may go to its fee
    /// (percent).
    pub max_sweep_fee_percent: u64,
    /// Most the wallet's transactions may pay in fees, in all, within
    /// `velocity_window_secs` (sat); none: no budget.
    pub onchain_fee_budget_sat: Option<u64>,
    /// Whether a channel we fund may push value to the peer at open.
    pub allow_push: bool,
    /// Largest single outgoing payment (sat); none: no limit.
    pub max_payment_sat: Option<u64>,
    /// Most we pay within `velocity_window_secs` (sat); none: no limit.
    pub velocity_limit_sat: Option<u64>,
    /// The rolling window of `velocity_limit_sat`.
    pub velocity_window_secs: u64,
    /// Receive-only: our balance never goes out except by forwarding.
    pub merchant_no_sends: bool,
    /// Forwards must be covered by an incoming HTLC of the same hash.
    pub routing_balanced: bool,
    /// Own payments only for invoices the node showed (amount, expiry).
    pub payment_invoiced: bool,
    /// Own payments only to payees in `allowed_payees` (needs the invoice).
    pub payee_allowlist: bool,
    /// What an HTLC may carry above the invoice's amount for routing fees,
    /// in millionths of the amount (plus 1 000 msat).
    pub invoice_fee_allowance_ppm: u64,
    /// Own payments above this (sat) wait for the operator's approval;
    /// none: no approval asked.
    pub approval_above_sat: Option<u64>,
    /// How far past the chain tip an HTLC we offer may expire (blocks).
    pub max_htlc_cltv_window: u32,
    /// How far past the chain tip a sweep's (or a mutual close's) locktime
    /// may be (blocks).
    pub max_sweep_locktime_ahead: u32,
    /// Fewest blocks between a forward's outgoing expiry and the expiry of
    /// the incoming HTLC that covers it.
    pub forward_min_cltv_delta: u32,
    /// Confirmations a channel's funding needs before HTLCs it receives
    /// can cover forwards.
    pub min_funding_confirmations: u32,
    /// Most keys ids issued but not set up (the oldest unused go first).
    pub max_pending_channels: usize,
    /// Most channels set up at once.
    pub max_channels: usize,
    /// Most wallet scripts handed out (change, close and sweep destinations).
    pub max_wallet_scripts: u32,
    /// Where the signer's header chain starts; none: the network's genesis.
    pub chain_checkpoint: Option<crate::chain::Checkpoint>,
    /// Output scripts the operator allows funds to go to besides the wallet
    /// (withdrawals, closes, sweeps). Managed with `lnpd-signer allowlist`.
    pub allowed_scripts: BTreeSet<Vec<u8>>,
    /// Payee node ids (33 bytes) the operator allows payments to.
    pub allowed_payees: BTreeSet<[u8; 33]>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            modes: BTreeMap::new(),
            min_to_self_delay: 6,
            max_to_self_delay: 2016,
            max_channel_value_sat: 100_000_000,
            min_dust_limit_sat: 330,
            max_dust_limit_sat: 10_000,
            min_feerate_per_kw: 253,
            max_feerate_per_kw: 100_000,
            max_htlcs: 483,
            max_htlc_inflight_sat: 10_000_000,
            max_dust_exposure_sat: 50_000,
            max_trimmed_loss_sat: 100_000,
            max_onchain_feerate_per_kw: 25_000,
            max_sweep_fee_percent: 50,
            onchain_fee_budget_sat: Some(2_000_000),
            allow_push: false,
            max_payment_sat: None,
            velocity_limit_sat: None,
            velocity_window_secs: 86_400,
            merchant_no_sends: false,
            routing_balanced: false,
            payment_invoiced: false,
            payee_allowlist: false,
            invoice_fee_allowance_ppm: 10_000,
            approval_above_sat: None,
            max_htlc_cltv_window: 2_016,
            max_sweep_locktime_ahead: 12,
            forward_min_cltv_delta: 24,
            min_funding_confirmations: 3,
            max_pending_channels: 100,
            max_channels: 10_000,
            max_wallet_scripts: 10_000,
            chain_checkpoint: None,
            allowed_scripts: BTreeSet::new(),
            allowed_payees: BTreeSet::new(),
        }
    }
}

impl PolicyConfig {
    /// An invoice's amount plus the routing-fee allowance an HTLC may add
    /// (`invoice_fee_allowance_ppm`, plus 1 000 msat), in msat.
    pub fn with_fee_allowance(&self, amount_msat: u64) -> u64 {
        amount_msat
            .saturating_add(amount_msat.saturating_mul(self.invoice_fee_allowance_ppm) / 1_000_000)
            .saturating_add(1_000)
    }

    /// The mode a rule runs in.
    pub fn mode(&self, rule: RuleId) -> RuleMode {
        self.modes.get(&rule).copied().unwrap_or_default()
    }

    /// Applies `rule`: when `ok` is false, refuses (or, in warn mode, logs and
    /// lets the request through). `why` is only evaluated on a violation.
    pub fn check(
        &self,
        rule: RuleId,
        ok: bool,
        why: impl FnOnce() -> String,
    ) -> Result<(), SignerError> {
        if ok {
            return Ok(());
        }
        let reason = why();
        match self.mode(rule) {
            // Logged once by the handler, with the operation.
            RuleMode::Enforce => Err(SignerError::policy(rule, reason)),
            RuleMode::Warn => {
                tracing::warn!(
                    rule = rule.as_str(),
                    "policy violation allowed (warn mode): {reason}"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_round_trip() {
        for r in RuleId::ALL {
            assert_eq!(RuleId::parse(r.as_str()), Some(*r));
        }
        assert_eq!(RuleId::parse("no-such-rule"), None);
    }

    #[test]
    fn every_rule_is_in_the_catalogue() {
        let doc = include_str!("../../../../docs/policy.md");
        for r in RuleId::ALL {
            assert!(
                doc.contains(&alloc::format!("`{}`", r.as_str())),
                "docs/policy.md does not list {}",
                r.as_str()
            );
        }
    }

    #[test]
    fn warn_mode_lets_a_violation_through() {
        let mut cfg = PolicyConfig::default();
        let err = cfg
            .check(RuleId::CommitmentFeeRange, false, || "too high".into())
            .unwrap_err();
        assert_eq!(err.rule, Some(RuleId::CommitmentFeeRange));
        cfg.modes.insert(RuleId::CommitmentFeeRange, RuleMode::Warn);
        assert!(cfg
            .check(RuleId::CommitmentFeeRange, false, || "too high".into())
            .is_ok());
    }
}
