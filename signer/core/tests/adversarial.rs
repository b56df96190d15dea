//! Randomized adversarial test of the fund-safety invariants
//! (docs/threat-model.md, I1-I4).
//!
//! A compromised node and colluding peers drive a real signer core through
//! seeded random walks: honest protocol steps (payments both ways, forwards,
//! settlements, failures, fee changes, funding proofs, closes) mixed with
//! attacks (mutated and replayed requests, balance shifts, commitments of
//! ours the peer countersigns whatever they say, trimmed-value drains,
//! closes, wallet spends, sweeps and justice with lies in them, forged
//! set-ups, garbage). After every request the signer accepted, the test
//! computes from everything the signer has signed so far the worst case for
//! the operator and checks it against the invariants, with its own
//! bookkeeping, not the signer's:
//!
//! - I2: what the operator can still claim, whichever signed transaction
//!   the attacker confirms (unrevoked commitments of the peer, our latest
//!   commitment, closes), plus incoming HTLCs that pay for forwards, is at
//!   least the channels' funding less the payments the controls allow (the
//!   velocity limit), the fees at the highest feerate and the trimmed-value
//!   budgets;
//! - I3: every HTLC we offer, wherever it first appears, expires within the
//!   window, and one that is not a forward the test itself can justify is at
//!   most `max_payment_sat` per payment hash;
//! - I1: every wallet transaction signed pays only the wallet or a channel we
//!   fund, at its outpoint, with a bounded fee;
//! - I4: every sweep pays the wallet with a bounded fee on the true amounts;
//!   a justice signature needs the secret the peer revealed.
//!
//! The suite runs a fixed set of seeds. A longer run:
//!
//! ```sh
//! LNPD_ADVERSARIAL_SEEDS=500 LNPD_ADVERSARIAL_STEPS=400 \
//!     cargo test --release -p lnpd-signer --test adversarial -- --nocapture
//! ```
//!
//! (`LNPD_ADVERSARIAL_FIRST_SEED` picks where the seeds start.) A violation
//! prints the seed and the shortest sequence of actions that still breaks
//! the invariant.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, CompressedPublicKey, Network, OutPoint, Psbt,
    ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use lnpd_proto::signer::{self as pb, reply, request};
use lnpd_signer_core::commitment::commitment_fee_sat;
use lnpd_signer_core::keys::KeyRing;
use lnpd_signer_core::state::SetupRecord;
use lnpd_signer_core::testing::{
    memory_signer, ChannelPair, Colluder, PairOptions, Rng, SharedSigner, SignerHandle, TestChain,
    TestHtlc,
};
use lnpd_signer_core::{call, PolicyConfig, Seed, SignerError};
use prost::Message;

const CHANNELS: usize = 4;
const CHANNEL_SAT: u64 = 1_000_000;
/// What Alice pushes the peer at open (so payments flow both ways at once).
const PUSH_SAT: u64 = 300_000;
const NOW: u64 = 1_700_000_000;

fn policy() -> PolicyConfig {
    PolicyConfig {
        max_payment_sat: Some(150_000),
        velocity_limit_sat: Some(400_000),
        velocity_window_secs: 100 * 365 * 86_400,
        routing_balanced: true,
        min_feerate_per_kw: 253,
        max_feerate_per_kw: 5_000,
        max_dust_exposure_sat: 5_000,
        max_trimmed_loss_sat: 10_000,
        max_onchain_feerate_per_kw: 5_000,
        max_htlc_cltv_window: 1_000,
        allow_push: true,
        ..Default::default()
    }
}

/// One step of the walk. Parameters are interpreted against the world as
/// it is when the step runs, so any subsequence replays deterministically.
#[derive(Clone, Debug)]
enum Action {
    Pay {
        ch: usize,
        sat: u64,
    },
    Receive {
        ch: usize,
        sat: u64,
    },
    Settle {
        ch: usize,
        nth: usize,
    },
    Fail {
        ch: usize,
        nth: usize,
    },
    Forward {
        from: usize,
        to: usize,
        nth: usize,
        fee_sat: u64,
    },
    Feerate {
        ch: usize,
        feerate: u32,
    },
    Prove {
        ch: usize,
    },
    Close {
        ch: usize,
        fee_sat: u64,
    },
    HolderExtra {
        ch: usize,
        htlc_sat: u64,
        expiry_ahead: u32,
        to_peer_sat: u64,
    },
    CounterpartyShift {
        ch: usize,
        sat: u64,
    },
    CounterpartyMutate {
        ch: usize,
        field: u8,
        value: u64,
    },
    TrimmedDrain {
        ch: usize,
        sat: u64,
    },
    Replay {
        index: usize,
    },
    CloseSteal {
        ch: usize,
        ours_sat: u64,
        fee_sat: u64,
        stranger: bool,
    },
    PsbtFund {
        ch: usize,
        delta_sat: i64,
        twice: bool,
        stranger_sat: u64,
    },
    Withdraw {
        fee_sat: u64,
        stranger: bool,
    },
    SweepBurn {
        fee_rate: u32,
        understate_sat: u64,
        stranger: bool,
    },
    Justice {
        ch: usize,
        wrong_secret: bool,
        fee_sat: u64,
    },
    SignHolder {
        ch: usize,
    },
    Garbage {
        len: usize,
        seed: u64,
    },
    SetupForged {
        ch: usize,
        field: u8,
    },
    ReleaseAhead {
        ch: usize,
    },
}

