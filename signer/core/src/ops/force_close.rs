//! Signatures that spend a channel's outputs once a commitment is on
//! chain: second-stage HTLC transactions of our commitment, HTLC claims on
//! the peer's, justice on a revoked one, and our anchor (CPFP). Each
//! rebuilds or proves what it spends, then runs `policy::sweep`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use bitcoin::secp256k1::{PublicKey, SecretKey};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{Amount, OutPoint, Transaction, TxOut};
use lightning::ln::chan_utils::{
    self, HTLCOutputInCommitment, TrustedCommitmentTransaction, TxCreationKeys,
};
use lnpd_proto::signer::{self as pb};

use super::shared::{input_index, sig_reply, to_transaction};
use crate::commitment::{self, p2wsh_sighash, parse_32, parse_pubkey, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::keys::payment_hash;
use crate::policy::onchain::SecondStage;
use crate::policy::sweep::{
    decode_proofs, revoked_commitment, validate_holder_htlc_spend, validate_justice,
    validate_output_spend, HolderHtlcSpend, JusticeSpend, OutputSpend, Prevouts,
};
use crate::policy::RuleId;
use crate::revocation::{commitment_number_of, counterparty_secrets, known_secret};
use crate::signer::Signer;
use crate::store::Store;
use crate::ChannelKeysId;

/// Witness weight of a 2-of-2 funding input (two signatures, the script).
const FUNDING_WITNESS_WEIGHT: u64 = 222;

fn find_htlc<'a>(
    htlcs: &'a [HTLCOutputInCommitment],
    wanted: &HTLCOutputInCommitment,
) -> Option<&'a HTLCOutputInCommitment> {
    htlcs.iter().find(|h| {
        h.offered == wanted.offered
            && h.amount_msat == wanted.amount_msat
            && h.cltv_expiry == wanted.cltv_expiry
            && h.payment_hash == wanted.payment_hash
    })
}

/// The one HTLC a request names.
fn wanted_htlc(htlc: Option<&pb::Htlc>) -> Result<HTLCOutputInCommitment, SignerError> {
    lnpd_proto::ldk::parse_htlcs(&pb::CommitmentData {
        htlcs: htlc.into_iter().cloned().collect(),
        ..Default::default()
    })?
    .into_iter()
    .next()
    .ok_or_else(|| SignerError::invalid("missing htlc"))
}

/// The parts of a justice request both kinds share.
struct Justice<'a> {
    channel_keys_id: &'a [u8],
    tx: Option<&'a pb::UnsignedTx>,
    input_index: u32,
    secret: &'a [u8],
    previous_txs: &'a [Vec<u8>],
}

/// The transactions a request proves, and the outputs they hold.
fn proven(raw: &[Vec<u8>]) -> Result<(Vec<Transaction>, Prevouts), SignerError> {
    let txs = decode_proofs(raw)?;
    let mut prevouts = Prevouts::default();
    for tx in &txs {
        prevouts.add_tx(tx);
    }
    Ok((txs, prevouts))
}

/// BOLT 3's second-stage transaction of `htlc` on our commitment `rebuilt`.
fn holder_htlc_tx(
    rebuilt: &commitment::Rebuilt,
    params: &lightning::ln::chan_utils::ChannelTransactionParameters,
    htlc: &HTLCOutputInCommitment,
) -> Transaction {
    let trusted = rebuilt.tx.trust();
    chan_utils::build_htlc_transaction(
        &trusted.txid(),
        rebuilt.tx.negotiated_feerate_per_kw(),
        params.as_holder_broadcastable().contest_delay(),
        htlc,
        trusted.channel_type_features(),
        &trusted.keys().broadcaster_delayed_payment_key,
        &trusted.keys().revocation_key,
    )
}

