//! SignerProvider operations: channel keys ids, our channel public keys
//! and the set-up of a channel (`policy::channel`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::state::SetupRecord;
use bitcoin::hashes::{sha256, Hash};
use lnpd_proto::signer::{self as pb};

use crate::commitment::{self, channel_keys_to_wire};
use crate::error::SignerError;
use crate::policy::channel::SetupVerdict;
use crate::policy::commitment::Verdict;
use crate::policy::resources::pending_to_forget;
use crate::policy::{channel as channel_rules, RuleId};
use crate::signer::Signer;
use crate::state::ChannelRecord;
use crate::store::Store;
use crate::ChannelKeysId;

impl<S: Store> Signer<S> {
    pub(crate) fn new_channel_keys_id(
        &mut self,
        _r: &pb::NewChannelKeysIdRequest,
    ) -> Result<pb::NewChannelKeysIdReply, SignerError> {
        let mut meta = self.meta.clone();
        meta.keys_ids_issued += 1;
        // Random bytes plus a persisted counter: unique even after a restore
        // from the mnemonic onto a fresh state.
        let mut pre = self.entropy.random_bytes().to_vec();
        pre.extend_from_slice(&meta.keys_ids_issued.to_be_bytes());
        let id = ChannelKeysId(sha256::Hash::hash(&pre).to_byte_array());
        if self.channels.contains_key(&id) {
            return Err(SignerError::internal("channel keys id collision; retry"));
        }
        // Keys ids issued but never set up are capped: the oldest go (a
        // channel negotiation takes seconds; a node asking for ids without
        // end must not grow the state without end).
        let pending: Vec<(u64, ChannelKeysId)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.setup.is_none())
            .map(|(id, c)| (c.issued_seq, *id))
            .collect();
        let evicted = pending_to_forget(pending, &self.policy);
        let mut record = ChannelRecord::new(&id.0, true);
        record.issued_seq = meta.keys_ids_issued;
        record.ledger_ready = true;
        for e in &evicted {
            tracing::warn!(
                channel = %e,
                rule = RuleId::ResourceLimit.as_str(),
                "forgot a channel keys id issued but never set up ({} pending at most)",
                self.policy.max_pending_channels
            );
        }
        self.commit_records(alloc::vec![(id, record)], evicted, Some(meta))?;
        tracing::info!(channel = %id, "issued channel keys id");
        Ok(pb::NewChannelKeysIdReply {
            channel_keys_id: id.0.to_vec(),
        })
    }

    pub(crate) fn get_channel_public_keys(
        &self,
        r: &pb::GetChannelPublicKeysRequest,
    ) -> Result<pb::ChannelPublicKeys, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        Ok(channel_keys_to_wire(&self.holder_pubkeys(&id)))
    }

    pub(crate) fn setup_channel(
        &mut self,
        r: pb::SetupChannelRequest,
    ) -> Result<pb::SetupChannelReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let r = SetupRecord::from_wire(&r);
        let verdict =
            channel_rules::validate_setup(&id, self.channels.get(&id), &r, &self.facts())?;
        if verdict == SetupVerdict::Again {
            return Ok(pb::SetupChannelReply {});
        }
        let mut record = self.channel(&id)?.clone();
        let params = commitment::channel_parameters(&r, self.holder_pubkeys(&id))?;
        record.setup = Some(r);
        let mut others = BTreeMap::new();
        let mut meta = None;
        if let Some(parked) = record.parked_holder_validation.take() {
            let (holder, changes) = self.check_holder_commitment(&id, &record, &params, &parked)?;
            record.holder = Some(holder);
            if let Verdict::New(changes) = changes {
                (others, meta) = changes.apply(&mut record, true);
            }
            tracing::info!(channel = %id, "validated the parked first holder commitment");
        }
        record.ledger_ready = true;
        let script = record
            .setup
            .as_ref()
            .and_then(|s| self.funding_script_of(&id, s));
        let mut writes: Vec<(ChannelKeysId, ChannelRecord)> = others.into_iter().collect();
        writes.push((id, record));
        self.commit_records(writes, Vec::new(), meta)?;
        if let Some(s) = script {
            self.funding_scripts.insert(s, id);
        }
        tracing::info!(channel = %id, "channel set up");
        Ok(pb::SetupChannelReply {})
    }
}