fn random_action(r: &mut Rng) -> Action {
    let ch = r.below(CHANNELS as u64) as usize;
    match r.below(100) {
        0..=15 => Action::Pay {
            ch,
            sat: 1_000 + r.below(120_000),
        },
        16..=27 => Action::Receive {
            ch,
            sat: 1_000 + r.below(200_000),
        },
        28..=37 => Action::Settle {
            ch,
            nth: r.below(8) as usize,
        },
        38..=42 => Action::Fail {
            ch,
            nth: r.below(8) as usize,
        },
        43..=50 => Action::Forward {
            from: ch,
            to: (ch + 1 + r.below(CHANNELS as u64 - 1) as usize) % CHANNELS,
            nth: r.below(8) as usize,
            fee_sat: r.below(2_000),
        },
        51..=53 => Action::Feerate {
            ch,
            feerate: 253 + r.below(6_000) as u32,
        },
        54..=56 => Action::Prove { ch },
        57 => Action::Close {
            ch,
            fee_sat: 500 + r.below(8_000),
        },
        58..=60 => {
            let shift = r.below(3) == 0;
            Action::HolderExtra {
                ch,
                htlc_sat: if shift { 0 } else { 1_000 + r.below(300_000) },
                expiry_ahead: [10, 500, 900, 5_000, 500_000][r.below(5) as usize],
                to_peer_sat: if shift { 1 + r.below(100_000) } else { 0 },
            }
        }
        61..=64 => Action::CounterpartyShift {
            ch,
            sat: 1 + r.below(200_000),
        },
        65..=70 => Action::CounterpartyMutate {
            ch,
            field: r.below(8) as u8,
            value: r.next(),
        },
        71..=74 => Action::TrimmedDrain {
            ch,
            sat: 1 + r.below(6_000),
        },
        75..=79 => Action::Replay {
            index: r.next() as usize,
        },
        80..=82 => Action::CloseSteal {
            ch,
            ours_sat: r.below(CHANNEL_SAT),
            fee_sat: r.below(200_000),
            stranger: r.below(2) == 0,
        },
        83..=85 => Action::PsbtFund {
            ch,
            delta_sat: r.below(3) as i64 - 1,
            twice: r.below(3) == 0,
            stranger_sat: r.below(2) * r.below(50_000),
        },
        86 => Action::Withdraw {
            fee_sat: [500, 2_000, 80_000][r.below(3) as usize],
            stranger: r.below(3) == 0,
        },
        87..=88 => Action::SweepBurn {
            fee_rate: [1_000, 5_000, 50_000][r.below(3) as usize],
            understate_sat: r.below(2) * r.below(90_000),
            stranger: r.below(4) == 0,
        },
        89..=91 => Action::Justice {
            ch,
            wrong_secret: r.below(2) == 0,
            fee_sat: [1_000, 50_000, 250_000][r.below(3) as usize],
        },
        92 => Action::SignHolder { ch },
        93..=95 => Action::Garbage {
            len: r.below(300) as usize,
            seed: r.next(),
        },
        96..=97 => Action::SetupForged {
            ch,
            field: r.below(5) as u8,
        },
        _ => Action::ReleaseAhead { ch },
    }
}

/// Alice's signer as the node reaches it: every request and every answer
/// it gave are kept for the oracle.
#[derive(Clone)]
struct Observed {
    alice: SharedSigner,
    accepted: Rc<RefCell<Vec<(request::Body, reply::Body)>>>,
    sent: Rc<RefCell<Vec<request::Body>>>,
}

impl SignerHandle for Observed {
    fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        self.sent.borrow_mut().push(body.clone());
        let r = self.alice.borrow_mut().handle(body.clone());
        if let Ok(rep) = &r {
            self.accepted.borrow_mut().push((body, rep.clone()));
        }
        r
    }
    fn state_digest(&self) -> Option<Vec<u8>> {
        Some(self.alice.borrow().state_digest())
    }
    fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        let results = self.alice.borrow_mut().handle_batch(bodies.clone());
        for (b, r) in bodies.into_iter().zip(&results) {
            self.sent.borrow_mut().push(b.clone());
            if let Ok(rep) = r {
                self.accepted.borrow_mut().push((b, rep.clone()));
            }
        }
        Ok(results)
    }
}

/// Everything the test runs against.
struct World {
    observed: Observed,
    pairs: Vec<ChannelPair>,
    broken: Vec<bool>,
    peers: Vec<Colluder>,
    chain: TestChain,
    policy: PolicyConfig,
    keys: KeyRing,
    secp: Secp256k1<bitcoin::secp256k1::All>,
    next_tag: u8,
    /// Wallet coins the test made up: outpoint -> value.
    coins: BTreeMap<OutPoint, u64>,
    /// Outputs of made-up transactions the test proved to the signer.
    proven_outputs: BTreeMap<OutPoint, u64>,
    /// Oracle: HTLC instances we offered already counted, per channel.
    oracle: Oracle,
}

/// An HTLC as the oracle keys it: payment hash, msat, expiry.
type HtlcKey = (Vec<u8>, u64, u32);

/// An HTLC of a live transaction: (offered by us, hash, msat, expiry).
type LiveHtlc = (bool, Vec<u8>, u64, u32);

#[derive(Default)]
struct Oracle {
    /// How many of each of our offered HTLCs the live commitments of each
    /// channel held, at the last check.
    outgoing: BTreeMap<usize, BTreeMap<HtlcKey, usize>>,
    /// Cover each incoming HTLC gave forwards (channel, key) -> msat.
    covered: BTreeMap<(usize, HtlcKey), u64>,
    /// Own payments by payment hash (msat), as the oracle counts them.
    own_by_hash: BTreeMap<Vec<u8>, u64>,
    /// Accepted requests already looked at.
    seen: usize,
}

fn wpkh(pk: &PublicKey) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(*pk).wpubkey_hash())
}

impl World {
    fn new() -> Self {
        let alice: SharedSigner = Rc::new(RefCell::new(memory_signer(1, policy())));
        alice.borrow_mut().set_time(NOW);
        let observed = Observed {
            alice,
            accepted: Rc::default(),
            sent: Rc::default(),
        };
        let mut chain = TestChain::default();
        chain.mine_empty(100);
        let mut obs = observed.clone();
        chain.feed(&mut obs).expect("chain fed");
        let pairs = (0..CHANNELS)
            .map(|i| {
                ChannelPair::open(
                    Box::new(observed.clone()),
                    Box::new(memory_signer(2 + i as u8, PolicyConfig::default())),
                    PairOptions {
                        value_sat: CHANNEL_SAT,
                        push_msat: PUSH_SAT * 1000,
                        ..Default::default()
                    },
                )
                .expect("channel opens")
            })
            .collect();
        let secp = Secp256k1::new();
        let keys =
            KeyRing::from_seed(&Seed::new(vec![1; 32]).unwrap(), Network::Regtest, &secp).unwrap();
        World {
            observed,
            pairs,
            broken: vec![false; CHANNELS],
            peers: (0..CHANNELS).map(|i| Colluder::new(2 + i as u8)).collect(),
            chain,
            policy: policy(),
            keys,
            secp,
            next_tag: 1,
            coins: BTreeMap::new(),
            proven_outputs: BTreeMap::new(),
            oracle: Oracle::default(),
        }
    }

    fn tag(&mut self) -> u8 {
        let t = self.next_tag;
        self.next_tag = if t >= 250 { 1 } else { t + 1 };
        t
    }