impl<S: Store> Signer<S> {
    /// The HTLC outputs of the holder commitments the signer signed for
    /// broadcast (force closes of ours), each with the output its BOLT 3
    /// second-stage transaction pays us: rebuilt from the channel's record,
    /// so that a wallet input paying for that transaction's fee needs no
    /// word of the node on what it spends or where it pays.
    pub(crate) fn broadcast_holder_htlcs(&self) -> BTreeMap<OutPoint, SecondStage> {
        let mut known = BTreeMap::new();
        for (id, record) in &self.channels {
            let Some(number) = record
                .holder_signed_number
                .and(record.holder.as_ref())
                .and_then(|h| h.commitment.as_ref())
                .map(|c| c.commitment_number)
            else {
                continue;
            };
            let Ok((rebuilt, params)) = self.latest_holder(id, number) else {
                continue;
            };
            let trusted = rebuilt.tx.trust();
            let commitment_tx = &trusted.built_transaction().transaction;
            let txid = trusted.txid();
            for htlc in rebuilt.tx.nondust_htlcs() {
                let Some(vout) = htlc.transaction_output_index else {
                    continue;
                };
                let Some(htlc_output) = commitment_tx.output.get(vout as usize) else {
                    continue;
                };
                let second = holder_htlc_tx(&rebuilt, &params, htlc);
                let Some(pays) = second.output.first() else {
                    continue;
                };
                known.insert(
                    OutPoint::new(txid, vout),
                    SecondStage {
                        channel: *id,
                        htlc_output: htlc_output.clone(),
                        pays: pays.clone(),
                    },
                );
            }
        }
        known
    }

    pub(crate) fn sign_holder_htlc_transaction(
        &self,
        r: &pb::SignHolderHtlcTransactionRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (rebuilt, params) = self.latest_holder(&id, r.commitment_number)?;
        let setup = self.set_up_channel(&id)?.1;
        let anchors = setup.is_anchors();
        let trusted = rebuilt.tx.trust();
        let htlc = rebuilt
            .tx
            .nondust_htlcs()
            .iter()
            .find(|h| h.transaction_output_index == Some(r.htlc_output_index))
            .ok_or_else(|| {
                SignerError::invalid(format!(
                    "no HTLC at output {} of holder commitment",
                    r.htlc_output_index
                ))
            })?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let expected = holder_htlc_tx(&rebuilt, &params, htlc);
        let (_, mut proofs) = proven(&r.previous_txs)?;
        proofs.add_tx(&trusted.built_transaction().transaction);
        validate_holder_htlc_spend(
            &HolderHtlcSpend {
                expected: &expected,
                tx: &tx,
                input: i,
                offered: htlc.offered,
                anchors,
                proofs: &proofs,
            },
            &self.facts(),
        )?;
        if !htlc.offered {
            let preimage = parse_32("preimage", &r.preimage)?;
            if payment_hash(&preimage) != htlc.payment_hash {
                return Err(SignerError::invalid(
                    "preimage does not match the HTLC's payment hash",
                ));
            }
        }
        self.sign_htlc_spend(&id, &tx, i, htlc, &trusted)
    }

    pub(crate) fn sign_counterparty_htlc_sweep(
        &self,
        r: &pb::SignCounterpartyHtlcSweepRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        let point = parse_pubkey("per_commitment_point", &r.per_commitment_point)?;
        let data = [&record.counterparty, &record.counterparty_previous]
            .into_iter()
            .flatten()
            .find(|c| c.per_commitment_point[..] == point.serialize()[..])
            .ok_or_else(|| {
                SignerError::precondition(format!(
                    "channel {id}: no signed counterparty commitment with that point"
                ))
            })?;
        let wanted = wanted_htlc(r.htlc.as_ref())?;
        let rebuilt = commitment::rebuild(&params, setup, false, data, &self.secp)?;
        let trusted = rebuilt.tx.trust();
        let htlc = find_htlc(rebuilt.tx.nondust_htlcs(), &wanted).ok_or_else(|| {
            SignerError::invalid("that HTLC is not in the counterparty commitment")
        })?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let outpoint = OutPoint {
            txid: trusted.txid(),
            vout: htlc.transaction_output_index.unwrap_or(u32::MAX),
        };
        let (_, mut proofs) = proven(&r.previous_txs)?;
        proofs.add_tx(&trusted.built_transaction().transaction);
        validate_output_spend(
            &OutputSpend {
                tx: &tx,
                input: i,
                spends: outpoint,
                rule: RuleId::HtlcFormat,
                what: "that HTLC output",
                proofs: &proofs,
                parent_weight: 0,
                at_stake_sat: None,
            },
            &self.facts(),
        )?;
        self.sign_htlc_spend(&id, &tx, i, htlc, &trusted)
    }

