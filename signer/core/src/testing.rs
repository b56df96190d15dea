//! Two signers driving one channel through the protocol's real order of
//! signatures and revocations, with in-memory stores. Shared by the unit
//! tests, the benchmarks and the hostile-node suite (feature `test-utils`).
//!
//! Alice funds; both commitments advance in lock step:
//! Alice signs Bob's n+1, Bob validates it and revokes n; Bob signs Alice's
//! n+1, Alice validates it and revokes n.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use bitcoin::Network;
use lnpd_proto::signer::{self as pb, reply, request};

use crate::state::{CommitmentRecord, SetupRecord};

/// Anything that answers signer requests: an in-process [`Signer`] or a
/// client of a signer process.
pub trait SignerHandle {
    /// Handles one request.
    fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError>;
    /// The encoded state, for in-process signers (to check that refusals change nothing).
    fn state_digest(&self) -> Option<Vec<u8>> {
        None
    }
    /// Handles an encoded `Request` (the device wire), for in-process signers.
    fn handle_bytes(&mut self, _bytes: &[u8]) -> Option<Vec<u8>> {
        None
    }
    /// Handles requests as one batch (in order, one durable write).
    fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError>;
}

impl<S: Store> SignerHandle for Signer<S> {
    fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        Signer::handle(self, body)
    }
    fn state_digest(&self) -> Option<Vec<u8>> {
        Some(self.state_digest())
    }
    fn handle_bytes(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        Some(Signer::handle_bytes(self, bytes))
    }
    fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        Ok(Signer::handle_batch(self, bodies))
    }
}

/// A signer shared with the test that drives it (to reach its store).
pub type SharedSigner = alloc::rc::Rc<core::cell::RefCell<Signer<MemoryStore>>>;

impl SignerHandle for SharedSigner {
    fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
        self.borrow_mut().handle(body)
    }
    fn state_digest(&self) -> Option<Vec<u8>> {
        Some(self.borrow().state_digest())
    }
    fn handle_batch(
        &mut self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        Ok(self.borrow_mut().handle_batch(bodies))
    }
}

use crate::commitment::{commitment_fee_sat, ANCHOR_OUTPUT_VALUE_SAT};
use crate::error::SignerError;
use crate::keys::Seed;
use crate::policy::PolicyConfig;
use crate::signer::Signer;
use crate::store::{MemoryStore, Store};

/// An HTLC from Alice's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestHtlc {
    /// Alice offered it (else Bob did).
    pub offered_by_alice: bool,
    /// Amount.
    pub amount_msat: u64,
    /// Expiry height.
    pub cltv_expiry: u32,
    /// Preimage.
    pub preimage: [u8; 32],
}

impl TestHtlc {
    /// Its payment hash.
    pub fn payment_hash(&self) -> [u8; 32] {
        crate::keys::payment_hash(&self.preimage).0
    }
}

/// xorshift64*: a small seedable generator, so a randomised test's failure
/// reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// A generator whose state is spread from `seed` (any seed works).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    #[allow(clippy::should_implement_trait)] // not an iterator: never ends
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// A deterministic entropy source for tests.
pub fn test_entropy(seed: u8) -> Box<dyn crate::signer::Entropy> {
    let mut counter = 0u64;
    Box::new(move || {
        counter += 1;
        let mut b = [seed; 32];
        b[..8].copy_from_slice(&counter.to_be_bytes());
        b
    })
}

/// Calls a signer and unwraps the expected reply variant.
#[macro_export]
macro_rules! call {
    ($signer:expr, $q:ident($req:expr) => $a:ident) => {
        match $signer.handle(lnpd_proto::signer::request::Body::$q($req)) {
            Ok(lnpd_proto::signer::reply::Body::$a(r)) => Ok(r),
            Ok(_) => Err($crate::error::SignerError::internal(
                "unexpected reply variant",
            )),
            Err(e) => Err(e),
        }
    };
}

/// One side of the channel.
pub struct Party {
    /// Its signer.
    pub signer: Box<dyn SignerHandle>,
    /// Its channel keys id.
    pub keys_id: Vec<u8>,
    /// Its channel public keys.
    pub pubkeys: pb::ChannelPublicKeys,
    /// Its set-up request.
    pub setup: pb::SetupChannelRequest,
}