    fn alice(&mut self) -> &mut Observed {
        &mut self.observed
    }

    /// An Alice wallet script (chain, index).
    fn wallet_script(&self, chain: u32, index: u32) -> ScriptBuf {
        let k = self.keys.wallet_key(&self.secp, chain, index).unwrap();
        wpkh(&PublicKey::from_secret_key(&self.secp, &k))
    }

    fn is_alice_wallet(&self, s: &bitcoin::Script) -> bool {
        (0..2).any(|c| (0..200).any(|i| self.wallet_script(c, i).as_script() == s))
    }

    fn stranger(&self) -> ScriptBuf {
        wpkh(&PublicKey::from_secret_key(
            &self.secp,
            &SecretKey::from_slice(&[3; 32]).unwrap(),
        ))
    }

    /// Runs one action; refusals are expected, errors of the test's own
    /// bookkeeping break a channel for honest steps.
    fn run(&mut self, a: &Action) {
        let usable = |w: &World, ch: usize| !w.broken[ch];
        match a.clone() {
            Action::Pay { ch, sat } if usable(self, ch) => {
                let tag = self.tag();
                let p = &mut self.pairs[ch];
                if p.alice_msat / 1000 > sat + 20_000 {
                    if let Err(e) = p.offer(sat * 1000, tag) {
                        if e.rule.is_none() {
                            self.broken[ch] = true;
                        }
                    }
                }
            }
            Action::Receive { ch, sat } if usable(self, ch) => {
                let tag = self.tag();
                let p = &mut self.pairs[ch];
                if p.bob_msat / 1000 > sat + 1_000 && p.add_htlc_from_bob(sat * 1000, tag).is_err()
                {
                    self.broken[ch] = true;
                }
            }
            Action::Settle { ch, nth } | Action::Fail { ch, nth } if usable(self, ch) => {
                let p = &mut self.pairs[ch];
                if p.htlcs.is_empty() {
                    return;
                }
                let h = p.htlcs[nth % p.htlcs.len()].clone();
                let r = if matches!(a, Action::Settle { .. }) {
                    p.settle_htlc(&h)
                } else {
                    p.fail_htlc(&h)
                };
                if r.is_err() {
                    self.broken[ch] = true;
                }
            }
            Action::Forward {
                from,
                to,
                nth,
                fee_sat,
            } if usable(self, to) => {
                let incoming: Vec<TestHtlc> = self.pairs[from]
                    .htlcs
                    .iter()
                    .filter(|h| !h.offered_by_alice)
                    .cloned()
                    .collect();
                if incoming.is_empty() {
                    return;
                }
                let h = &incoming[nth % incoming.len()];
                let amount = h.amount_msat.saturating_sub(fee_sat * 1000);
                let p = &mut self.pairs[to];
                if amount < 1_000_000 || p.alice_msat < amount + 20_000_000 {
                    return;
                }
                // Same preimage, our own expiry (earlier than the incoming).
                let fwd = TestHtlc {
                    offered_by_alice: true,
                    amount_msat: amount,
                    cltv_expiry: h.cltv_expiry - 100,
                    preimage: h.preimage,
                };
                p.alice_msat -= amount;
                p.htlcs.push(fwd.clone());
                if let Err(e) = p.advance() {
                    p.htlcs.retain(|x| x != &fwd);
                    p.alice_msat += amount;
                    if e.rule.is_none() {
                        self.broken[to] = true;
                    }
                }
            }
            Action::Feerate { ch, feerate } if usable(self, ch) => {
                let p = &mut self.pairs[ch];
                let old = p.feerate_per_kw;
                p.feerate_per_kw = feerate;
                if let Err(e) = p.advance() {
                    p.feerate_per_kw = old;
                    if e.rule.is_none() {
                        self.broken[ch] = true;
                    }
                }
            }
            Action::Prove { ch } => {
                let _ = self.pairs[ch].prove_funding(&mut self.chain, 3);
            }
            Action::Close { ch, fee_sat } if usable(self, ch) => {
                let p = &mut self.pairs[ch];
                if p.htlcs.is_empty() && p.close(fee_sat).is_ok() {
                    self.broken[ch] = true;
                }
            }
            Action::HolderExtra {
                ch,
                htlc_sat,
                expiry_ahead,
                to_peer_sat,
            } => {
                let height = self.chain.height();
                let p = &mut self.pairs[ch];
                let mut data = match p.commitment_data(true, p.number + 1) {
                    Ok(d) => d,
                    Err(_) => return,
                };
                let extra_fee = commitment_fee_sat(data.feerate_per_kw, data.htlcs.len() + 1, true)
                    - commitment_fee_sat(data.feerate_per_kw, data.htlcs.len(), true);
                if htlc_sat > 0 && data.to_broadcaster_value_sat > htlc_sat + extra_fee + 10_000 {
                    data.to_broadcaster_value_sat -= htlc_sat + extra_fee;
                    data.htlcs.push(pb::Htlc {
                        direction: pb::HtlcDirection::Offered as i32,
                        amount_msat: htlc_sat * 1000,
                        cltv_expiry: height + expiry_ahead,
                        payment_hash: sha256::Hash::hash(&expiry_ahead.to_be_bytes())
                            .to_byte_array()
                            .to_vec(),
                    });
                }
                let moved = to_peer_sat.min(data.to_broadcaster_value_sat.saturating_sub(10_000));
                data.to_broadcaster_value_sat -= moved;
                data.to_countersignatory_value_sat += moved;
                let Ok(req) = self.peers[ch].validation_request(p, true, data) else {
                    return;
                };
                let r =
                    call!(self.observed, ValidateHolderCommitment(req) => ValidateHolderCommitment);
                if r.is_ok() {
                    self.broken[ch] = true;
                }
            }
            Action::CounterpartyShift { ch, sat } => {
                self.signed_counterparty(ch, |_, c| {
                    let moved = sat.min(c.to_countersignatory_value_sat);
                    c.to_countersignatory_value_sat -= moved;
                    c.to_broadcaster_value_sat += moved;
                });
            }
            Action::TrimmedDrain { ch, sat } => {
                self.signed_counterparty(ch, |_, c| {
                    c.to_countersignatory_value_sat =
                        c.to_countersignatory_value_sat.saturating_sub(sat);
                });
            }
            Action::CounterpartyMutate { ch, field, value } => {
                let height = self.chain.height();
                self.signed_counterparty(ch, |_, c| match field {
                    0 => c.feerate_per_kw = (value % 20_000) as u32,
                    1 => c.to_countersignatory_value_sat = value % CHANNEL_SAT,
                    2 => {
                        if let Some(h) = c.htlcs.first_mut() {
                            h.amount_msat = value % (CHANNEL_SAT * 1000);
                        }
                    }
                    3 => {
                        if let Some(h) = c.htlcs.first_mut() {
                            h.cltv_expiry = height + (value % 3_000) as u32;
                        }
                    }
                    4 => c.commitment_number = c.commitment_number.wrapping_add(value % 3),
                    5 => c.htlcs.push(pb::Htlc {
                        direction: pb::HtlcDirection::Received as i32,
                        amount_msat: (value % 300_000) * 1000 + 1_000_000,
                        cltv_expiry: height + 200,
                        payment_hash: value.to_be_bytes().repeat(4),
                    }),
                    6 => {
                        if let Some(h) = c.htlcs.first_mut() {
                            h.direction = 1 - h.direction;
                        }
                    }
                    _ => c.htlcs.clear(),
                });
            }
            Action::Replay { index } => {
                let sent = self.observed.sent.borrow().clone();
                if !sent.is_empty() {
                    let body = sent[index % sent.len()].clone();
                    let _ = self.alice().handle(body);
                }
            }
            Action::CloseSteal {
                ch,
                ours_sat,
                fee_sat,
                stranger,
            } => {
                let ours = if stranger {
                    self.stranger()
                } else {
                    self.wallet_script(0, 150)
                };
                let p = &self.pairs[ch];
                let theirs_sat = CHANNEL_SAT.saturating_sub(ours_sat + fee_sat);
                let req = pb::SignClosingTransactionRequest {
                    channel_keys_id: p.alice.keys_id.clone(),
                    to_holder_value_sat: ours_sat,
                    to_counterparty_value_sat: theirs_sat,
                    to_holder_script: ours.to_bytes(),
                    to_counterparty_script: self.stranger().to_bytes(),
                    lock_time: 0,
                };
                if call!(self.observed, SignClosingTransaction(req) => Signature).is_ok() {
                    self.broken[ch] = true;
                }
            }
            Action::PsbtFund {
                ch,
                delta_sat,
                twice,
                stranger_sat,
            } => {
                let mut outputs = vec![];
                let mut f = self.pairs[ch].funding_output();
                f.value = Amount::from_sat((f.value.to_sat() as i64 + delta_sat) as u64);
                outputs.push(f.clone());
                if twice {
                    outputs.push(f);
                }
                if stranger_sat > 0 {
                    outputs.push(TxOut {
                        value: Amount::from_sat(stranger_sat),
                        script_pubkey: self.stranger(),
                    });
                }
                let req = self.wallet_psbt(outputs, 2_500_000);
                let _ = call!(self.observed, SignPsbt(req) => SignPsbt);
            }
            Action::Withdraw { fee_sat, stranger } => {
                let to = if stranger {
                    self.stranger()
                } else {
                    self.wallet_script(0, 160)
                };
                let req = self.wallet_psbt(
                    vec![TxOut {
                        value: Amount::from_sat(100_000 - fee_sat),
                        script_pubkey: to,
                    }],
                    100_000,
                );
                let _ = call!(self.observed, SignPsbt(req) => SignPsbt);
            }
            Action::SweepBurn {
                fee_rate,
                understate_sat,
                stranger,
            } => {
                let ch = 0;
                let point =
                    PublicKey::from_slice(&self.pairs[ch].alice.pubkeys.payment_point).unwrap();
                let script =
                    lightning::ln::chan_utils::get_to_countersigner_keyed_anchor_redeemscript(
                        &point,
                    )
                    .to_p2wsh();
                let prev = self.made_up_tx(TxOut {
                    value: Amount::from_sat(100_000),
                    script_pubkey: script.clone(),
                });
                let outpoint = OutPoint {
                    txid: prev.compute_txid(),
                    vout: 0,
                };
                self.proven_outputs.insert(outpoint, 100_000);
                let change = if stranger {
                    self.stranger()
                } else {
                    self.wallet_script(0, 151)
                };
                let req = pb::SpendSpendableOutputsRequest {
                    descriptors: vec![pb::SpendableOutput {
                        outpoint: Some(pb::OutPoint {
                            txid: outpoint.txid.to_byte_array().to_vec(),
                            vout: 0,
                        }),
                        output: Some(pb::TxOut {
                            value_sat: 100_000 - understate_sat,
                            script_pubkey: script.to_bytes(),
                        }),
                        previous_tx: bitcoin::consensus::serialize(&prev),
                        kind: Some(pb::spendable_output::Kind::StaticPayment(
                            pb::StaticPaymentOutput {
                                channel_keys_id: self.pairs[ch].alice.keys_id.clone(),
                            },
                        )),
                    }],
                    outputs: vec![],
                    change_script: change.to_bytes(),
                    feerate_sat_per_kw: fee_rate,
                    lock_time: None,
                };
                let _ = call!(self.observed, SpendSpendableOutputs(req) => SpendSpendableOutputs);
            }
            Action::Justice {
                ch,
                wrong_secret,
                fee_sat,
            } => self.justice(ch, wrong_secret, fee_sat),
            Action::SignHolder { ch } => {
                let p = &self.pairs[ch];
                let req = pb::SignHolderCommitmentRequest {
                    channel_keys_id: p.alice.keys_id.clone(),
                    commitment_number: p.number,
                };
                if call!(self.observed, SignHolderCommitment(req) => Signature).is_ok() {
                    // The node force-closes: no more updates on this channel.
                    self.broken[ch] = true;
                }
            }
            Action::Garbage { len, seed } => {
                let mut r = Rng::new(seed);
                let bytes: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
                match pb::Request::decode(&bytes[..]) {
                    Ok(pb::Request { body: Some(b), .. }) => {
                        let _ = self.alice().handle(b);
                    }
                    _ => {
                        let _ = self.observed.alice.borrow_mut().handle_bytes(&bytes);
                    }
                }
            }
            Action::SetupForged { ch, field } => {
                let mut s = self.pairs[ch].alice.setup.clone();
                match field {
                    0 => s.channel_keys_id = vec![0x44; 32],
                    1 => s.is_outbound = !s.is_outbound,
                    2 => s.push_msat = 500_000_000,
                    3 => s.channel_value_sat += 1,
                    _ => {
                        // Another channel with this one's outpoint.
                        if let Ok(r) = call!(self.observed, NewChannelKeysId(pb::NewChannelKeysIdRequest::default()) => NewChannelKeysId)
                        {
                            s.channel_keys_id = r.channel_keys_id;
                        }
                    }
                }
                let _ = call!(self.observed, SetupChannel(s) => SetupChannel);
            }
            Action::ReleaseAhead { ch } => {
                let p = &self.pairs[ch];
                let req = pb::ReleaseCommitmentSecretRequest {
                    channel_keys_id: p.alice.keys_id.clone(),
                    commitment_number: p.number,
                };
                let _ =
                    call!(self.observed, ReleaseCommitmentSecret(req) => ReleaseCommitmentSecret);
            }
            _ => {}
        }
    }