    /// Signs input `i` of `tx`, spending `htlc` of the commitment `trusted`
    /// with our HTLC key for that commitment's point (SIGHASH_ALL).
    fn sign_htlc_spend(
        &self,
        id: &ChannelKeysId,
        tx: &Transaction,
        i: usize,
        htlc: &HTLCOutputInCommitment,
        trusted: &TrustedCommitmentTransaction<'_>,
    ) -> Result<pb::SignatureReply, SignerError> {
        let keys = trusted.keys();
        let script = chan_utils::get_htlc_redeemscript(htlc, trusted.channel_type_features(), keys);
        let msg = p2wsh_sighash(
            tx,
            i,
            &script,
            htlc.amount_msat / 1000,
            EcdsaSighashType::All,
        )?;
        let key = crate::keys::derive_private_key(
            &keys.per_commitment_point,
            &self.secrets(id).htlc_base_key,
            &self.holder_pubkeys(id).htlc_basepoint.to_public_key(),
        )?;
        Ok(sig_reply(self.sign_low_r(&msg, &key)))
    }

    /// A justice transaction's input `i`: the revoked commitment it leads
    /// to (proven by the request) and the secret the peer revealed for it,
    /// judged by `validate_justice`; then the keys of that state, our
    /// revocation key, and the output spent.
    fn justice(
        &self,
        id: &ChannelKeysId,
        tx: &Transaction,
        i: usize,
        secret: &[u8],
        previous_txs: &[Vec<u8>],
    ) -> Result<(TxCreationKeys, SecretKey, TxOut), SignerError> {
        let (record, setup, params) = self.set_up_channel(id)?;
        let (txs, proofs) = proven(previous_txs)?;
        let funding = setup.funding()?;
        let revoked = revoked_commitment(tx, i, &txs, &funding)?;
        let ours = params.holder_pubkeys.payment_point;
        let theirs = params
            .counterparty_pubkeys()
            .ok_or_else(|| SignerError::internal("no counterparty keys"))?
            .payment_point;
        let (funder, fundee) = if setup.is_outbound {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
        let n = commitment_number_of(revoked, &funder, &fundee).ok_or_else(|| {
            SignerError::invalid("the revoked commitment does not carry a commitment number")
        })?;
        let given = parse_32("per_commitment_secret", secret)?;
        let spent = validate_justice(
            &JusticeSpend {
                tx,
                input: i,
                given_secret: &given,
                revealed_secret: known_secret(&counterparty_secrets(record)?, n),
                proofs: &proofs,
            },
            &self.facts(),
        )?;
        let per_commitment_key = SecretKey::from_slice(&given)
            .map_err(|_| SignerError::invalid("per-commitment secret is not a valid key"))?;
        let point = PublicKey::from_secret_key(&self.secp, &per_commitment_key);
        let cp = params
            .counterparty_pubkeys()
            .ok_or_else(|| SignerError::internal("no counterparty keys"))?;
        let keys = TxCreationKeys::from_channel_static_keys(
            &point,
            cp,
            &params.holder_pubkeys,
            &self.secp,
        );
        let revocation_key = chan_utils::derive_private_revocation_key(
            &self.secp,
            &per_commitment_key,
            &self.secrets(id).revocation_base_key,
        );
        Ok((keys, revocation_key, spent))
    }

    pub(crate) fn sign_justice_revoked_output(
        &self,
        r: &pb::SignJusticeRevokedOutputRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let justice = Justice {
            channel_keys_id: &r.channel_keys_id,
            tx: r.tx.as_ref(),
            input_index: r.input_index,
            secret: &r.per_commitment_secret,
            previous_txs: &r.previous_txs,
        };
        self.sign_justice(&justice, "a revocable output", |keys, params| {
            Ok(chan_utils::get_revokeable_redeemscript(
                &keys.revocation_key,
                params.holder_selected_contest_delay,
                &keys.broadcaster_delayed_payment_key,
            ))
        })
    }

    pub(crate) fn sign_justice_revoked_htlc(
        &self,
        r: &pb::SignJusticeRevokedHtlcRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let htlc = wanted_htlc(r.htlc.as_ref())?;
        let justice = Justice {
            channel_keys_id: &r.channel_keys_id,
            tx: r.tx.as_ref(),
            input_index: r.input_index,
            secret: &r.per_commitment_secret,
            previous_txs: &r.previous_txs,
        };
        self.sign_justice(&justice, "that HTLC output", |keys, params| {
            Ok(chan_utils::get_htlc_redeemscript(
                &htlc,
                &params.channel_type_features,
                keys,
            ))
        })
    }

    /// Signs a justice input whose witness script `script` builds from the
    /// revoked state's keys; the spent output must be that script's.
    fn sign_justice(
        &self,
        j: &Justice,
        what: &str,
        script: impl FnOnce(
            &TxCreationKeys,
            &lightning::ln::chan_utils::ChannelTransactionParameters,
        ) -> Result<bitcoin::ScriptBuf, SignerError>,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(j.channel_keys_id)?;
        let tx = to_transaction(j.tx)?;
        let i = input_index(&tx, j.input_index)?;
        let (keys, revocation_key, spent) = self.justice(&id, &tx, i, j.secret, j.previous_txs)?;
        let (_, _, params) = self.set_up_channel(&id)?;
        let script = script(&keys, &params)?;
        if spent.script_pubkey != script.to_p2wsh() {
            return Err(SignerError::invalid(format!(
                "the justice input does not spend {what} of the revoked commitment"
            )));
        }
        let msg = p2wsh_sighash(&tx, i, &script, spent.value.to_sat(), EcdsaSighashType::All)?;
        Ok(sig_reply(self.sign_low_r(&msg, &revocation_key)))
    }

    pub(crate) fn sign_holder_anchor_input(
        &self,
        r: &pb::SignHolderAnchorInputRequest,
    ) -> Result<pb::SignatureReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (record, setup, params) = self.set_up_channel(&id)?;
        if !setup.is_anchors() {
            return Err(SignerError::invalid("channel has no anchors"));
        }
        let number = record
            .holder_number()
            .ok_or_else(|| SignerError::precondition("no validated holder commitment"))?;
        let value_sat = setup.channel_value_sat;
        let (rebuilt, _) = self.latest_holder(&id, number)?;
        let script =
            chan_utils::get_keyed_anchor_redeemscript(&params.holder_pubkeys.funding_pubkey);
        let spk = script.to_p2wsh();
        let built = &rebuilt.tx.trust().built_transaction().transaction;
        let vout = built
            .output
            .iter()
            .position(|o| o.script_pubkey == spk)
            .ok_or_else(|| {
                SignerError::precondition("latest holder commitment has no anchor of ours")
            })?;
        let tx = to_transaction(r.tx.as_ref())?;
        let i = input_index(&tx, r.input_index)?;
        let outpoint = OutPoint {
            txid: built.compute_txid(),
            vout: vout as u32,
        };
        let (_, mut proofs) = proven(&r.previous_txs)?;
        proofs.add(
            outpoint,
            TxOut {
                value: Amount::from_sat(ANCHOR_OUTPUT_VALUE_SAT),
                script_pubkey: spk,
            },
        );
        // The child pays for the commitment too: the package's weight.
        let parent_weight = built.weight().to_wu() + FUNDING_WITNESS_WEIGHT;
        validate_output_spend(
            &OutputSpend {
                tx: &tx,
                input: i,
                spends: outpoint,
                rule: RuleId::CommitmentAnchors,
                what: "our anchor of the latest holder commitment",
                proofs: &proofs,
                parent_weight,
                at_stake_sat: Some(value_sat),
            },
            &self.facts(),
        )?;
        let msg = p2wsh_sighash(
            &tx,
            i,
            &script,
            ANCHOR_OUTPUT_VALUE_SAT,
            EcdsaSighashType::All,
        )?;
        Ok(sig_reply(
            self.sign_low_r(&msg, &self.secrets(&id).funding_key),
        ))
    }
}