/// Rebuilds `data` as `party`'s own commitment (party broadcasts), from
/// public data only, as an honest node would: the parameters and the
/// rebuilt commitment.
pub fn rebuild_as(
    party: &Party,
    data: &pb::CommitmentData,
) -> Result<
    (
        lightning::ln::chan_utils::ChannelTransactionParameters,
        crate::commitment::Rebuilt,
    ),
    SignerError,
> {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let setup = SetupRecord::from_wire(&party.setup);
    let keys = lnpd_proto::ldk::parse_channel_keys(Some(&party.pubkeys))?;
    let params = crate::commitment::channel_parameters(&setup, keys)?;
    let data = CommitmentRecord::from_wire(data)?;
    let rebuilt = crate::commitment::rebuild(&params, &setup, true, &data, &secp)?;
    Ok((params, rebuilt))
}

/// A channel between two in-process signers.
pub struct ChannelPair {
    /// The funder.
    pub alice: Party,
    /// The fundee.
    pub bob: Party,
    /// Channel value.
    pub value_sat: u64,
    /// Alice's balance excluding HTLCs, before fees.
    pub alice_msat: u64,
    /// Bob's balance excluding HTLCs.
    pub bob_msat: u64,
    /// HTLCs pending.
    pub htlcs: Vec<TestHtlc>,
    /// Feerate of both commitments.
    pub feerate_per_kw: u32,
    /// Current commitment number (both sides).
    pub number: u64,
    /// Preimages of HTLCs settled since the last update, shown to the
    /// signers with the next commitments (as LDK does).
    pub settled: Vec<[u8; 32]>,
    /// The funding transaction (its output 0 is the channel's 2-of-2).
    pub funding: bitcoin::Transaction,
}

/// A funding transaction for a channel between two funding keys: one
/// made-up input (named by the funder's keys id), the 2-of-2 at output 0.
fn funding_transaction(
    funder_keys_id: &[u8],
    a: &pb::ChannelPublicKeys,
    b: &pb::ChannelPublicKeys,
    value_sat: u64,
) -> Result<bitcoin::Transaction, SignerError> {
    use bitcoin::hashes::{sha256, Hash};
    let a = crate::commitment::parse_pubkey("funding_pubkey", &a.funding_pubkey)?;
    let b = crate::commitment::parse_pubkey("funding_pubkey", &b.funding_pubkey)?;
    let script = lightning::ln::chan_utils::make_funding_redeemscript(&a, &b).to_p2wsh();
    Ok(bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint {
                txid: bitcoin::Txid::from_byte_array(
                    sha256::Hash::hash(funder_keys_id).to_byte_array(),
                ),
                vout: 0,
            },
            ..Default::default()
        }],
        output: vec![bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(value_sat),
            script_pubkey: script,
        }],
    })
}

/// The peer as an attacker runs it: it holds its own keys and countersigns
/// whatever commitment of ours it likes (a colluding peer).
pub struct Colluder {
    keys: crate::keys::KeyRing,
    secp: bitcoin::secp256k1::Secp256k1<bitcoin::secp256k1::All>,
}

impl Colluder {
    /// The peer whose signer is `memory_signer(tag, ..)`.
    pub fn new(tag: u8) -> Self {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let seed = Seed::new(vec![tag; 32]).unwrap_or_else(|_| unreachable_seed());
        let keys = crate::keys::KeyRing::from_seed(&seed, Network::Regtest, &secp)
            .unwrap_or_else(|e| panic!("test keys: {e}"));
        Colluder { keys, secp }
    }

    /// The peer's signatures on `holder`'s commitment `data` (Alice's if
    /// `alice_is_holder`): the commitment signature and the HTLC
    /// signatures, as the holder's signer rebuilds them. `data` carries the
    /// holder's per-commitment point.
    pub fn countersign(
        &self,
        pair: &ChannelPair,
        alice_is_holder: bool,
        data: &pb::CommitmentData,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), SignerError> {
        let (holder, peer) = if alice_is_holder {
            (&pair.alice, &pair.bob)
        } else {
            (&pair.bob, &pair.alice)
        };
        let (params, rebuilt) = rebuild_as(holder, data)?;
        let secrets = self
            .keys
            .channel_secrets(&crate::ChannelKeysId::from_slice(&peer.keys_id)?);
        let sighash = crate::commitment::funding_sighash(
            &rebuilt.tx.trust().built_transaction().transaction,
            &params,
        )?;
        let sig = self.secp.sign_ecdsa(&sighash, &secrets.funding_key);
        let point =
            crate::commitment::parse_pubkey("per_commitment_point", &data.per_commitment_point)?;
        let htlc_key = lightning::ln::chan_utils::derive_private_key(
            &self.secp,
            &point,
            &secrets.htlc_base_key,
        );
        let htlc_sigs = crate::commitment::htlc_sighashes(
            &rebuilt.tx,
            params.as_holder_broadcastable().contest_delay(),
        )?
        .iter()
        .map(|(_, m)| {
            self.secp
                .sign_ecdsa(m, &htlc_key)
                .serialize_compact()
                .to_vec()
        })
        .collect();
        Ok((sig.serialize_compact().to_vec(), htlc_sigs))
    }

