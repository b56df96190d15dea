//! The signer's policy rules by id: the catalogue's names, as refusals,
//! logs, the audit log and the configuration spell them (`POLICY.md`).

macro_rules! rules {
    ($($variant:ident => $id:literal,)*) => {
        /// A policy rule of the catalogue, by id.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum RuleId { $(#[doc = $id] $variant,)* }

        impl RuleId {
            /// Every rule of the catalogue.
            pub const ALL: &'static [RuleId] = &[$(RuleId::$variant,)*];
            /// The rule's id as it appears in errors, logs and config.
            pub fn as_str(self) -> &'static str {
                match self { $(RuleId::$variant => $id,)* }
            }
            /// Looks a rule up by its id.
            pub fn parse(s: &str) -> Option<RuleId> {
                match s { $($id => Some(RuleId::$variant),)* _ => None }
            }
        }
    };
}

rules! {
    ChannelTypeSafe => "channel-type-safe",
    ChannelToSelfDelayRange => "channel-to-self-delay-range",
    ChannelValueMax => "channel-value-max",
    ChannelDustLimitRange => "channel-dust-limit-range",
    ChannelKeysIdUnique => "channel-keys-id-unique",
    ChannelParamsImmutable => "channel-params-immutable",
    ChannelKeysIdIssued => "channel-keys-id-issued",
    ChannelFundingUnique => "channel-funding-unique",
    OnchainOutputsKnown => "onchain-outputs-known",
    OnchainFundingOutboundOnly => "onchain-funding-outbound-only",
    OnchainFundingOutpoint => "onchain-funding-outpoint",
    OnchainFundingOutputMatches => "onchain-funding-output-matches",
    OnchainInitialCommitmentFirst => "onchain-initial-commitment-first",
    OnchainFundingSegwitInputs => "onchain-funding-segwit-inputs",
    OnchainNoPush => "onchain-no-push",
    OnchainFeeRange => "onchain-fee-range",
    OnchainFormatStandard => "onchain-format-standard",
    CommitmentInputFunding => "commitment-input-funding",
    CommitmentFormat => "commitment-format",
    CommitmentKeys => "commitment-keys",
    CommitmentOutputsRecognized => "commitment-outputs-recognized",
    CommitmentToSelfDelay => "commitment-to-self-delay",
    CommitmentNumberSequence => "commitment-number-sequence",
    CommitmentFirstNoHtlcs => "commitment-first-no-htlcs",
    CommitmentBalanceConserved => "commitment-balance-conserved",
    CommitmentSettledPreimage => "commitment-settled-preimage",
    CommitmentPreviousRevoked => "commitment-previous-revoked",
    CommitmentHolderNotRevoked => "commitment-holder-not-revoked",
    CommitmentFeeRange => "commitment-fee-range",
    CommitmentHtlcCountMax => "commitment-htlc-count-max",
    CommitmentHtlcInflightMax => "commitment-htlc-inflight-max",
    CommitmentHtlcCltvRange => "commitment-htlc-cltv-range",
    CommitmentDustTrimmed => "commitment-dust-trimmed",
    CommitmentAnchors => "commitment-anchors",
    RevokeNextValidated => "revoke-next-validated",
    RevokeNotClosed => "revoke-not-closed",
    RevokeSecretValid => "revoke-secret-valid",
    HtlcFormat => "htlc-format",
    HtlcKeys => "htlc-keys",
    HtlcFeeRange => "htlc-fee-range",
    CloseDestinationAllowed => "close-destination-allowed",
    CloseValueMatches => "close-value-matches",
    CloseFeeRange => "close-fee-range",
    CloseNoPendingHtlcs => "close-no-pending-htlcs",
    CloseThenFrozen => "close-then-frozen",
    SweepDestinationAllowed => "sweep-destination-allowed",
    SweepFeeRange => "sweep-fee-range",
    SweepLocktimeRange => "sweep-locktime-range",
    SweepInputProven => "sweep-input-proven",
    SweepJusticeSecret => "sweep-justice-secret",
    CloseLocktimeRange => "close-locktime-range",
    PaymentVelocity => "payment-velocity",
    PaymentMax => "payment-max",
    PaymentInvoiced => "payment-invoiced",
    PaymentPayeeAllowlist => "payment-payee-allowlist",
    PaymentApproval => "payment-approval",
    RoutingBalanced => "routing-balanced",
    RoutingIncomingClaimed => "routing-incoming-claimed",
    MerchantNoSends => "merchant-no-sends",
    InvoicePaidOnce => "invoice-paid-once",
    InvoiceSignFormat => "invoice-sign-format",
    GossipAnnouncementKeys => "gossip-announcement-keys",
    ResourceLimit => "resource-limit",
    StateRollbackDetected => "state-rollback-detected",
}