    /// Has Alice sign the peer's next commitment after `change`, with the
    /// transaction rebuilt to match (so the change reaches the state rules).
    fn signed_counterparty(
        &mut self,
        ch: usize,
        change: impl FnOnce(&ChannelPair, &mut pb::CommitmentData),
    ) {
        let p = &mut self.pairs[ch];
        let Ok(mut req) = lnpd_signer_core::testing::next_counterparty_request(p) else {
            return;
        };
        if let Some(c) = req.commitment.as_mut() {
            change(p, c);
            c.transaction = p.built_transaction(false, c);
        }
        if call!(self.observed, SignCounterpartyCommitment(req) => SignCounterpartyCommitment)
            .is_ok()
        {
            // The peer's next state is no longer the pair's: honest steps stop.
            self.broken[ch] = true;
        }
    }

    fn made_up_tx(&mut self, out: TxOut) -> Transaction {
        let tag = self.tag();
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_byte_array([tag; 32]),
                    vout: u32::from(tag),
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![out],
        }
    }

    /// A PSBT spending a fresh wallet coin of `coin_sat` to `outputs`.
    fn wallet_psbt(&mut self, outputs: Vec<TxOut>, coin_sat: u64) -> pb::SignPsbtRequest {
        let key = self.keys.wallet_key(&self.secp, 0, 0).unwrap();
        let pk = CompressedPublicKey(PublicKey::from_secret_key(&self.secp, &key));
        let prev = self.made_up_tx(TxOut {
            value: Amount::from_sat(coin_sat),
            script_pubkey: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()),
        });
        let outpoint = OutPoint {
            txid: prev.compute_txid(),
            vout: 0,
        };
        self.coins.insert(outpoint, coin_sat);
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: outputs,
        };
        let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
        psbt.inputs[0].non_witness_utxo = Some(prev.clone());
        psbt.inputs[0].witness_utxo = Some(prev.output[0].clone());
        psbt.inputs[0].bip32_derivation.insert(
            pk.0,
            (
                self.keys.master_fingerprint(),
                "m/84'/1'/0'/0/0".parse().unwrap(),
            ),
        );
        pb::SignPsbtRequest {
            psbt: psbt.serialize(),
        }
    }

    /// A justice attempt on a commitment of the peer's that Alice signed
    /// (revoked or not), spending its largest output.
    fn justice(&mut self, ch: usize, wrong_secret: bool, fee_sat: u64) {
        let id = self.pairs[ch].alice.keys_id.clone();
        let signed: Vec<pb::CommitmentData> = self
            .observed
            .accepted
            .borrow()
            .iter()
            .filter_map(|(q, _)| match q {
                request::Body::SignCounterpartyCommitment(r) if r.channel_keys_id == id => {
                    r.commitment.clone()
                }
                _ => None,
            })
            .collect();
        let Some(data) = signed.first() else { return };
        let n = data.commitment_number;
        let tx: Transaction = match bitcoin::consensus::deserialize(&data.transaction) {
            Ok(t) => t,
            Err(_) => return,
        };
        // Bob's to_local: the output holding the broadcaster's balance.
        let Some((vout, out)) = tx
            .output
            .iter()
            .enumerate()
            .find(|(_, o)| o.value.to_sat() == data.to_broadcaster_value_sat)
        else {
            return;
        };
        let p = &mut self.pairs[ch];
        let secret = if wrong_secret {
            vec![0x42; 32]
        } else {
            match call!(p.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
                channel_keys_id: p.bob.keys_id.clone(), commitment_number: n,
            }) => ReleaseCommitmentSecret)
            {
                Ok(r) => r.secret,
                Err(_) => return,
            }
        };
        let value = out.value.to_sat();
        self.proven_outputs.insert(
            OutPoint {
                txid: tx.compute_txid(),
                vout: vout as u32,
            },
            value,
        );
        let req = pb::SignJusticeRevokedOutputRequest {
            channel_keys_id: id,
            tx: Some(pb::UnsignedTx {
                version: 2,
                lock_time: 0,
                inputs: vec![pb::TxIn {
                    previous_output: Some(pb::OutPoint {
                        txid: tx.compute_txid().to_byte_array().to_vec(),
                        vout: vout as u32,
                    }),
                    sequence: 0xffff_fffd,
                }],
                outputs: vec![pb::TxOut {
                    value_sat: value.saturating_sub(fee_sat),
                    script_pubkey: self.wallet_script(0, 152).to_bytes(),
                }],
            }),
            input_index: 0,
            amount_sat: value,
            per_commitment_secret: secret,
            previous_txs: vec![data.transaction.clone()],
            ..Default::default()
        };
        let _ = call!(self.observed, SignJusticeRevokedOutput(req) => Signature);
    }
}