    /// A validation request for `data` (Alice's commitment if
    /// `alice_is_holder`), countersigned by this peer whatever it says.
    pub fn validation_request(
        &self,
        pair: &mut ChannelPair,
        alice_is_holder: bool,
        mut data: pb::CommitmentData,
    ) -> Result<pb::ValidateHolderCommitmentRequest, SignerError> {
        let party = if alice_is_holder {
            &mut pair.alice
        } else {
            &mut pair.bob
        };
        let keys_id = party.keys_id.clone();
        data.per_commitment_point =
            call!(party.signer, GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest {
            channel_keys_id: keys_id.clone(), commitment_number: data.commitment_number,
        }) => GetPerCommitmentPoint)?
            .per_commitment_point;
        data.transaction = pair.built_transaction(alice_is_holder, &data);
        let (sig, htlc_sigs) = self.countersign(pair, alice_is_holder, &data)?;
        Ok(pb::ValidateHolderCommitmentRequest {
            channel_keys_id: keys_id,
            commitment: Some(data),
            counterparty_signature: sig,
            htlc_signatures: htlc_sigs,
            outbound_htlc_preimages: Vec::new(),
            release_previous: false,
        })
    }
}

/// A regtest chain the tests mine themselves: blocks whose merkle roots
/// commit to the transactions they put in them, so a signer fed these
/// headers can check funding proofs against them.
pub struct TestChain {
    /// Headers from genesis, oldest first.
    pub headers: Vec<bitcoin::block::Header>,
    /// The txids of each block (none for genesis).
    pub txids: Vec<Vec<bitcoin::Txid>>,
}

impl Default for TestChain {
    fn default() -> Self {
        TestChain {
            headers: vec![bitcoin::constants::genesis_block(Network::Regtest).header],
            txids: vec![Vec::new()],
        }
    }
}

impl TestChain {
    /// The tip's height.
    pub fn height(&self) -> u32 {
        self.headers.len() as u32 - 1
    }

    /// Mines a block holding `txs` (after a made-up coinbase).
    pub fn mine(&mut self, txs: &[bitcoin::Transaction]) {
        use bitcoin::hashes::Hash;
        let height = self.height() + 1;
        let mut txids = vec![bitcoin::Txid::from_byte_array(
            bitcoin::hashes::sha256d::Hash::hash(&height.to_be_bytes()).to_byte_array(),
        )];
        txids.extend(txs.iter().map(|t| t.compute_txid()));
        let root = bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| t.to_raw_hash()))
            .map(bitcoin::TxMerkleNode::from_raw_hash)
            .unwrap_or_else(bitcoin::TxMerkleNode::all_zeros);
        let prev = self.headers[self.headers.len() - 1];
        let mut h = bitcoin::block::Header {
            version: bitcoin::block::Version::TWO,
            prev_blockhash: prev.block_hash(),
            merkle_root: root,
            time: prev.time + 600,
            bits: prev.bits,
            nonce: 0,
        };
        while h.validate_pow(h.target()).is_err() {
            h.nonce += 1;
        }
        self.headers.push(h);
        self.txids.push(txids);
    }

    /// Mines `n` blocks with nothing but a coinbase.
    pub fn mine_empty(&mut self, n: usize) {
        for _ in 0..n {
            self.mine(&[]);
        }
    }

    /// A BIP 37 merkle block proving `txid` in the block that holds it.
    pub fn merkle_block(&self, txid: bitcoin::Txid) -> Option<Vec<u8>> {
        let at = self.txids.iter().position(|b| b.contains(&txid))?;
        let block = bitcoin::MerkleBlock::from_header_txids_with_predicate(
            &self.headers[at],
            &self.txids[at],
            |t| *t == txid,
        );
        Some(bitcoin::consensus::serialize(&block))
    }

    /// Feeds a signer the headers it lacks; returns its height.
    pub fn feed(&self, signer: &mut dyn SignerHandle) -> Result<u32, SignerError> {
        let tip = call!(signer, UpdateChain(pb::UpdateChainRequest::default()) => UpdateChain)?;
        let from = tip.height as usize + 1;
        if from >= self.headers.len() {
            return Ok(tip.height);
        }
        let mut height = tip.height;
        for chunk in self.headers[from..].chunks(crate::chain::MAX_HEADERS_PER_UPDATE) {
            let req = pb::UpdateChainRequest {
                first_height: height + 1,
                headers: chunk.iter().map(bitcoin::consensus::serialize).collect(),
            };
            height = call!(signer, UpdateChain(req) => UpdateChain)?.height;
        }
        Ok(height)
    }
}

