//! The node's LDK signer traits answered by real `lnpd-signer` processes:
//! node-key operations verify against the node id, and a channel's first
//! commitments flow through LDK's own types (the inbound side validating
//! before it has the parameters, as LDK does it).

use std::time::Duration;

use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::secp256k1::{ecdh::SharedSecret, Message, PublicKey, Secp256k1, SecretKey};
use lightning::chain::transaction::OutPoint as LdkOutPoint;
use lightning::ln::chan_utils::{
    ChannelTransactionParameters, CommitmentTransaction, CounterpartyChannelTransactionParameters,
    HolderCommitmentTransaction,
};
use lightning::ln::msgs::{UnsignedChannelUpdate, UnsignedGossipMessage};
use lightning::sign::ecdsa::EcdsaChannelSigner;
use lightning::sign::{ChannelSigner, NodeSigner, Recipient, SignerProvider};
use lightning::types::features::ChannelTypeFeatures;
use lightning::util::ser::Writeable;
use lnpd_node::signer_client::{RemoteKeysManager, SignerConnection};
use lnpd_tests::SignerProcess;

const INITIAL: u64 = (1 << 48) - 1;

fn keys_manager(p: &SignerProcess) -> RemoteKeysManager {
    let conn = SignerConnection::start(p.addr.as_deref().unwrap(), p.node_tls()).unwrap();
    // The node keeps its channels' transactions in its store (none here).
    let store = lnpd_node::store::SqliteStore::open(&p.data_dir().join("node.sqlite")).unwrap();
    let txs = std::sync::Arc::new(lnpd_node::chain_watch::ChainWatch::open(
        std::sync::Arc::new(store),
    ));
    RemoteKeysManager::new(conn, txs, Duration::from_secs(10)).expect("keys manager")
}