/// Per channel, what the signer has committed to, rebuilt from its
/// accepted requests alone.
#[derive(Default, Clone)]
struct ChannelView {
    counterparty: BTreeMap<u64, pb::CommitmentData>,
    revoked: BTreeSet<u64>,
    holder: Option<pb::CommitmentData>,
    holder_signed: Vec<pb::CommitmentData>,
    closes: Vec<pb::SignClosingTransactionRequest>,
    proven: bool,
}

impl World {
    /// Checks I1-I4 on everything accepted so far; the error says which
    /// invariant broke and how.
    fn check(&mut self) -> Result<(), String> {
        let accepted = self.observed.accepted.borrow().clone();
        let ids: Vec<Vec<u8>> = self.pairs.iter().map(|p| p.alice.keys_id.clone()).collect();
        let index = |id: &[u8]| ids.iter().position(|x| x == id);
        let mut views: Vec<ChannelView> = vec![ChannelView::default(); CHANNELS];
        for (i, (req, rep)) in accepted.iter().enumerate() {
            let fresh = i >= self.oracle.seen;
            match (req, rep) {
                (
                    request::Body::SignCounterpartyCommitment(r),
                    reply::Body::SignCounterpartyCommitment(s),
                ) => {
                    let Some(ch) = index(&r.channel_keys_id) else {
                        continue;
                    };
                    let Some(c) = r.commitment.clone() else {
                        continue;
                    };
                    if fresh {
                        self.verify_counterparty_signature(ch, &c, &s.signature)?;
                    }
                    views[ch].counterparty.insert(c.commitment_number, c);
                }
                (request::Body::ValidateCounterpartyRevocation(r), _) => {
                    if let Some(ch) = index(&r.channel_keys_id) {
                        views[ch].revoked.insert(r.commitment_number);
                    }
                }
                (
                    request::Body::ValidateHolderCommitment(r),
                    reply::Body::ValidateHolderCommitment(v),
                ) => {
                    if v.parked {
                        continue;
                    }
                    if let (Some(ch), Some(c)) = (index(&r.channel_keys_id), r.commitment.clone()) {
                        views[ch].holder = Some(c);
                    }
                }
                (request::Body::SignHolderCommitment(r), _) => {
                    if let Some(ch) = index(&r.channel_keys_id) {
                        if let Some(h) = views[ch].holder.clone() {
                            if h.commitment_number == r.commitment_number {
                                views[ch].holder_signed.push(h);
                            }
                        }
                    }
                }
                (request::Body::SignClosingTransaction(r), _) => {
                    if let Some(ch) = index(&r.channel_keys_id) {
                        views[ch].closes.push(r.clone());
                    }
                }
                (request::Body::ProveFunding(r), _) => {
                    if let Some(ch) = index(&r.channel_keys_id) {
                        views[ch].proven = true;
                    }
                }
                (request::Body::SignPsbt(r), reply::Body::SignPsbt(_)) if fresh => {
                    self.check_psbt(r)?;
                }
                (
                    request::Body::SpendSpendableOutputs(_),
                    reply::Body::SpendSpendableOutputs(t),
                ) if fresh => {
                    self.check_sweep(&t.transaction)?;
                }
                (request::Body::SignJusticeRevokedOutput(r), _) if fresh => {
                    self.check_justice(r, &views)?;
                }
                _ => {}
            }
        }
        self.oracle.seen = accepted.len();
        self.check_htlcs(&views)?;
        self.check_balance(&views)
    }