/// Channel options.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// Anchors (else static_remote_key).
    pub anchors: bool,
    /// Channel value.
    pub value_sat: u64,
    /// Push to Bob at open.
    pub push_msat: u64,
    /// Feerate.
    pub feerate_per_kw: u32,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            anchors: true,
            value_sat: 1_000_000,
            push_msat: 0,
            feerate_per_kw: 1000,
        }
    }
}

/// Makes a signer over a memory store from a one-byte seed tag.
pub fn memory_signer(tag: u8, policy: PolicyConfig) -> Signer<MemoryStore> {
    let seed = Seed::new(vec![tag; 32]).unwrap_or_else(|_| unreachable_seed());
    match Signer::new(
        &seed,
        Network::Regtest,
        policy,
        MemoryStore::default(),
        test_entropy(tag),
    ) {
        Ok(s) => s,
        Err(e) => panic!("cannot make a test signer: {e}"),
    }
}

fn unreachable_seed() -> Seed {
    panic!("a 32-byte seed is always valid")
}

fn setup_for(
    keys_id: &[u8],
    outbound: bool,
    opts: &PairOptions,
    counterparty: &pb::ChannelPublicKeys,
    funding_txid: &[u8],
) -> pb::SetupChannelRequest {
    pb::SetupChannelRequest {
        channel_keys_id: keys_id.to_vec(),
        is_outbound: outbound,
        channel_value_sat: opts.value_sat,
        push_msat: opts.push_msat,
        funding_outpoint: Some(pb::OutPoint {
            txid: funding_txid.to_vec(),
            vout: 0,
        }),
        channel_type: if opts.anchors {
            pb::ChannelType::AnchorsZeroFeeHtlcTx as i32
        } else {
            pb::ChannelType::StaticRemoteKey as i32
        },
        holder_selected_contest_delay: 144,
        counterparty_selected_contest_delay: 144,
        holder_dust_limit_sat: 546,
        counterparty_dust_limit_sat: 546,
        counterparty_keys: Some(counterparty.clone()),
        counterparty_shutdown_script: vec![],
        holder_shutdown_script: vec![],
    }
}

/// Asks a signer for a new channel keys id and that channel's public keys.
fn new_channel(
    signer: &mut dyn SignerHandle,
) -> Result<(Vec<u8>, pb::ChannelPublicKeys), SignerError> {
    let id = call!(signer, NewChannelKeysId(pb::NewChannelKeysIdRequest { inbound: false, user_channel_id: vec![] }) => NewChannelKeysId)?
        .channel_keys_id;
    let keys = call!(signer, GetChannelPublicKeys(pb::GetChannelPublicKeysRequest { channel_keys_id: id.clone() }) => ChannelPublicKeys)?;
    Ok((id, keys))
}

impl ChannelPair {
    /// Sets the channel up on both signers and exchanges the first commitments.
    pub fn open(
        alice: Box<dyn SignerHandle>,
        bob: Box<dyn SignerHandle>,
        opts: PairOptions,
    ) -> Result<Self, SignerError> {
        let mut pair = Self::prepare(alice, bob, opts)?;
        pair.exchange_first_commitments()?;
        Ok(pair)
    }

