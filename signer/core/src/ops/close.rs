//! The mutual close: our signature on a closing transaction
//! (`policy::close`).

use bitcoin::{absolute::LockTime, Amount, ScriptBuf};
use lightning::ln::chan_utils::{self};
use lnpd_proto::signer::{self as pb};

use super::shared::sig_reply;
use crate::commitment::{self};
use crate::error::SignerError;
use crate::policy::close as close_rules;
use crate::signer::Signer;
use crate::store::Store;
use crate::ChannelKeysId;

impl<S: Store> Signer<S> {
    pub(crate) fn sign_closing_transaction(
        &mut self,
        r: &pb::SignClosingTransactionRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        let funding = setup.funding()?;
        let mut tx = chan_utils::build_closing_transaction(
            Amount::from_sat(r.to_holder_value_sat),
            Amount::from_sat(r.to_counterparty_value_sat),
            ScriptBuf::from_bytes(r.to_holder_script.clone()),
            ScriptBuf::from_bytes(r.to_counterparty_script.clone()),
            funding,
        );
        tx.lock_time = LockTime::from_consensus(r.lock_time);
        close_rules::validate_close(tx.weight().to_wu(), &self.facts(), &id, record, setup, r)?;
        let sighash = commitment::funding_sighash(&tx, &params)?;
        if !record.closing_signed {
            let mut updated = record.clone();
            updated.closing_signed = true;
            self.commit_channel(id, updated, None)?;
        }
        Ok(sig_reply(
            self.sign(&sighash, &self.secrets(&id).funding_key),
        ))
    }
}
