//! An independent peer: ldk-node 0.7 (LDK with its own on-chain wallet,
//! chain sync, fee estimation and defaults), not lnpd, on the same bcoin
//! chain. bcoin answers it in Bitcoin Core's shape
//! (`regtest/bcoin-core-rpc.js`); lnpd's nodes read the same chain. On its
//! defaults the peer proposes the network's floor feerate (it has no
//! estimate on regtest), opens anchor channels and pushes when asked to.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::bitcoin::Network;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use ldk_node::{ChannelDetails, Event, UserChannelId};
use lnpd_tests::network::{channels, field, node_id, ok, onchain_sat, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::process::TempDir;
use lnpd_tests::regtest::Bcoin;

/// An ldk-node peer, its events collected by a thread of its own.
struct Peer {
    node: Arc<ldk_node::Node>,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    _dir: TempDir,
}

impl Peer {
    /// Builds and starts ldk-node on `bcoin` with its defaults (no
    /// listening address: it connects to lnpd, never the other way).
    fn start(bcoin: &Bcoin, tag: &str) -> Peer {
        let dir = TempDir::new(tag);
        let rest = bcoin
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').expect("host:port");
        let mut b = ldk_node::Builder::new();
        b.set_network(Network::Regtest);
        b.set_storage_dir_path(dir.path.to_string_lossy().to_string());
        b.set_chain_source_bitcoind_rpc(
            host.to_string(),
            port.parse().expect("port"),
            "lnpd".into(),
            bcoin.api_key.clone(),
        );
        let node = Arc::new(b.build().expect("ldk-node builds"));
        node.start().expect("ldk-node starts");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (node, events, stop) = (node.clone(), events.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match node.next_event() {
                        Some(e) => {
                            events.lock().unwrap().push(e);
                            let _ = node.event_handled();
                        }
                        None => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
        Peer {
            node,
            events,
            stop,
            _dir: dir,
        }
    }

    fn id(&self) -> String {
        self.node.node_id().to_string()
    }

    /// A new address of its on-chain wallet.
    fn address(&self) -> ldk_node::bitcoin::Address {
        self.node.onchain_payment().new_address().expect("address")
    }

    fn spendable_sat(&self) -> u64 {
        self.node.list_balances().spendable_onchain_balance_sats
    }

    fn channels_with(&self, lnpd: &NodeProcess) -> Vec<ChannelDetails> {
        let id = lnpd_key(lnpd);
        self.node
            .list_channels()
            .into_iter()
            .filter(|c| c.counterparty_node_id == id)
            .collect()
    }

    fn events_seen(&self) -> String {
        format!("{:#?}", self.events.lock().unwrap())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.node.stop();
    }
}

fn lnpd_key(n: &NodeProcess) -> PublicKey {
    PublicKey::from_str(&node_id(n)).expect("node id")
}

fn lnpd_addr(n: &NodeProcess) -> SocketAddress {
    SocketAddress::from_str(&n.p2p_addr()).expect("p2p address")
}

fn description(s: &str) -> Bolt11InvoiceDescription {
    Bolt11InvoiceDescription::Direct(Description::new(s.to_string()).expect("description"))
}

/// lnpd's channels with the peer.
fn lnpd_channels_with(n: &NodeProcess, peer: &Peer) -> Vec<serde_json::Value> {
    let id = peer.id();
    channels(n)
        .into_iter()
        .filter(|c| c["counterparty_node_id"] == id.as_str())
        .collect()
}

/// Mines until `count` channels between lnpd and the peer are usable on
/// both sides.
async fn mine_until_usable(chain: &Chain, a: &NodeProcess, peer: &Peer, count: usize) {
    let usable = || {
        lnpd_channels_with(a, peer)
            .iter()
            .filter(|c| c["is_usable"] == true)
            .count()
            == count
            && peer.channels_with(a).iter().filter(|c| c.is_usable).count() == count
    };
    chain
        .mine_until(30, "channels usable on both sides", usable)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nlnpd: {:?}\npeer: {:?}\n--- lnpd ---\n{}\n--- peer events ---\n{}",
                lnpd_channels_with(a, peer),
                peer.channels_with(a),
                a.log(),
                peer.events_seen()
            )
        });
}