    /// Channel keys on both signers and the set-up requests, nothing set up yet.
    pub fn prepare(
        alice: Box<dyn SignerHandle>,
        bob: Box<dyn SignerHandle>,
        opts: PairOptions,
    ) -> Result<Self, SignerError> {
        let (mut alice, mut bob) = (alice, bob);
        let (a_id, a_keys) = new_channel(alice.as_mut())?;
        let (b_id, b_keys) = new_channel(bob.as_mut())?;
        // The funding transaction Alice's wallet would build: its txid is
        // the channel's funding outpoint (one per channel).
        let funding = funding_transaction(&a_id, &a_keys, &b_keys, opts.value_sat)?;
        let funding_txid = {
            use bitcoin::hashes::Hash;
            funding.compute_txid().to_byte_array()
        };
        let a_setup = setup_for(&a_id, true, &opts, &b_keys, &funding_txid);
        let b_setup = setup_for(&b_id, false, &opts, &a_keys, &funding_txid);
        let pair = ChannelPair {
            alice: Party {
                signer: alice,
                keys_id: a_id,
                pubkeys: a_keys,
                setup: a_setup,
            },
            bob: Party {
                signer: bob,
                keys_id: b_id,
                pubkeys: b_keys,
                setup: b_setup,
            },
            value_sat: opts.value_sat,
            alice_msat: opts.value_sat * 1000 - opts.push_msat,
            bob_msat: opts.push_msat,
            htlcs: Vec::new(),
            feerate_per_kw: opts.feerate_per_kw,
            number: 0,
            settled: Vec::new(),
            funding,
        };
        Ok(pair)
    }

