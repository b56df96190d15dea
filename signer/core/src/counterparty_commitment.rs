//! The peer's commitment transaction (BOLT 3), built for our signature with
//! its keys derived from what the signer knows.
//!
//! LDK's `CommitmentTransaction::new` derives all five keys of a commitment
//! from public base points: the revocation key with two variable-base point
//! multiplications, the delayed-payment key and the two HTLC keys with one
//! multiplication of the generator each. On the peer's commitment the
//! revocation base point is ours: its half of the revocation key is our base
//! secret times a hash, one multiplication of the generator instead of a
//! variable-base one; the HTLC keys are needed only when the commitment has
//! HTLC outputs; and the keys from public inputs alone (`basepoint +
//! hash·G`) take one variable-time multiplication (nothing secret in it)
//! instead of a constant-time one and a point addition. At 0 HTLC that is
//! about half of the signing operation's CPU (the README's profile).
//!
//! The transaction is LDK's, output for output: in debug builds every
//! commitment built here is compared with LDK's builder (so every test that
//! signs a counterparty commitment checks it), and randomised tests compare
//! the two in release builds too.

use alloc::vec::Vec;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{All, Message, PublicKey, Scalar, Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{Amount, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use lightning::ln::chan_utils::{
    self, ChannelTransactionParameters, HTLCOutputInCommitment, TxCreationKeys,
};
use lightning::ln::channel_keys::{DelayedPaymentKey, HtlcKey, RevocationKey};
use lightning::types::features::ChannelTypeFeatures;

use crate::commitment::{self, Built, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::state::{CommitmentRecord, SetupRecord};
use crate::CommitmentNumber;

/// The peer's commitment, as the signer built it.
pub struct CounterpartyCommitment {
    /// The unsigned transaction.
    pub transaction: Transaction,
    /// Its txid.
    pub txid: Txid,
    /// The peer's per-commitment point it was built with.
    pub per_commitment_point: PublicKey,
    /// The revocation key (ours to use, once the peer revokes it).
    pub revocation_key: RevocationKey,
    /// The peer's delayed-payment key.
    pub delayed_payment_key: DelayedPaymentKey,
    /// The HTLC outputs in output order, each with its output index.
    pub htlcs: Vec<HTLCOutputInCommitment>,
    /// The peer's and our HTLC keys, derived only when there are HTLC
    /// outputs (their scripts and second-stage transactions need them).
    htlc_keys: Option<(HtlcKey, HtlcKey)>,
    /// What its second-stage HTLC transactions are built with: the
    /// feerate, the delay on the peer's outputs and the channel type.
    feerate_per_kw: u32,
    contest_delay: u16,
    features: ChannelTypeFeatures,
}

impl CounterpartyCommitment {
    /// What policy reads of it.
    pub fn built(&self) -> Built<'_> {
        Built {
            transaction: &self.transaction,
            revocation_key: &self.revocation_key,
            delayed_payment_key: &self.delayed_payment_key,
        }
    }

    /// All five keys in LDK's form, when there are HTLC outputs.
    pub fn keys(&self) -> Option<TxCreationKeys> {
        self.htlc_keys.map(|(theirs, ours)| {
            all_keys(
                self.per_commitment_point,
                self.revocation_key,
                self.delayed_payment_key,
                theirs,
                ours,
            )
        })
    }

    /// The second-stage HTLC transactions, each with the digest we sign
    /// (none without HTLCs), built with what the commitment was built with.
    pub fn htlc_sighashes(&self) -> Result<Vec<(Transaction, Message)>, SignerError> {
        let Some(keys) = self.keys() else {
            return Ok(Vec::new());
        };
        commitment::htlc_transactions(
            &self.txid,
            self.feerate_per_kw,
            self.contest_delay,
            &self.htlcs,
            &self.features,
            &keys,
        )
    }
}

/// The peer's commitment keys in LDK's form (the peer broadcasts).
fn all_keys(
    point: PublicKey,
    revocation_key: RevocationKey,
    delayed_payment_key: DelayedPaymentKey,
    their_htlc_key: HtlcKey,
    our_htlc_key: HtlcKey,
) -> TxCreationKeys {
    TxCreationKeys {
        per_commitment_point: point,
        revocation_key,
        broadcaster_htlc_key: their_htlc_key,
        countersignatory_htlc_key: our_htlc_key,
        broadcaster_delayed_payment_key: delayed_payment_key,
    }
}

fn hash(a: &PublicKey, b: &PublicKey) -> [u8; 32] {
    let mut e = sha256::Hash::engine();
    e.input(&a.serialize());
    e.input(&b.serialize());
    sha256::Hash::from_engine(e).to_byte_array()
}

fn scalar(h: [u8; 32]) -> Result<Scalar, SignerError> {
    Scalar::from_be_bytes(h).map_err(|_| SignerError::internal("a key tweak is out of range"))
}

/// BOLT 3's revocation key of the peer's commitment, from our revocation
/// base secret: `R·H(R‖P) + P·H(P‖R)`, with `R·H(R‖P)` computed as
/// `(r·H(R‖P))·G`.
pub fn revocation_key(
    secp: &Secp256k1<All>,
    our_base_secret: &SecretKey,
    our_basepoint: &PublicKey,
    their_point: &PublicKey,
) -> Result<RevocationKey, SignerError> {
    let ours = our_base_secret
        .mul_tweak(&scalar(hash(our_basepoint, their_point))?)
        .map_err(|_| SignerError::internal("revocation key tweak failed"))?;
    let theirs = their_point
        .mul_tweak(secp, &scalar(hash(their_point, our_basepoint))?)
        .map_err(|_| SignerError::internal("revocation key tweak failed"))?;
    PublicKey::from_secret_key(secp, &ours)
        .combine(&theirs)
        .map(RevocationKey)
        .map_err(|_| SignerError::internal("revocation key addition failed"))
}

/// BOLT 3's `basepoint + SHA256(per_commitment_point ‖ basepoint)·G` (the
/// delayed-payment and HTLC keys), in one variable-time multiplication of
/// the generator: every input is public.
pub fn derived_key(
    secp: &Secp256k1<All>,
    basepoint: &PublicKey,
    point: &PublicKey,
) -> Result<PublicKey, SignerError> {
    basepoint
        .add_exp_tweak(secp, &scalar(hash(point, basepoint))?)
        .map_err(|_| SignerError::internal("per-commitment key tweak failed"))
}

/// Builds the peer's commitment `data` of a set-up channel. The same checks
/// as [`commitment::rebuild`] refuse what cannot be built soundly; every
/// policy rule is the validator's. `our_revocation_base_secret` must be the
/// secret of `params`' holder revocation base point — both come from the
/// channel's own secrets (`ops/counterparty.rs`, the one caller): a
/// mismatched pair would yield a revocation key nobody can derive later.
pub(crate) fn build(
    params: &ChannelTransactionParameters,
    setup: &SetupRecord,
    data: &CommitmentRecord,
    our_revocation_base_secret: &SecretKey,
    secp: &Secp256k1<All>,
) -> Result<CounterpartyCommitment, SignerError> {
    let number = CommitmentNumber::new(data.commitment_number)?;
    let point = commitment::parse_pubkey("per_commitment_point", &data.per_commitment_point)?;
    let mut htlcs = commitment::buildable_htlcs(setup, data)?;
    let directed = params.as_counterparty_broadcastable();
    let features = directed.channel_type_features();
    if features.supports_anchor_zero_fee_commitments() {
        return Err(SignerError::invalid(
            "zero-fee commitment channels cannot be built",
        ));
    }
    let theirs = directed.broadcaster_pubkeys();
    let ours = directed.countersignatory_pubkeys();
    let revocation_key = revocation_key(
        secp,
        our_revocation_base_secret,
        &ours.revocation_basepoint.to_public_key(),
        &point,
    )?;
    let delayed_payment_key = DelayedPaymentKey(derived_key(
        secp,
        &theirs.delayed_payment_basepoint.to_public_key(),
        &point,
    )?);
    let htlc_keys = if htlcs.is_empty() {
        None
    } else {
        Some((
            HtlcKey(derived_key(
                secp,
                &theirs.htlc_basepoint.to_public_key(),
                &point,
            )?),
            HtlcKey(derived_key(
                secp,
                &ours.htlc_basepoint.to_public_key(),
                &point,
            )?),
        ))
    };

    // HTLC outputs first, in BOLT 3 order (value, script, then CLTV expiry;
    // the payment hash last, as LDK); a stable sort, like LDK's.
    let mut outputs: Vec<(TxOut, Option<usize>)> = Vec::with_capacity(htlcs.len() + 4);
    if let Some((theirs_htlc, ours_htlc)) = htlc_keys {
        let keys = &all_keys(
            point,
            revocation_key,
            delayed_payment_key,
            theirs_htlc,
            ours_htlc,
        );
        let mut with_outputs: Vec<(TxOut, HTLCOutputInCommitment)> = htlcs
            .drain(..)
            .map(|h| {
                let script = chan_utils::get_htlc_redeemscript(&h, features, keys).to_p2wsh();
                (
                    TxOut {
                        script_pubkey: script,
                        value: Amount::from_sat(h.amount_msat / 1000),
                    },
                    h,
                )
            })
            .collect();
        with_outputs.sort_by(|(oa, ha), (ob, hb)| {
            oa.value
                .cmp(&ob.value)
                .then_with(|| oa.script_pubkey.cmp(&ob.script_pubkey))
                .then_with(|| ha.cltv_expiry.cmp(&hb.cltv_expiry))
                .then_with(|| ha.payment_hash.cmp(&hb.payment_hash))
        });
        for (i, (o, h)) in with_outputs.into_iter().enumerate() {
            outputs.push((o, Some(i)));
            htlcs.push(h);
        }
    }
    let htlc_sum: Amount = htlcs
        .iter()
        .map(|h| Amount::from_sat(h.amount_msat / 1000))
        .sum();
    let has_htlcs = htlc_sum != Amount::ZERO;
    // Then the other outputs, each where (value, script) puts it.
    let mut insert = |o: TxOut| {
        let at = outputs
            .binary_search_by(|(e, _)| {
                e.value
                    .cmp(&o.value)
                    .then_with(|| e.script_pubkey.cmp(&o.script_pubkey))
            })
            .unwrap_or_else(|i| i);
        outputs.insert(at, (o, None));
    };
    let to_them = Amount::from_sat(data.to_broadcaster_value_sat);
    let to_us = Amount::from_sat(data.to_countersignatory_value_sat);
    let anchors = features.supports_anchors_zero_fee_htlc_tx();
    if to_us > Amount::ZERO {
        insert(TxOut {
            script_pubkey: chan_utils::get_countersigner_payment_script(
                features,
                &ours.payment_point,
            ),
            value: to_us,
        });
    }
    if to_them > Amount::ZERO {
        insert(TxOut {
            script_pubkey: chan_utils::get_revokeable_redeemscript(
                &revocation_key,
                directed.contest_delay(),
                &delayed_payment_key,
            )
            .to_p2wsh(),
            value: to_them,
        });
    }
    if anchors {
        let anchor = |key: &PublicKey| TxOut {
            script_pubkey: chan_utils::get_keyed_anchor_redeemscript(key).to_p2wsh(),
            value: Amount::from_sat(ANCHOR_OUTPUT_VALUE_SAT),
        };
        if to_them > Amount::ZERO || has_htlcs {
            insert(anchor(&theirs.funding_pubkey));
        }
        if to_us > Amount::ZERO || has_htlcs {
            insert(anchor(&ours.funding_pubkey));
        }
    }
    for (index, (_, tag)) in outputs.iter().enumerate() {
        if let Some(h) = tag.and_then(|i| htlcs.get_mut(i)) {
            h.transaction_output_index = Some(index as u32);
        }
    }

    let obscured = chan_utils::get_commitment_transaction_number_obscure_factor(
        &theirs.payment_point,
        &ours.payment_point,
        directed.is_outbound(),
    ) ^ number.0; // BOLT 3 obscures the number counting up from 0
    let transaction = Transaction {
        version: Version::TWO,
        lock_time: LockTime::from_consensus((0x20 << 24) | (obscured & 0xff_ffff) as u32),
        input: alloc::vec![TxIn {
            previous_output: directed.funding_outpoint(),
            script_sig: ScriptBuf::new(),
            sequence: Sequence((0x80 << 24) | (obscured >> 24) as u32),
            witness: Witness::new(),
        }],
        output: outputs.into_iter().map(|(o, _)| o).collect(),
    };
    let txid = transaction.compute_txid();
    let built = CounterpartyCommitment {
        transaction,
        txid,
        per_commitment_point: point,
        revocation_key,
        delayed_payment_key,
        htlcs,
        htlc_keys,
        feerate_per_kw: data.feerate_per_kw,
        contest_delay: directed.contest_delay(),
        features: features.clone(),
    };
    #[cfg(debug_assertions)]
    same_as_ldk(params, setup, data, &built, secp)?;
    Ok(built)
}

/// Whether `ours` is LDK's commitment for the same data: transaction,
/// keys and HTLC output indices (debug builds and tests).
#[cfg(any(debug_assertions, test))]
pub(crate) fn same_as_ldk(
    params: &ChannelTransactionParameters,
    setup: &SetupRecord,
    data: &CommitmentRecord,
    ours: &CounterpartyCommitment,
    secp: &Secp256k1<All>,
) -> Result<(), SignerError> {
    let ldk = commitment::rebuild(params, setup, false, data, secp)?;
    let trusted = ldk.tx.trust();
    let keys = trusted.keys();
    let same = trusted.built_transaction().transaction == ours.transaction
        && trusted.txid() == ours.txid
        && keys.revocation_key == ours.revocation_key
        && keys.broadcaster_delayed_payment_key == ours.delayed_payment_key
        && keys.per_commitment_point == ours.per_commitment_point
        && ours.keys().is_none_or(|k| &k == keys)
        && ldk.tx.nondust_htlcs() == &ours.htlcs;
    if same {
        Ok(())
    } else {
        Err(SignerError::internal(
            "the peer's commitment built by the signer differs from LDK's",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;
    use crate::state::{ChannelKind, HtlcRecord, HtlcSide, OutPointRecord};
    use crate::testing::Rng;
    use lightning::chain::transaction::OutPoint as LdkOutPoint;
    use lightning::ln::chan_utils::{ChannelPublicKeys, CounterpartyChannelTransactionParameters};
    use lightning::ln::channel_keys::{
        DelayedPaymentBasepoint, HtlcBasepoint, RevocationBasepoint,
    };

    fn key(rng: &mut Rng, secp: &Secp256k1<All>) -> (SecretKey, PublicKey) {
        loop {
            let mut b = [0u8; 32];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_be_bytes());
            }
            if let Ok(k) = SecretKey::from_slice(&b) {
                return (k, PublicKey::from_secret_key(secp, &k));
            }
        }
    }

    struct Case {
        params: ChannelTransactionParameters,
        setup: SetupRecord,
        data: CommitmentRecord,
        revocation_base_secret: SecretKey,
    }

    fn case(rng: &mut Rng, secp: &Secp256k1<All>) -> Case {
        let anchors = rng.below(2) == 0;
        let mut keys = || {
            let (_, funding) = key(rng, secp);
            let (_, payment) = key(rng, secp);
            let (_, delayed) = key(rng, secp);
            let (_, htlc) = key(rng, secp);
            (funding, payment, delayed, htlc)
        };
        let (f0, p0, d0, h0) = keys();
        let (mut f1, p1, d1, h1) = keys();
        if rng.below(16) == 0 {
            // One funding key on both sides: two anchors tie on (value, script).
            f1 = f0;
        }
        let (revocation_base_secret, ours_rev) = key(rng, secp);
        let (_, theirs_rev) = key(rng, secp);
        let pubkeys = |f, r: PublicKey, p, d: PublicKey, h: PublicKey| ChannelPublicKeys {
            funding_pubkey: f,
            revocation_basepoint: RevocationBasepoint::from(r),
            payment_point: p,
            delayed_payment_basepoint: DelayedPaymentBasepoint::from(d),
            htlc_basepoint: HtlcBasepoint::from(h),
        };
        let value_sat = 100_000 + rng.below(10_000_000);
        let is_outbound = rng.below(2) == 0;
        let vout = rng.below(4) as u32;
        let txid = bitcoin::Txid::from_byte_array([rng.below(256) as u8; 32]);
        let features = if anchors {
            lightning::types::features::ChannelTypeFeatures::anchors_zero_htlc_fee_and_dependencies(
            )
        } else {
            lightning::types::features::ChannelTypeFeatures::only_static_remote_key()
        };
        let holder_delay = 144 + rng.below(2000) as u16;
        let params = ChannelTransactionParameters {
            holder_pubkeys: pubkeys(f0, ours_rev, p0, d0, h0),
            holder_selected_contest_delay: holder_delay,
            is_outbound_from_holder: is_outbound,
            counterparty_parameters: Some(CounterpartyChannelTransactionParameters {
                pubkeys: pubkeys(f1, theirs_rev, p1, d1, h1),
                selected_contest_delay: 144 + rng.below(2000) as u16,
            }),
            funding_outpoint: Some(LdkOutPoint {
                txid,
                index: vout as u16,
            }),
            splice_parent_funding_txid: None,
            channel_type_features: features,
            channel_value_satoshis: value_sat,
        };
        let setup = SetupRecord {
            is_outbound,
            channel_value_sat: value_sat,
            funding_outpoint: Some(OutPointRecord {
                txid: txid.to_byte_array().to_vec(),
                vout,
            }),
            channel_type: if anchors {
                ChannelKind::AnchorsZeroFeeHtlcTx as i32
            } else {
                ChannelKind::StaticRemoteKey as i32
            },
            holder_selected_contest_delay: u32::from(holder_delay),
            ..Default::default()
        };
        // HTLCs: none in a third of the cases; values and expiries drawn
        // from small sets so that ties (same value, same expiry) occur.
        let n = match rng.below(3) {
            0 => 0,
            1 => 1 + rng.below(4),
            _ => rng.below(30),
        } as usize;
        let mut left = value_sat * 1000;
        let mut htlcs = Vec::new();
        for _ in 0..n {
            let amount_msat =
                [5_000_000, 5_000_000, 20_000_000, 1_234_567, 99_000][rng.below(5) as usize];
            if amount_msat > left {
                break;
            }
            left -= amount_msat;
            let hash_byte = rng.below(4) as u8;
            htlcs.push(HtlcRecord {
                direction: if rng.below(2) == 0 {
                    HtlcSide::Offered as i32
                } else {
                    HtlcSide::Received as i32
                },
                amount_msat,
                cltv_expiry: 500 + rng.below(3) as u32,
                payment_hash: alloc::vec![hash_byte; 32],
            });
        }
        let fee_room = left / 1000;
        let anchors_sat = if anchors {
            2 * ANCHOR_OUTPUT_VALUE_SAT
        } else {
            0
        };
        let spendable = fee_room.saturating_sub(anchors_sat + 10_000);
        // Zero, random, or the value of an HTLC or an anchor (ties on
        // value between an HTLC or anchor and a main output).
        let mut main = |room: u64| match rng.below(6) {
            0 => 0,
            1 => 5_000.min(room),
            2 => ANCHOR_OUTPUT_VALUE_SAT.min(room),
            _ => rng.below(room.max(1)),
        };
        let to_broadcaster = main(spendable);
        let to_countersignatory = main(spendable - to_broadcaster);
        let (_, point) = key(rng, secp);
        let data = CommitmentRecord {
            commitment_number: match rng.below(8) {
                // Near the last number BOLT 3 allows (2^48 - 1).
                0 => (1u64 << 48) - 1 - rng.below(1000),
                _ => rng.below(1 << 20),
            },
            feerate_per_kw: 253 + rng.below(5000) as u32,
            to_broadcaster_value_sat: to_broadcaster,
            to_countersignatory_value_sat: to_countersignatory,
            htlcs,
            per_commitment_point: point.serialize().to_vec(),
            transaction: Vec::new(),
        };
        Case {
            params,
            setup,
            data,
            revocation_base_secret,
        }
    }

    /// Thousands of commitments of both channel types, with and without
    /// HTLCs (some sharing value, expiry and hash), a zero output on either
    /// side, both funders: each built here and by LDK, and compared.
    #[test]
    fn the_peers_commitment_is_ldks() {
        let secp = Secp256k1::new();
        let mut rng = Rng::new(0x5eed_1234_abcd_0001);
        let (mut compared, mut with_htlcs, mut refused) = (0, 0, 0);
        for i in 0..2000 {
            let c = case(&mut rng, &secp);
            let ours = build(
                &c.params,
                &c.setup,
                &c.data,
                &c.revocation_base_secret,
                &secp,
            );
            let ldk = commitment::rebuild(&c.params, &c.setup, false, &c.data, &secp);
            match (ours, ldk) {
                (Ok(ours), Ok(_)) => {
                    same_as_ldk(&c.params, &c.setup, &c.data, &ours, &secp)
                        .unwrap_or_else(|e| panic!("case {i}: {e}"));
                    compared += 1;
                    if !ours.htlcs.is_empty() {
                        with_htlcs += 1;
                        // The HTLC transactions too.
                        let ldk = commitment::rebuild(&c.params, &c.setup, false, &c.data, &secp)
                            .unwrap();
                        let want = commitment::htlc_sighashes(
                            &ldk.tx,
                            c.params.as_counterparty_broadcastable().contest_delay(),
                        )
                        .unwrap();
                        let got = ours.htlc_sighashes().unwrap();
                        assert_eq!(got, want, "case {i}");
                    }
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.message, b.message, "case {i}");
                    refused += 1;
                }
                (a, b) => panic!(
                    "case {i}: one builder refused: ours {:?}, LDK's {:?}",
                    a.err().map(|e| e.message),
                    b.err().map(|e| e.message)
                ),
            }
        }
        assert!(
            compared > 1400 && with_htlcs > 700 && refused > 0,
            "{compared} compared, {with_htlcs} with HTLCs, {refused} refused"
        );
    }

    #[test]
    fn the_keys_are_bolt3s() {
        let secp = Secp256k1::new();
        for i in 1u8..40 {
            let base = SecretKey::from_slice(&[i; 32]).unwrap();
            let basepoint = PublicKey::from_secret_key(&secp, &base);
            let point =
                PublicKey::from_secret_key(&secp, &SecretKey::from_slice(&[i + 100; 32]).unwrap());
            assert_eq!(
                revocation_key(&secp, &base, &basepoint, &point).unwrap(),
                RevocationKey::from_basepoint(&secp, &RevocationBasepoint::from(basepoint), &point)
            );
            let derived = derived_key(&secp, &basepoint, &point).unwrap();
            assert_eq!(
                DelayedPaymentKey(derived),
                DelayedPaymentKey::from_basepoint(
                    &secp,
                    &DelayedPaymentBasepoint::from(basepoint),
                    &point
                )
            );
            assert_eq!(
                HtlcKey(derived),
                HtlcKey::from_basepoint(&secp, &HtlcBasepoint::from(basepoint), &point)
            );
        }
    }
}