/// Signs a counterparty commitment as LDK does it: the first call answers
/// "pending" (the request goes to the signer without waiting), a call after
/// the answer has come gets the signatures.
fn sign_counterparty<S: EcdsaChannelSigner>(
    signer: &S,
    params: &ChannelTransactionParameters,
    tx: &CommitmentTransaction,
) -> (
    bitcoin::secp256k1::ecdsa::Signature,
    Vec<bitcoin::secp256k1::ecdsa::Signature>,
) {
    let s = Secp256k1::new();
    assert!(
        signer
            .sign_counterparty_commitment(params, tx, vec![], vec![], &s)
            .is_err(),
        "the first ask answers pending"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(sigs) = signer.sign_counterparty_commitment(params, tx, vec![], vec![], &s) {
            return sigs;
        }
        assert!(std::time::Instant::now() < deadline, "no signature");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn node_key_operations_through_ldk_traits() {
    let mut signer = SignerProcess::init("remote-node").unwrap();
    signer.start().unwrap();
    let km = keys_manager(&signer);
    let s = Secp256k1::new();
    let node_id = km.get_node_id(Recipient::Node).unwrap();
    assert!(km.get_node_id(Recipient::PhantomNode).is_err());

    let other = SecretKey::from_slice(&[5; 32]).unwrap();
    let shared = km
        .ecdh(
            Recipient::Node,
            &PublicKey::from_secret_key(&s, &other),
            None,
        )
        .unwrap();
    assert_eq!(shared, SharedSecret::new(&node_id, &other));

    let raw = lightning_invoice::InvoiceBuilder::new(lightning_invoice::Currency::Regtest)
        .description("coffee".into())
        .payment_hash(sha256::Hash::hash(&[1; 32]))
        .payment_secret(lightning::types::payment::PaymentSecret([2; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(144)
        .amount_milli_satoshis(150_000)
        .build_raw()
        .unwrap();
    let sig = km
        .sign_invoice(&raw, Recipient::Node)
        .expect("invoice signed");
    let signed = raw.sign::<_, ()>(|_| Ok(sig)).unwrap();
    assert!(signed.check_signature());
    assert_eq!(signed.recover_payee_pub_key().unwrap().0, node_id);

    let update = UnsignedChannelUpdate {
        chain_hash: bitcoin::constants::ChainHash::REGTEST,
        short_channel_id: 42,
        timestamp: 1,
        message_flags: 1,
        channel_flags: 0,
        cltv_expiry_delta: 40,
        htlc_minimum_msat: 1000,
        htlc_maximum_msat: 1_000_000,
        fee_base_msat: 1000,
        fee_proportional_millionths: 1,
        excess_data: vec![],
    };
    let gsig = km
        .sign_gossip_message(UnsignedGossipMessage::ChannelUpdate(&update))
        .unwrap();
    let digest = Message::from_digest(sha256d::Hash::hash(&update.encode()).to_byte_array());
    s.verify_ecdsa(&digest, &gsig, &node_id)
        .expect("gossip signature by the node key");
    assert!(km.sign_message(b"hi").is_ok());
}

fn params(
    holder: &lightning::ln::chan_utils::ChannelPublicKeys,
    cp: &lightning::ln::chan_utils::ChannelPublicKeys,
    outbound: bool,
) -> ChannelTransactionParameters {
    ChannelTransactionParameters {
        holder_pubkeys: holder.clone(),
        holder_selected_contest_delay: 144,
        is_outbound_from_holder: outbound,
        counterparty_parameters: Some(CounterpartyChannelTransactionParameters {
            pubkeys: cp.clone(),
            selected_contest_delay: 144,
        }),
        funding_outpoint: Some(LdkOutPoint {
            txid: bitcoin::Txid::from_byte_array([9; 32]),
            index: 0,
        }),
        splice_parent_funding_txid: None,
        channel_type_features: ChannelTypeFeatures::anchors_zero_htlc_fee_and_dependencies(),
        channel_value_satoshis: 1_000_000,
    }
}

#[test]
fn first_commitments_flow_through_ldk_types() {
    let mut a = SignerProcess::init("remote-a").unwrap();
    let mut b = SignerProcess::init("remote-b").unwrap();
    a.start().unwrap();
    b.start().unwrap();
    let (alice_km, bob_km) = (keys_manager(&a), keys_manager(&b));
    let s = Secp256k1::new();
    let alice = alice_km.derive_channel_signer(alice_km.generate_channel_keys_id(false, 1));
    let bob = bob_km.derive_channel_signer(bob_km.generate_channel_keys_id(true, 2));
    let (ak, bk) = (alice.pubkeys(&s), bob.pubkeys(&s));
    let alice_params = params(&ak, &bk, true);
    let bob_params = params(&bk, &ak, false);
    // Alice funds 1,000,000 sat; anchors (660) and fee at 253 sat/kw come out of her side.
    let fee = 253 * 1124 / 1000;
    let alice_sat = 1_000_000 - 660 - fee;

    // Bob's first commitment, signed by Alice (who sends the parameters first).
    let bob_point = bob.get_per_commitment_point(INITIAL, &s).unwrap();
    let bob_tx = CommitmentTransaction::new(
        INITIAL,
        &bob_point,
        0,
        alice_sat,
        253,
        vec![],
        &bob_params.as_holder_broadcastable(),
        &s,
    );
    let (sig, htlc_sigs) = sign_counterparty(&alice, &alice_params, &bob_tx);
    // Bob validates before he has the parameters (parked in the signer) ...
    let holder = HolderCommitmentTransaction::new(
        bob_tx.clone(),
        sig,
        htlc_sigs,
        &bk.funding_pubkey,
        &ak.funding_pubkey,
    );
    bob.validate_holder_commitment(&holder, vec![])
        .expect("parked");
    // ... and checks it when the parameters arrive with his own first signature.
    let alice_point = alice.get_per_commitment_point(INITIAL, &s).unwrap();
    let alice_tx = CommitmentTransaction::new(
        INITIAL,
        &alice_point,
        alice_sat,
        0,
        253,
        vec![],
        &alice_params.as_holder_broadcastable(),
        &s,
    );
    // (Bob's set-up validates the parked #0 before he signs.)
    let (sig, htlc_sigs) = sign_counterparty(&bob, &bob_params, &alice_tx);
    let alice_holder = HolderCommitmentTransaction::new(
        alice_tx,
        sig,
        htlc_sigs,
        &ak.funding_pubkey,
        &bk.funding_pubkey,
    );
    alice
        .validate_holder_commitment(&alice_holder, vec![])
        .expect("Alice validates her #0");

    // Neither releases the secret of the only state it has.
    assert!(alice.release_commitment_secret(INITIAL).is_err());
    assert!(bob.release_commitment_secret(INITIAL).is_err());
    // Signing Alice's holder commitment for broadcast works; it is then never revoked.
    alice
        .sign_holder_commitment(&alice_params, &alice_holder, &s)
        .expect("force-close signature");
    assert!(
        a.log().contains("commitment-holder-not-revoked")
            || a.log().contains("revoke-next-validated")
    );
}