    /// Sets Alice up, has Bob validate his first commitment (parked), sets
    /// Bob up, and has Alice validate hers: the channel is open.
    pub fn exchange_first_commitments(&mut self) -> Result<(), SignerError> {
        let pair = self;
        let a_setup = pair.alice.setup.clone();
        call!(pair.alice.signer, SetupChannel(a_setup) => SetupChannel)?;
        // Bob (inbound) validates his first commitment before he has the parameters, as LDK does.
        let bob_first = pair.commitment_data(false, 0)?;
        let sig = call!(pair.alice.signer, SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
            channel_keys_id: pair.alice.keys_id.clone(), commitment: Some(bob_first.clone()), ..Default::default()
        }) => SignCounterpartyCommitment)?;
        let parked = call!(pair.bob.signer, ValidateHolderCommitment(pb::ValidateHolderCommitmentRequest {
            channel_keys_id: pair.bob.keys_id.clone(), commitment: Some(bob_first),
            counterparty_signature: sig.signature, htlc_signatures: sig.htlc_signatures, outbound_htlc_preimages: vec![],
            release_previous: false,
        }) => ValidateHolderCommitment)?;
        debug_assert!(parked.parked);
        let b_setup = pair.bob.setup.clone();
        call!(pair.bob.signer, SetupChannel(b_setup) => SetupChannel)?;
        let (req, _) = pair.holder_request(true, 0)?;
        call!(pair.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment)?;
        Ok(())
    }

    fn anchors(&self) -> bool {
        self.alice.setup.channel_type == pb::ChannelType::AnchorsZeroFeeHtlcTx as i32
    }

    /// The commitment `number` of Alice (`alice == true`) or Bob, from the current balances.
    pub fn commitment_data(
        &mut self,
        alice: bool,
        number: u64,
    ) -> Result<pb::CommitmentData, SignerError> {
        let anchors = self.anchors();
        let fee = commitment_fee_sat(self.feerate_per_kw, self.htlcs.len(), anchors);
        let anchors_sat = if anchors {
            2 * ANCHOR_OUTPUT_VALUE_SAT
        } else {
            0
        };
        let dust = 546;
        let trim = |v: u64| if v < dust { 0 } else { v };
        let alice_sat = trim((self.alice_msat / 1000).saturating_sub(fee + anchors_sat));
        let bob_sat = trim(self.bob_msat / 1000);
        let party = if alice {
            &mut self.alice
        } else {
            &mut self.bob
        };
        let point = call!(party.signer, GetPerCommitmentPoint(pb::GetPerCommitmentPointRequest {
            channel_keys_id: party.keys_id.clone(), commitment_number: number,
        }) => GetPerCommitmentPoint)?
        .per_commitment_point;
        let htlcs = self
            .htlcs
            .iter()
            .map(|h| pb::Htlc {
                direction: if h.offered_by_alice == alice {
                    pb::HtlcDirection::Offered as i32
                } else {
                    pb::HtlcDirection::Received as i32
                },
                amount_msat: h.amount_msat,
                cltv_expiry: h.cltv_expiry,
                payment_hash: h.payment_hash().to_vec(),
            })
            .collect();
        let (to_b, to_c) = if alice {
            (alice_sat, bob_sat)
        } else {
            (bob_sat, alice_sat)
        };
        let mut data = pb::CommitmentData {
            commitment_number: number,
            feerate_per_kw: self.feerate_per_kw,
            to_broadcaster_value_sat: to_b,
            to_countersignatory_value_sat: to_c,
            htlcs,
            per_commitment_point: point,
            transaction: Vec::new(),
        };
        data.transaction = self.built_transaction(alice, &data);
        Ok(data)
    }

    /// The transaction an honest node builds for `data` (broadcast by Alice
    /// if `alice`); empty when the data cannot make one (an attack the
    /// signer refuses before it looks at the transaction).
    pub fn built_transaction(&self, alice: bool, data: &pb::CommitmentData) -> Vec<u8> {
        let party = if alice { &self.alice } else { &self.bob };
        rebuild_as(party, data)
            .map(|(_, r)| {
                bitcoin::consensus::encode::serialize(&r.tx.trust().built_transaction().transaction)
            })
            .unwrap_or_default()
    }

    /// From the state after one [`ChannelPair::advance`]: Bob validates his
    /// #2 and revokes #1. Returns Alice's request to validate that
    /// revocation and her request to sign Bob's #3, which needs it.
    pub fn revocation_then_next(&mut self) -> Result<(request::Body, request::Body), SignerError> {
        let (mut bob_validates, _) = self.holder_request(false, 2)?;
        bob_validates.release_previous = true;
        let secret = call!(self.bob.signer, ValidateHolderCommitment(bob_validates) => ValidateHolderCommitment)?
            .previous_secret;
        let revocation = request::Body::ValidateCounterpartyRevocation(
            pb::ValidateCounterpartyRevocationRequest {
                channel_keys_id: self.alice.keys_id.clone(),
                commitment_number: 1,
                secret,
            },
        );
        let next =
            request::Body::SignCounterpartyCommitment(pb::SignCounterpartyCommitmentRequest {
                channel_keys_id: self.alice.keys_id.clone(),
                commitment: Some(self.commitment_data(false, 3)?),
                ..Default::default()
            });
        Ok((revocation, next))
    }

    /// The other side's signatures over `holder`'s commitment `number`, as a
    /// validation request for `holder` (true = Alice).
    pub fn holder_request(
        &mut self,
        alice_is_holder: bool,
        number: u64,
    ) -> Result<
        (
            pb::ValidateHolderCommitmentRequest,
            pb::SignCounterpartyCommitmentRequest,
        ),
        SignerError,
    > {
        let data = self.commitment_data(alice_is_holder, number)?;
        let (signer_side, holder) = if alice_is_holder {
            (&mut self.bob, &self.alice)
        } else {
            (&mut self.alice, &self.bob)
        };
        let sign_req = pb::SignCounterpartyCommitmentRequest {
            outbound_htlc_preimages: self.settled.iter().map(|p| p.to_vec()).collect(),
            channel_keys_id: signer_side.keys_id.clone(),
            commitment: Some(data.clone()),
            ..Default::default()
        };
        let sig = call!(signer_side.signer, SignCounterpartyCommitment(sign_req.clone()) => SignCounterpartyCommitment)?;
        Ok((
            pb::ValidateHolderCommitmentRequest {
                channel_keys_id: holder.keys_id.clone(),
                commitment: Some(data),
                counterparty_signature: sig.signature,
                htlc_signatures: sig.htlc_signatures,
                outbound_htlc_preimages: self.settled.iter().map(|p| p.to_vec()).collect(),
                release_previous: false,
            },
            sign_req,
        ))
    }

    /// Moves both commitments to the next number with the current balances
    /// and HTLCs, revoking the previous ones.
    pub fn advance(&mut self) -> Result<(), SignerError> {
        let req = next_counterparty_request(self)?;
        let sig = call!(self.alice.signer, SignCounterpartyCommitment(req.clone()) => SignCounterpartyCommitment)?;
        self.complete_advance(req, sig)
    }

    /// The rest of [`ChannelPair::advance`] once Alice signed Bob's next
    /// commitment (`req`, answered by `sig`): Bob validates and revokes,
    /// Bob signs Alice's next, Alice validates and revokes.
    pub fn complete_advance(
        &mut self,
        req: pb::SignCounterpartyCommitmentRequest,
        sig: pb::SignCounterpartyCommitmentReply,
    ) -> Result<(), SignerError> {
        let n = self.number;
        call!(self.bob.signer, ValidateHolderCommitment(pb::ValidateHolderCommitmentRequest {
            channel_keys_id: self.bob.keys_id.clone(),
            commitment: req.commitment,
            counterparty_signature: sig.signature,
            htlc_signatures: sig.htlc_signatures,
            outbound_htlc_preimages: self.settled.iter().map(|p| p.to_vec()).collect(),
            release_previous: false,
        }) => ValidateHolderCommitment)?;
        let secret =
            call!(self.bob.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: self.bob.keys_id.clone(), commitment_number: n,
        }) => ReleaseCommitmentSecret)?
            .secret;
        call!(self.alice.signer, ValidateCounterpartyRevocation(pb::ValidateCounterpartyRevocationRequest {
            channel_keys_id: self.alice.keys_id.clone(), commitment_number: n, secret,
        }) => ValidateCounterpartyRevocation)?;
        let (req, _) = self.holder_request(true, n + 1)?;
        call!(self.alice.signer, ValidateHolderCommitment(req) => ValidateHolderCommitment)?;
        let secret =
            call!(self.alice.signer, ReleaseCommitmentSecret(pb::ReleaseCommitmentSecretRequest {
            channel_keys_id: self.alice.keys_id.clone(), commitment_number: n,
        }) => ReleaseCommitmentSecret)?
            .secret;
        call!(self.bob.signer, ValidateCounterpartyRevocation(pb::ValidateCounterpartyRevocationRequest {
            channel_keys_id: self.bob.keys_id.clone(), commitment_number: n, secret,
        }) => ValidateCounterpartyRevocation)?;
        self.number = n + 1;
        self.settled.clear();
        Ok(())
    }

    /// Adds an HTLC offered by Alice (moving her balance into it) and advances.
    pub fn add_htlc(&mut self, amount_msat: u64, tag: u8) -> Result<TestHtlc, SignerError> {
        let h = TestHtlc {
            offered_by_alice: true,
            amount_msat,
            cltv_expiry: 500 + tag as u32,
            preimage: [tag; 32],
        };
        self.alice_msat -= amount_msat;
        self.htlcs.push(h.clone());
        self.advance()?;
        Ok(h)
    }

    /// Like [`ChannelPair::add_htlc`], but a refused HTLC leaves the pair's
    /// bookkeeping as it was (for attacks and policy tests).
    pub fn offer(&mut self, amount_msat: u64, tag: u8) -> Result<TestHtlc, SignerError> {
        self.add_htlc(amount_msat, tag).inspect_err(|_| {
            self.htlcs.pop();
            self.alice_msat += amount_msat;
        })
    }

    /// Bob offers Alice an HTLC (a payment to her, or one she forwards).
    pub fn add_htlc_from_bob(
        &mut self,
        amount_msat: u64,
        tag: u8,
    ) -> Result<TestHtlc, SignerError> {
        let h = TestHtlc {
            offered_by_alice: false,
            amount_msat,
            cltv_expiry: 600 + tag as u32,
            preimage: [tag; 32],
        };
        self.bob_msat -= amount_msat;
        self.htlcs.push(h.clone());
        self.advance()?;
        Ok(h)
    }

    /// Fails a pending HTLC (its value goes back to the offerer) and advances.
    pub fn fail_htlc(&mut self, h: &TestHtlc) -> Result<(), SignerError> {
        self.htlcs.retain(|x| x != h);
        if h.offered_by_alice {
            self.alice_msat += h.amount_msat;
        } else {
            self.bob_msat += h.amount_msat;
        }
        self.advance()
    }

    /// Settles a pending HTLC (its value goes to the receiver) and advances.
    pub fn settle_htlc(&mut self, h: &TestHtlc) -> Result<(), SignerError> {
        self.htlcs.retain(|x| x != h);
        self.settled.push(h.preimage);
        if h.offered_by_alice {
            self.bob_msat += h.amount_msat;
        } else {
            self.alice_msat += h.amount_msat;
        }
        self.advance()
    }
}

