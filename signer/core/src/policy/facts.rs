//! What the validators decide from: facts the signer knows — its records
//! (channels, payments, invoices), the chain it checked, its wallet and the
//! operator's configuration. Nothing here comes from the request being
//! judged; the validators never call back into the signer.

use alloc::collections::BTreeMap;

use crate::state::CommitmentRecord;
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::Script;

use crate::policy::PolicyConfig;
use crate::state::{ChannelRecord, FundingProof, MetaRecord, ShownInvoice};
use crate::wallet::WalletScripts;
use crate::ChannelKeysId;

/// The signer's own view, borrowed for one decision.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    /// Limits and rule modes.
    pub policy: &'a PolicyConfig,
    /// The chain height the signer checked (headers with proof of work).
    pub height: u32,
    /// The daemon's clock (unix seconds; 0 when unknown).
    pub now: u64,
    /// Scripts of the signer's wallet.
    pub wallet: &'a WalletScripts,
    /// Signer-wide record: payments, invoices, chain headers.
    pub meta: &'a MetaRecord,
    /// Every channel the signer knows.
    pub channels: &'a BTreeMap<ChannelKeysId, ChannelRecord>,
}

impl<'a> Facts<'a> {
    /// Whether a script pays the signer's wallet.
    pub fn is_own(&self, s: &Script) -> bool {
        self.wallet.contains(s)
    }

    /// Whether funds may go to a script: the wallet or the operator's allow-list.
    pub fn is_allowed_destination(&self, s: &Script) -> bool {
        self.is_own(s) || self.policy.allowed_scripts.contains(s.as_bytes())
    }

    /// The invoice the node showed for a payment hash.
    pub fn shown_invoice(&self, hash: &[u8]) -> Option<&'a ShownInvoice> {
        self.meta
            .shown_invoices
            .iter()
            .find(|s| s.payment_hash == hash)
    }

    /// Confirmations of a proven funding transaction in the signer's chain;
    /// none when its block is no longer on the signer's best chain.
    pub fn funding_confirmations(&self, proof: &FundingProof) -> Option<u32> {
        let headers = &self.meta.chain_headers;
        let first = self.meta.chain_first_height;
        if headers.is_empty() || proof.height > self.height {
            return None;
        }
        if proof.height >= first {
            // Still within the window: the block must be the one proven.
            let at = headers.get((proof.height - first) as usize)?;
            if sha256d::Hash::hash(at).to_byte_array()[..] != proof.block_hash[..] {
                return None;
            }
        }
        Some(self.height - proof.height + 1)
    }

    /// Whether a channel's funding was proven with enough confirmations.
    pub fn is_funded(&self, record: &ChannelRecord) -> bool {
        record
            .funding_proof
            .as_ref()
            .and_then(|p| self.funding_confirmations(p))
            .is_some_and(|c| c >= self.policy.min_funding_confirmations)
    }
}

/// The commitments of a channel that could still confirm: our latest
/// validated one, the peer's latest we signed, and the one before it until
/// the peer revokes it.
#[derive(Clone, Copy, Default)]
pub struct Live<'a> {
    /// Our latest validated commitment.
    pub holder: Option<&'a CommitmentRecord>,
    /// The counterparty's latest signed commitment.
    pub counterparty: Option<&'a CommitmentRecord>,
    /// The counterparty commitment before it, not yet revoked.
    pub counterparty_previous: Option<&'a CommitmentRecord>,
}

impl<'a> Live<'a> {
    /// The live commitments of a record.
    pub fn of(record: &'a ChannelRecord) -> Self {
        Live {
            holder: record.holder.as_ref().and_then(|h| h.commitment.as_ref()),
            counterparty: record.counterparty.as_ref(),
            counterparty_previous: record.counterparty_previous.as_ref(),
        }
    }
}