    /// The signature on a counterparty commitment is over the transaction
    /// the data describes with the keys the test knows (not another one).
    fn verify_counterparty_signature(
        &self,
        ch: usize,
        c: &pb::CommitmentData,
        sig: &[u8],
    ) -> Result<(), String> {
        let p = &self.pairs[ch];
        let raw = p.built_transaction(false, c);
        let tx: Transaction = bitcoin::consensus::deserialize(&raw)
            .map_err(|_| format!("I2: channel {ch}: signed a commitment that does not build"))?;
        let a = PublicKey::from_slice(&p.alice.pubkeys.funding_pubkey).unwrap();
        let b = PublicKey::from_slice(&p.bob.pubkeys.funding_pubkey).unwrap();
        let script = lightning::ln::chan_utils::make_funding_redeemscript(&a, &b);
        let h = SighashCache::new(&tx)
            .p2wsh_signature_hash(
                0,
                &script,
                Amount::from_sat(CHANNEL_SAT),
                EcdsaSighashType::All,
            )
            .map_err(|e| e.to_string())?;
        let sig =
            bitcoin::secp256k1::ecdsa::Signature::from_compact(sig).map_err(|e| e.to_string())?;
        self.secp
            .verify_ecdsa(&bitcoin::secp256k1::Message::from_digest(h.to_byte_array()), &sig, &a)
            .map_err(|_| {
                format!("I2: channel {ch}: the signature is not over the commitment the request describes")
            })
    }

    /// The live commitments of a channel, each with what it pays Alice
    /// (her main output) and its HTLCs as (ours, hash, msat, expiry).
    fn live(&self, v: &ChannelView) -> Vec<(u64, Vec<LiveHtlc>)> {
        let mut out = Vec::new();
        let htlcs = |c: &pb::CommitmentData, holder: bool| {
            c.htlcs
                .iter()
                .map(|h| {
                    let offered = h.direction == pb::HtlcDirection::Offered as i32;
                    (
                        offered == holder,
                        h.payment_hash.clone(),
                        h.amount_msat,
                        h.cltv_expiry,
                    )
                })
                .collect::<Vec<_>>()
        };
        for (n, c) in &v.counterparty {
            if !v.revoked.contains(n) {
                out.push((c.to_countersignatory_value_sat, htlcs(c, false)));
            }
        }
        for c in v.holder.iter().chain(&v.holder_signed) {
            out.push((c.to_broadcaster_value_sat, htlcs(c, true)));
        }
        for c in &v.closes {
            let ours = if self.is_alice_wallet(bitcoin::Script::from_bytes(&c.to_holder_script)) {
                c.to_holder_value_sat
            } else {
                0
            };
            out.push((ours, Vec::new()));
        }
        out
    }