impl ChannelPair {
    /// Funds the channel with `tx` instead (its output `vout` must be the
    /// 2-of-2): before [`ChannelPair::exchange_first_commitments`].
    pub fn set_funding(&mut self, tx: bitcoin::Transaction, vout: u32) {
        use bitcoin::hashes::Hash;
        let outpoint = pb::OutPoint {
            txid: tx.compute_txid().to_byte_array().to_vec(),
            vout,
        };
        self.alice.setup.funding_outpoint = Some(outpoint.clone());
        self.bob.setup.funding_outpoint = Some(outpoint);
        self.funding = tx;
    }

    /// The channel's funding output (the 2-of-2 and its value).
    pub fn funding_output(&self) -> bitcoin::TxOut {
        funding_transaction(
            &self.alice.keys_id,
            &self.alice.pubkeys,
            &self.bob.pubkeys,
            self.value_sat,
        )
        .map(|t| t.output[0].clone())
        .unwrap_or_else(|e| panic!("funding output: {e}"))
    }

    /// Mines the funding transaction and `confirmations - 1` blocks on
    /// `chain`, feeds Alice's signer and proves the funding to it.
    pub fn prove_funding(
        &mut self,
        chain: &mut TestChain,
        confirmations: usize,
    ) -> Result<pb::ProveFundingReply, SignerError> {
        let txid = self.funding.compute_txid();
        if chain.merkle_block(txid).is_none() {
            chain.mine(core::slice::from_ref(&self.funding));
            chain.mine_empty(confirmations.saturating_sub(1));
        }
        chain.feed(self.alice.signer.as_mut())?;
        let req = pb::ProveFundingRequest {
            channel_keys_id: self.alice.keys_id.clone(),
            funding_transaction: bitcoin::consensus::serialize(&self.funding),
            merkle_block: chain.merkle_block(txid).unwrap_or_default(),
            later_headers: Vec::new(),
        };
        call!(self.alice.signer, ProveFunding(req) => ProveFunding)
    }