/// Opens from the peer to lnpd (with and without a push) and from lnpd to
/// the peer, pays both ways, and closes cooperatively from each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_peer_opens_pays_and_closes_with_us() {
    let (chain, a, peer) = funded("ldk-peer").await;
    // 1. It opens to us, no push, at the floor feerate it proposes.
    let plain: UserChannelId = peer
        .node
        .open_channel(lnpd_key(&a), lnpd_addr(&a), 400_000, None, None)
        .expect("open without push");
    mine_until_usable(&chain, &a, &peer, 1).await;
    let first = &lnpd_channels_with(&a, &peer)[0];
    assert_eq!(
        first["feerate_sat_per_kw"], 253,
        "without an estimate the peer proposes the floor, and we take it: {first}"
    );
    // 2. It opens to us with a push of 50 000 sat.
    peer.node
        .open_channel(lnpd_key(&a), lnpd_addr(&a), 300_000, Some(50_000_000), None)
        .expect("open with push");
    mine_until_usable(&chain, &a, &peer, 2).await;
    let pushed = lnpd_channels_with(&a, &peer)
        .into_iter()
        .find(|c| c["capacity_sat"] == 300_000)
        .expect("the pushed channel");
    // Ours is the push, less the reserve the peer asks us to keep (1%).
    let ours = pushed["outbound_msat"].as_u64().unwrap();
    assert!(
        (45_000_000..=50_000_000).contains(&ours),
        "lnpd can spend {ours} msat of the 50 000 000 pushed: {pushed}"
    );
    assert_eq!(pushed["is_outbound"], false);
    // 3. We open to it.
    ok(&a, &["openchannel", &peer.id(), "500000"]);
    mine_until_usable(&chain, &a, &peer, 3).await;

    // Payments both ways.
    for i in 0..3 {
        let inv = peer
            .node
            .bolt11_payment()
            .receive(20_000_000, &description(&format!("to peer {i}")), 3600)
            .expect("peer invoice");
        let out = a.cli(&["--json", "pay", &inv.to_string(), "--timeout", "60"]);
        assert!(
            out.status.success(),
            "lnpd pays the peer: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            a.log()
        );
        let inv = ok(&a, &["invoice", "15000000", "--description", "to lnpd"]);
        let inv = Bolt11Invoice::from_str(&inv).expect("lnpd's invoice");
        peer.node
            .bolt11_payment()
            .send(&inv, None)
            .expect("the peer pays lnpd");
        let hash = inv.payment_hash().to_string();
        assert!(
            wait_for(60, || ok(&a, &["--json", "payments"])
                .lines()
                .any(|l| l.contains(&hash) && l.contains("succeeded"))),
            "lnpd was paid: {}\n{}",
            ok(&a, &["payments"]),
            peer.events_seen()
        );
    }

    // Cooperative close from each side.
    let before = onchain_sat(&a);
    peer.node
        .close_channel(&plain, lnpd_key(&a))
        .expect("the peer closes");
    let ours_chan = lnpd_channels_with(&a, &peer)
        .into_iter()
        .find(|c| c["is_outbound"] == true)
        .expect("our channel");
    ok(
        &a,
        &["closechannel", ours_chan["channel_id"].as_str().unwrap()],
    );
    chain
        .mine_until(30, "both closes confirmed", || {
            lnpd_channels_with(&a, &peer).len() == 1 && peer.channels_with(&a).len() == 1
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log(), peer.events_seen()));
    chain.mine(2).await.unwrap();
    chain.sync(&[&a]).await.unwrap();
    assert!(
        onchain_sat(&a) > before,
        "our close output is in the wallet: {}",
        field(&ok(&a, &["--json", "balance"]), "onchain_spendable_sat")
    );
}

/// HTLC values, told apart on chain by their amounts.
const TO_PEER_HTLC_SAT: u64 = 41_000;
const TO_US_HTLC_SAT: u64 = 43_000;
/// What our anchor children, HTLC transaction inputs, claims and sweeps
/// may cost, together.
const FEES_SAT: u64 = 40_000;