    /// I3: every HTLC we offer, new to the live commitments, expires within
    /// the window; one the test cannot justify as a forward is a payment of
    /// our own, at most `max_payment_sat` per payment hash.
    fn check_htlcs(&mut self, views: &[ChannelView]) -> Result<(), String> {
        let height = self.chain.height();
        let window = self.policy.max_htlc_cltv_window;
        let max_msat = self.policy.max_payment_sat.unwrap_or(u64::MAX) * 1000;
        let delta = self.policy.forward_min_cltv_delta;
        for (ch, v) in views.iter().enumerate() {
            let live = self.live(v);
            let mut now: BTreeMap<(Vec<u8>, u64, u32), usize> = BTreeMap::new();
            for (_, htlcs) in &live {
                let mut here: BTreeMap<(Vec<u8>, u64, u32), usize> = BTreeMap::new();
                for (ours, hash, msat, exp) in htlcs {
                    if *ours {
                        *here.entry((hash.clone(), *msat, *exp)).or_insert(0) += 1;
                    }
                }
                for (k, n) in here {
                    let e = now.entry(k).or_insert(0);
                    *e = (*e).max(n);
                }
            }
            let before = self.oracle.outgoing.get(&ch).cloned().unwrap_or_default();
            for (k, n) in &now {
                let had = before.get(k).copied().unwrap_or(0);
                for _ in had..*n {
                    let (hash, msat, exp) = k;
                    if *exp > height + window {
                        return Err(format!(
                            "I3: channel {ch}: an HTLC we offer expires at {exp}, the chain is at {height} (window {window})"
                        ));
                    }
                    // A forward the test can justify: an incoming HTLC with
                    // the hash, irrevocable on a proven channel, expiring
                    // later, with cover left.
                    let cover = views.iter().enumerate().find_map(|(a, av)| {
                        if a == ch || !av.proven {
                            return None;
                        }
                        let alive = self.live(av);
                        let first = alive.first()?;
                        first.1.iter().find_map(|(ours, h, m, e)| {
                            let in_all = alive.iter().all(|(_, hs)| {
                                hs.iter()
                                    .any(|x| !x.0 && x.1 == *h && x.2 == *m && x.3 == *e)
                            });
                            let key = (a, (h.clone(), *m, *e));
                            let used = self.oracle.covered.get(&key).copied().unwrap_or(0);
                            (!*ours
                                && h == hash
                                && in_all
                                && *e >= exp + delta
                                && m.saturating_sub(used) >= *msat)
                                .then_some(key)
                        })
                    });
                    match cover {
                        Some(key) => *self.oracle.covered.entry(key).or_insert(0) += msat,
                        None => {
                            let own = self.oracle.own_by_hash.entry(hash.clone()).or_insert(0);
                            *own += msat;
                            if *own > max_msat {
                                return Err(format!(
                                    "I3: channel {ch}: payments of {own} msat for one payment hash, limit {max_msat} msat"
                                ));
                            }
                        }
                    }
                }
            }
            self.oracle.outgoing.insert(ch, now);
        }
        Ok(())
    }

    /// I2: the worst case over the signed transactions that could confirm.
    fn check_balance(&self, views: &[ChannelView]) -> Result<(), String> {
        let policy = &self.policy;
        let mut worst_total: u64 = 0;
        let mut allowance: u64 = policy.velocity_limit_sat.unwrap_or(0);
        let mut forwarded_in: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut forwarded_out: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for (ch, v) in views.iter().enumerate() {
            let live = self.live(v);
            let worst = live
                .iter()
                .map(|(pay, _)| *pay)
                .min()
                .unwrap_or(CHANNEL_SAT);
            worst_total += worst;
            let anchors = SetupRecord::from_wire(&self.pairs[ch].alice.setup).is_anchors();
            let most_htlcs = live.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
            allowance += commitment_fee_sat(policy.max_feerate_per_kw, most_htlcs, anchors)
                + 660
                + 5_000
                + 2 * policy.max_trimmed_loss_sat
                + 10
                + 2 * most_htlcs as u64;
            // Incoming HTLCs in every live transaction of a proven channel
            // pay for forwards of the same hash.
            if v.proven {
                if let Some((_, first)) = live.first() {
                    for (ours, h, m, e) in first {
                        let in_all = live.iter().all(|(_, hs)| {
                            hs.iter()
                                .any(|x| !x.0 && x.1 == *h && x.2 == *m && x.3 == *e)
                        });
                        if !*ours && in_all {
                            *forwarded_in.entry(h.clone()).or_insert(0) += m / 1000;
                        }
                    }
                }
            }
            let mut most: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for (_, hs) in &live {
                let mut here: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
                for (ours, h, m, _) in hs {
                    if *ours {
                        *here.entry(h.clone()).or_insert(0) += m / 1000;
                    }
                }
                for (h, s) in here {
                    let e = most.entry(h).or_insert(0);
                    *e = (*e).max(s);
                }
            }
            for (h, s) in most {
                *forwarded_out.entry(h).or_insert(0) += s;
            }
        }
        let claimable: u64 = forwarded_in
            .iter()
            .map(|(h, i)| (*i).min(forwarded_out.get(h).copied().unwrap_or(0)))
            .sum();
        let funded = (CHANNEL_SAT - PUSH_SAT) * CHANNELS as u64;
        let have = worst_total + claimable;
        if have + allowance < funded {
            return Err(format!(
                "I2: the operator can claim {have} sat in the worst case of {funded} sat funded; \
                 at most {allowance} sat may go (payments, fees, trimmed budgets)"
            ));
        }
        Ok(())
    }

    /// I1: a signed wallet transaction pays the wallet or a channel we fund
    /// at its outpoint, with a bounded fee on the true amounts.
    fn check_psbt(&self, r: &pb::SignPsbtRequest) -> Result<(), String> {
        let psbt = Psbt::deserialize(&r.psbt).map_err(|e| e.to_string())?;
        let tx = &psbt.unsigned_tx;
        let txid = tx.compute_txid();
        for (i, o) in tx.output.iter().enumerate() {
            if self.is_alice_wallet(&o.script_pubkey) {
                continue;
            }
            let funds = self
                .pairs
                .iter()
                .find(|p| p.funding_output().script_pubkey == o.script_pubkey);
            let Some(p) = funds else {
                return Err(format!(
                    "I1: output {i} of a signed wallet transaction pays a stranger"
                ));
            };
            let at = p.alice.setup.funding_outpoint.as_ref().unwrap();
            if at.txid != txid.to_byte_array().to_vec()
                || at.vout as usize != i
                || !p.alice.setup.is_outbound
            {
                return Err(
                    "I1: a signed wallet transaction funds a channel elsewhere than its outpoint"
                        .to_string(),
                );
            }
        }
        let in_sat: u64 = tx
            .input
            .iter()
            .map(|i| self.coins.get(&i.previous_output).copied().unwrap_or(0))
            .sum();
        let out_sat: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        let weight = tx.weight().to_wu() + 108 * tx.input.len() as u64;
        let most = self.policy.max_onchain_feerate_per_kw as u64 * weight / 1000;
        if in_sat < out_sat || in_sat - out_sat > most {
            return Err(format!(
                "I1: a signed wallet transaction pays {} sat in fees (at most {most})",
                in_sat.saturating_sub(out_sat)
            ));
        }
        Ok(())
    }