    /// Cooperative close at `fee_sat` (paid by Alice, the funder): each side
    /// signs the closing transaction paying both sides' shutdown scripts.
    /// Returns (Alice's, Bob's) signatures.
    pub fn close(&mut self, fee_sat: u64) -> Result<(Vec<u8>, Vec<u8>), SignerError> {
        if !self.htlcs.is_empty() {
            return Err(SignerError::precondition("HTLCs pending"));
        }
        let script = |p: &mut Party| {
            call!(p.signer, GetShutdownScript(pb::GetShutdownScriptRequest {}) => Script)
                .map(|s| s.script_pubkey)
        };
        let (a_script, b_script) = (script(&mut self.alice)?, script(&mut self.bob)?);
        let alice_sat = (self.alice_msat / 1000).saturating_sub(fee_sat);
        let bob_sat = self.bob_msat / 1000;
        let a = call!(self.alice.signer, SignClosingTransaction(pb::SignClosingTransactionRequest {
            channel_keys_id: self.alice.keys_id.clone(),
            to_holder_value_sat: alice_sat,
            to_counterparty_value_sat: bob_sat,
            to_holder_script: a_script.clone(),
            to_counterparty_script: b_script.clone(),
            lock_time: 0,
        }) => Signature)?;
        let b = call!(self.bob.signer, SignClosingTransaction(pb::SignClosingTransactionRequest {
            channel_keys_id: self.bob.keys_id.clone(),
            to_holder_value_sat: bob_sat,
            to_counterparty_value_sat: alice_sat,
            to_holder_script: b_script,
            to_counterparty_script: a_script,
            lock_time: 0,
        }) => Signature)?;
        Ok((a.signature, b.signature))
    }
}

/// The request for the next counterparty commitment, as the benchmark and
/// the hostile-node suite send it: Alice signs Bob's next commitment.
pub fn next_counterparty_request(
    pair: &mut ChannelPair,
) -> Result<pb::SignCounterpartyCommitmentRequest, SignerError> {
    let n = pair.number + 1;
    let data = pair.commitment_data(false, n)?;
    Ok(pb::SignCounterpartyCommitmentRequest {
        channel_keys_id: pair.alice.keys_id.clone(),
        commitment: Some(data),
        outbound_htlc_preimages: pair.settled.iter().map(|p| p.to_vec()).collect(),
        ..Default::default()
    })
}

/// Unwraps an `Error` reply body into a [`SignerError`]-like tuple, for tests.
pub fn reply_error(r: &pb::Reply) -> Option<(i32, alloc::string::String)> {
    match &r.body {
        Some(reply::Body::Error(e)) => Some((e.kind, e.rule.clone())),
        _ => None,
    }
}
