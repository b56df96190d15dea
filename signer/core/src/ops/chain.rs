//! Chain requests: headers the node feeds (`UpdateChain`), checked and
//! kept as the signer's chain (`crate::chain`), and proofs that a channel's
//! funding transaction is in one of its blocks (`ProveFunding`).

use alloc::format;
use alloc::vec::Vec;

use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;

use crate::chain::{decode_headers, linked_height, ChainView, Checkpoint, WINDOW};
use crate::error::SignerError;
use crate::signer::Signer;
use crate::store::Store;

impl<S: Store> Signer<S> {
    /// The chain as stored (the checkpoint or genesis before any update).
    pub fn chain_view(&self) -> Result<ChainView, SignerError> {
        let base = self
            .policy
            .chain_checkpoint
            .unwrap_or_else(|| Checkpoint::genesis(self.keys.network()));
        ChainView::load(
            self.meta.chain_first_height,
            &self.meta.chain_headers,
            base,
            (
                self.meta.chain_period_height,
                &self.meta.chain_period_header,
            ),
        )
    }

    /// The height the signer believes the chain is at.
    /// Height of the best chain the signer has checked (its checkpoint's
    /// before any header).
    pub fn chain_height(&self) -> u32 {
        // Counted, not decoded: this runs for every commitment signed.
        match self.meta.chain_headers.len() {
            0 => self.policy.chain_checkpoint.map_or(0, |c| c.height),
            n => self.meta.chain_first_height + n as u32 - 1,
        }
    }

    pub(crate) fn update_chain(
        &mut self,
        r: &lnpd_proto::signer::UpdateChainRequest,
    ) -> Result<lnpd_proto::signer::UpdateChainReply, SignerError> {
        let headers = decode_headers(&r.headers)?;
        let view = self.chain_view()?;
        let next = view.extended(self.keys.network(), r.first_height, &headers, self.now)?;
        if next != view {
            let mut meta = self.meta.clone();
            meta.chain_first_height = next.first_height;
            meta.chain_headers = next.encoded();
            // The period's first header is kept once it leaves the window.
            match next.period.filter(|(h, _)| *h < next.first_height) {
                Some((h, header)) => {
                    meta.chain_period_height = h;
                    meta.chain_period_header = serialize(&header);
                }
                None => {
                    meta.chain_period_height = 0;
                    meta.chain_period_header = Vec::new();
                }
            }
            self.commit_meta(meta)?;
        }
        Ok(lnpd_proto::signer::UpdateChainReply {
            height: next.height(),
            block_hash: next.tip_hash().to_byte_array().to_vec(),
            first_height: next.first_height,
        })
    }
}

impl<S: Store> Signer<S> {
    /// Records that a channel's funding transaction is in a block of the
    /// signer's chain (a BIP 37 merkle block proves it).
    pub(crate) fn prove_funding(
        &mut self,
        r: &lnpd_proto::signer::ProveFundingRequest,
    ) -> Result<lnpd_proto::signer::ProveFundingReply, SignerError> {
        use bitcoin::{MerkleBlock, Transaction};
        let id = crate::ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, _) = self.set_up_channel(&id)?;
        let outpoint = setup.funding()?;
        let tx: Transaction = deserialize(&r.funding_transaction)
            .map_err(|_| SignerError::invalid("the funding transaction does not decode"))?;
        let txid = tx.compute_txid();
        if txid != outpoint.txid {
            return Err(SignerError::invalid(format!(
                "channel {id}: {txid} is not its funding transaction"
            )));
        }
        let script = self.funding_script_of(&id, setup);
        let out = tx.output.get(outpoint.vout as usize);
        if out.is_none_or(|o| {
            Some(&o.script_pubkey) != script.as_ref() || o.value.to_sat() != setup.channel_value_sat
        }) {
            return Err(SignerError::invalid(format!(
                "channel {id}: the funding output is not the channel's 2-of-2 with its value"
            )));
        }
        let block: MerkleBlock = deserialize(&r.merkle_block)
            .map_err(|_| SignerError::invalid("the merkle block does not decode"))?;
        let (mut matches, mut indexes) = (Vec::new(), Vec::new());
        block
            .extract_matches(&mut matches, &mut indexes)
            .map_err(|_| SignerError::invalid("the merkle block's proof does not hold"))?;
        if !matches.contains(&txid) {
            return Err(SignerError::invalid(
                "the merkle block does not prove the funding transaction",
            ));
        }
        let view = self.chain_view()?;
        let hash = block.header.block_hash();
        let in_view = (view.first_height..=view.height())
            .find(|h| view.header_at(*h).is_some_and(|b| b.block_hash() == hash));
        let height = match in_view {
            Some(h) => h,
            None if !r.later_headers.is_empty() => {
                linked_height(&view, self.keys.network(), &block.header, &r.later_headers)?
            }
            None => {
                return Err(SignerError::precondition(format!(
                    "block {hash} is not among the signer's last {WINDOW} headers (feed the chain first, or send the headers after it)"
                )))
            }
        };
        let proof = crate::state::FundingProof {
            height,
            block_hash: hash.to_byte_array().to_vec(),
        };
        if record.funding_proof.as_ref() != Some(&proof) {
            let mut updated = record.clone();
            updated.funding_proof = Some(proof);
            self.commit_channel(id, updated, None)?;
            tracing::info!(channel = %id, height, "funding proven on the signer's chain");
        }
        Ok(lnpd_proto::signer::ProveFundingReply {
            height,
            confirmations: view.height() - height + 1,
        })
    }
}