    /// I4: a signed sweep pays the wallet, with a bounded fee on the true amounts.
    fn check_sweep(&self, raw: &[u8]) -> Result<(), String> {
        let tx: Transaction = bitcoin::consensus::deserialize(raw).map_err(|e| e.to_string())?;
        for o in &tx.output {
            if !self.is_alice_wallet(&o.script_pubkey) {
                return Err("I4: a signed sweep pays a stranger".into());
            }
        }
        let in_sat: u64 = tx
            .input
            .iter()
            .map(|i| {
                self.proven_outputs
                    .get(&i.previous_output)
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        let out_sat: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        let fee = in_sat.saturating_sub(out_sat);
        let most = (self.policy.max_onchain_feerate_per_kw as u64 * (tx.weight().to_wu() + 300)
            / 1000)
            .min(in_sat * self.policy.max_sweep_fee_percent / 100);
        if fee > most {
            return Err(format!(
                "I4: a signed sweep pays {fee} sat in fees of {in_sat} sat (at most {most})"
            ));
        }
        Ok(())
    }

    /// I4: justice only for a commitment the peer revoked, with the secret
    /// it revealed for it, paying the wallet with a bounded fee.
    fn check_justice(
        &mut self,
        r: &pb::SignJusticeRevokedOutputRequest,
        views: &[ChannelView],
    ) -> Result<(), String> {
        let ch = self
            .pairs
            .iter()
            .position(|p| p.alice.keys_id == r.channel_keys_id)
            .ok_or("I4: justice on an unknown channel")?;
        let tx = r.tx.as_ref().ok_or("no tx")?;
        let spent = tx
            .inputs
            .first()
            .and_then(|i| i.previous_output.as_ref())
            .ok_or("no input")?;
        let n = views[ch]
            .counterparty
            .iter()
            .find(|(_, c)| {
                bitcoin::consensus::deserialize::<Transaction>(&c.transaction)
                    .is_ok_and(|t| t.compute_txid().to_byte_array()[..] == spent.txid[..])
            })
            .map(|(n, _)| *n)
            .ok_or("I4: justice on a transaction that is no commitment the signer signed")?;
        if !views[ch].revoked.contains(&n) {
            return Err(format!(
                "I4: justice on counterparty commitment #{n}, which the peer never revoked"
            ));
        }
        let p = &mut self.pairs[ch];
        let revealed =
            call!(p.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: p.bob.keys_id.clone(), commitment_number: n,
        }) => ReleaseCommitmentSecret)
            .map_err(|e| format!("the peer's secret #{n}: {e}"))?
            .secret;
        if r.per_commitment_secret != revealed {
            return Err(format!(
                "I4: justice on #{n} signed with another secret than the peer revealed"
            ));
        }
        for o in &tx.outputs {
            if !self.is_alice_wallet(bitcoin::Script::from_bytes(&o.script_pubkey)) {
                return Err("I4: justice pays a stranger".into());
            }
        }
        let outpoint = OutPoint {
            txid: Txid::from_slice(&spent.txid).map_err(|e| e.to_string())?,
            vout: spent.vout,
        };
        let in_sat = self.proven_outputs.get(&outpoint).copied().unwrap_or(0);
        let out_sat: u64 = tx.outputs.iter().map(|o| o.value_sat).sum();
        let most = in_sat * self.policy.max_sweep_fee_percent / 100;
        if in_sat.saturating_sub(out_sat) > most {
            return Err(format!(
                "I4: justice burns {} sat of {in_sat} sat in fees",
                in_sat.saturating_sub(out_sat)
            ));
        }
        Ok(())
    }
}

/// Runs `actions` on a fresh world; the first violation, with its step.
fn replay(actions: &[Action]) -> Result<(), (usize, String)> {
    let mut w = World::new();
    w.check().map_err(|e| (0, e))?;
    for (i, a) in actions.iter().enumerate() {
        w.run(a);
        w.check().map_err(|e| (i, e))?;
    }
    Ok(())
}

/// The shortest subsequence (greedily) that still violates an invariant.
fn shrink(mut actions: Vec<Action>) -> Vec<Action> {
    let mut i = 0;
    while i < actions.len() {
        let mut fewer = actions.clone();
        fewer.remove(i);
        if replay(&fewer).is_err() {
            actions = fewer;
        } else {
            i += 1;
        }
    }
    actions
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_walks_keep_the_invariants() {
    let seeds = env_u64("LNPD_ADVERSARIAL_SEEDS", 20);
    let steps = env_u64("LNPD_ADVERSARIAL_STEPS", 200) as usize;
    let first = env_u64("LNPD_ADVERSARIAL_FIRST_SEED", 1);
    let mut refused_total = 0usize;
    let mut accepted_total = 0usize;
    let mut broken_total = 0usize;
    let mut stats: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for seed in first..first + seeds {
        let mut rng = Rng::new(seed);
        let actions: Vec<Action> = (0..steps).map(|_| random_action(&mut rng)).collect();
        let mut w = World::new();
        let mut failed = None;
        for (i, a) in actions.iter().enumerate() {
            let (sent0, acc0) = (
                w.observed.sent.borrow().len(),
                w.observed.accepted.borrow().len(),
            );
            w.run(a);
            let (sent1, acc1) = (
                w.observed.sent.borrow().len(),
                w.observed.accepted.borrow().len(),
            );
            let name = format!("{a:?}");
            let name = name.split([' ', '{']).next().unwrap_or("?").to_string();
            let e = stats.entry(name).or_insert((0usize, 0usize));
            e.0 += acc1 - acc0;
            e.1 += (sent1 - sent0) - (acc1 - acc0);
            if let Err(e) = w.check() {
                failed = Some((i, e));
                break;
            }
        }
        broken_total += w.broken.iter().filter(|b| **b).count();
        if let Some((step, why)) = failed {
            let shortest = shrink(actions[..=step].to_vec());
            panic!(
                "seed {seed}: invariant broken at step {step}: {why}\nshortest failing sequence ({} actions):\n{:#?}",
                shortest.len(),
                shortest
            );
        }
        let sent = w.observed.sent.borrow().len();
        let accepted = w.observed.accepted.borrow().len();
        refused_total += sent - accepted;
        accepted_total += accepted;
    }
    // The walk must exercise both sides: honest progress and refusals.
    assert!(
        accepted_total > 0 && refused_total > 0,
        "accepted {accepted_total}, refused {refused_total}"
    );
    println!("{seeds} seeds x {steps} steps: {accepted_total} requests accepted, {refused_total} refused; channels left for attacks only: {broken_total}");
    for (name, (acc, refused)) in stats {
        println!("  {name:<20} accepted {acc:>5}  refused {refused:>5}");
    }
}