/// A chain, lnpd and the peer, both funded and connected.
async fn funded(tag: &str) -> (Chain, NodeProcess, Peer) {
    let chain = Chain::start_core_shaped().await.expect("bcoin");
    let a = NodeProcess::start(&format!("{tag}-lnpd"), &chain.bcoin).expect("lnpd");
    let peer = Peer::start(&chain.bcoin, &format!("{tag}-peer"));
    chain
        .bcoin
        .mine(&chain.rpc, 10, &peer.address())
        .await
        .expect("mining to the peer");
    chain.fund(&[&a]).await.expect("funding lnpd");
    assert!(
        wait_for(90, || {
            let _ = peer.node.sync_wallets();
            peer.spendable_sat() > 1_000_000
        }),
        "the peer never saw its coins"
    );
    peer.node
        .connect(lnpd_key(&a), lnpd_addr(&a), true)
        .expect("the peer connects to lnpd");
    (chain, a, peer)
}

/// An HTLC each way, held by its payee: one we offer (the peer holds it,
/// never claiming), one the peer offers (we hold it). Returns the hash we
/// hold and our paying process.
fn htlcs_both_ways(a: &NodeProcess, peer: &Peer) -> (String, std::process::Child) {
    use ldk_node::bitcoin::hashes::{sha256, Hash};
    use ldk_node::lightning_types::payment::PaymentHash;
    let hash = PaymentHash(sha256::Hash::hash(&[0x5a; 32]).to_byte_array());
    let inv = peer
        .node
        .bolt11_payment()
        .receive_for_hash(
            TO_PEER_HTLC_SAT * 1000,
            &description("held by the peer"),
            3600,
            hash,
        )
        .expect("peer's hold invoice");
    let payer = std::process::Command::new(lnpd_tests::process::bin("lnpd-cli"))
        .arg("--data-dir")
        .arg(a.data_dir())
        .args(["pay", &inv.to_string(), "--timeout", "900"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lnpd-cli runs");
    assert!(
        wait_for(60, || peer.events.lock().unwrap().iter().any(
            |e| matches!(e, Event::PaymentClaimable { payment_hash, .. } if *payment_hash == hash)
        )),
        "the peer never held our payment: {}\n{}",
        peer.events_seen(),
        a.log()
    );
    let ours = ok(
        a,
        &[
            "invoice",
            &(TO_US_HTLC_SAT * 1000).to_string(),
            "--hold",
            "--description",
            "held by lnpd",
        ],
    );
    let ours = Bolt11Invoice::from_str(&ours).expect("our invoice");
    peer.node
        .bolt11_payment()
        .send(&ours, None)
        .expect("the peer pays our hold invoice");
    let hash = ours.payment_hash().to_string();
    assert!(
        wait_for(60, || ok(a, &["--json", "payments"])
            .lines()
            .any(|l| l.contains(&hash) && l.contains("\"held\""))),
        "we never held the peer's payment\n{}",
        a.log()
    );
    (hash, payer)
}

/// Mines until the channel's commitment is on chain and both HTLC outputs
/// of it are spent; returns the commitment.
async fn resolve(
    chain: &Chain,
    funding: bitcoin::OutPoint,
    from: u32,
    a: &NodeProcess,
    peer: &Peer,
) -> bitcoin::Transaction {
    let mut commitment: Option<bitcoin::Transaction> = None;
    for _ in 0..500 {
        if commitment.is_none() && chain.spent_on_chain(&funding).await.expect("gettxout") {
            let txs = chain.transactions(from).await.expect("chain");
            commitment = lnpd_tests::network::spender(&txs, &funding).cloned();
        }
        if let Some(c) = &commitment {
            let mut all = true;
            for sat in [TO_PEER_HTLC_SAT, TO_US_HTLC_SAT] {
                let vout = c
                    .output
                    .iter()
                    .position(|o| o.value.to_sat() == sat)
                    .unwrap_or_else(|| panic!("no HTLC of {sat} sat in {c:?}"));
                all &= chain
                    .spent_on_chain(&bitcoin::OutPoint::new(c.compute_txid(), vout as u32))
                    .await
                    .expect("gettxout");
            }
            if all {
                return c.clone();
            }
        }
        chain.mine(1).await.expect("mining");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!(
        "the HTLCs were not resolved on chain\n--- lnpd ---\n{}\n--- lnpd's signer ---\n{}\n--- peer ---\n{}",
        a.log(),
        a.signer.log(),
        peer.events_seen()
    )
}

/// Mines until lnpd's wallet gained about `expected` (less fees).
async fn wallet_gains(chain: &Chain, a: &NodeProcess, before: u64, expected: u64) {
    let ok_gain = || {
        let g = onchain_sat(a).saturating_sub(before);
        g <= expected && g > expected - FEES_SAT
    };
    if chain
        .mine_until(200, "lnpd's wallet has it all", ok_gain)
        .await
        .is_err()
    {
        panic!(
            "lnpd got {} sat of {expected}\n--- lnpd ---\n{}\n--- lnpd's signer ---\n{}",
            onchain_sat(a).saturating_sub(before),
            a.log(),
            a.signer.log()
        );
    }
}

/// We force-close a channel we opened to the peer, with an HTLC in flight
/// each way: our offered one times out (HTLC-timeout, wallet-funded fee),
/// the one we hold we settle after the close (HTLC-success), our balance
/// comes after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_force_close_on_the_peer_with_htlcs_in_flight() {
    let (chain, a, peer) = funded("ldk-fc-ours").await;
    let (_, start) = chain.rpc.best_block().await.unwrap();
    ok(&a, &["openchannel", &peer.id(), "600000"]);
    mine_until_usable(&chain, &a, &peer, 1).await;
    // The peer lets 10% of the channel in flight towards it: two payments.
    for i in 0..2 {
        let inv = peer
            .node
            .bolt11_payment()
            .receive(55_000_000, &description(&format!("balance {i}")), 3600)
            .expect("invoice");
        let out = a.cli(&["--json", "pay", &inv.to_string(), "--timeout", "60"]);
        assert!(out.status.success(), "{}", a.log());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (ours_held, mut payer) = htlcs_both_ways(&a, &peer);
    chain.sync(&[&a]).await.unwrap();
    let before = onchain_sat(&a);
    let chan = lnpd_channels_with(&a, &peer).remove(0);
    let funding: bitcoin::OutPoint = chan["funding_txo"].as_str().unwrap().parse().unwrap();

    ok(
        &a,
        &[
            "closechannel",
            chan["channel_id"].as_str().unwrap(),
            "--force",
        ],
    );
    chain.mine(1).await.unwrap();
    ok(&a, &["settleinvoice", &ours_held]);
    let commitment = resolve(&chain, funding, start + 1, &a, &peer).await;
    // Ours is the largest output (the peer has 110 000 sat less the HTLC it offers).
    let to_local = commitment
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .max()
        .unwrap();
    wallet_gains(
        &chain,
        &a,
        before,
        to_local + TO_PEER_HTLC_SAT + TO_US_HTLC_SAT,
    )
    .await;
    let _ = payer.kill();
    let _ = payer.wait();
}

/// The peer force-closes a channel it opened to us (pushing us a balance),
/// with an HTLC in flight each way: we claim the one it offered with the
/// preimage, ours after its expiry, and our balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_force_closes_on_us_with_htlcs_in_flight() {
    let (chain, a, peer) = funded("ldk-fc-theirs").await;
    let (_, start) = chain.rpc.best_block().await.unwrap();
    let ucid = peer
        .node
        .open_channel(
            lnpd_key(&a),
            lnpd_addr(&a),
            600_000,
            Some(150_000_000),
            None,
        )
        .expect("open with push");
    mine_until_usable(&chain, &a, &peer, 1).await;
    let (ours_held, mut payer) = htlcs_both_ways(&a, &peer);
    chain.sync(&[&a]).await.unwrap();
    let before = onchain_sat(&a);
    let chan = lnpd_channels_with(&a, &peer).remove(0);
    let funding: bitcoin::OutPoint = chan["funding_txo"].as_str().unwrap().parse().unwrap();

    peer.node
        .force_close_channel(&ucid, lnpd_key(&a), None)
        .expect("the peer force-closes");
    chain.mine(1).await.unwrap();
    ok(&a, &["settleinvoice", &ours_held]);
    let commitment = resolve(&chain, funding, start + 1, &a, &peer).await;
    // Ours (to_remote) is the push less the HTLC we offer: the smaller of
    // the two balance outputs.
    let to_remote = commitment
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .filter(|v| *v > 1_000 && *v != TO_PEER_HTLC_SAT && *v != TO_US_HTLC_SAT)
        .min()
        .unwrap();
    wallet_gains(
        &chain,
        &a,
        before,
        to_remote + TO_PEER_HTLC_SAT + TO_US_HTLC_SAT,
    )
    .await;
    let _ = payer.kill();
    let _ = payer.wait();
}
