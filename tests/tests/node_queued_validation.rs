//! Holder-commitment validations sent with the signature after them (one
//! round trip for two): the node answers LDK's validation at once and
//! queues it, so the two ways that could leave the channel stuck are tested
//! end to end on bcoin.
//!
//! 1. The node dies after LDK wrote its monitor and before the signer saw
//!    the validation (here: the payee's signer is down, then the node is
//!    killed): the queued validation was written with the monitor and is
//!    sent again at start-up; the payment then completes. Without that, the
//!    signer would refuse the revocation for ever (`revoke-next-validated`).
//! 2. The signer refuses a queued validation after LDK moved to that
//!    commitment (the funder raises the feerate above the payee's signer's
//!    `max_feerate_per_kw`: `commitment-fee-range`): the payee closes the
//!    channel with the previous commitment, the latest its signer
//!    validated, and both sides get their balances back on chain.

use std::process::Command;

use bitcoin::OutPoint;
use lightning::util::persist::KVStoreSync;
use lnpd_node::signer_client::queued::JOURNAL_NAMESPACE;
use lnpd_node::store::SqliteStore;
use lnpd_tests::network::{
    channel_with, field, node_id, ok, onchain_sat, pay, spender, text, wait_for, Chain,
};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::{bin, SignerProcess, TempDir};

/// The queued validations in `n`'s store (read beside the running node).
fn queued_records(n: &NodeProcess) -> Vec<String> {
    SqliteStore::open(&n.data_dir().join("node.sqlite"))
        .and_then(|s| s.list(JOURNAL_NAMESPACE, ""))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_queued_when_the_node_died_is_sent_again_at_start() {
    let chain = Chain::start().await.expect("bcoin");
    let a = NodeProcess::start("queued-a", &chain.bcoin).expect("node a");
    let mut b = NodeProcess::start("queued-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    // The first payment on the channel: nothing else is in flight at B
    // (a payment before it could still be settling, its last validation
    // sent at once and waiting for the signer that is about to go).
    // B's invoice first (its signer signs it), then B's signer goes.
    let invoice = ok(&b, &["invoice", "30000000", "--description", "queued"]);
    b.signer.kill9();
    let (cli, a_dir) = (bin("lnpd-cli"), a.data_dir());
    let payer = std::thread::spawn(move || {
        Command::new(cli)
            .arg("--data-dir")
            .arg(a_dir)
            .args(["--json", "pay", &invoice, "--timeout", "180"])
            .output()
            .expect("lnpd-cli runs")
    });
    // B's LDK took A's commitment and wrote its monitor; the validation it
    // was told succeeded went to the store with it, not to the signer.
    assert!(
        wait_for(60, || !queued_records(&b).is_empty()),
        "no queued validation was written\n{}",
        b.log()
    );
    b.stop_node();
    b.signer.restart().expect("B's signer restarts");
    b.restart_node(&[]).expect("B restarts");
    let _ = a.cli(&["connect", &format!("{}@{}", node_id(&b), b.p2p_addr())]);
    let paid = payer.join().expect("payer thread");
    assert!(
        paid.status.success() && field(&text(&paid), "status") == "succeeded",
        "the payment in flight did not complete: {}{}\n--- A ---\n{}\n--- B ---\n{}",
        text(&paid),
        String::from_utf8_lossy(&paid.stderr),
        a.log(),
        b.log()
    );
    assert!(
        b.log()
            .contains("sent again the validation of holder commitment"),
        "B did not send the queued validation again\n{}",
        b.log()
    );
    assert!(
        queued_records(&b).is_empty(),
        "the record stays after it was sent"
    );
    // Nothing was refused on the way, and the channel goes on.
    assert!(!b.log().contains("revoke-next-validated"), "{}", b.log());
    let out = pay(&a, &b, 10_000_000, "after").unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    assert_eq!(field(&out, "status"), "succeeded", "{out}");
    let channel = channel_with(&b, &node_id(&a)).expect("channel");
    assert_eq!(channel["is_usable"], true, "{channel}");
    // Answered records go with the node's next write.
    assert!(
        wait_for(30, || queued_records(&b).is_empty()),
        "answered records stay: {:?}",
        queued_records(&b)
    );
}

/// B's signer with a feerate ceiling below what A will ask for.
fn capped_payee(chain: &Chain) -> NodeProcess {
    let signer = SignerProcess::init_in(TempDir::new("refused-b-signer")).expect("signer init");
    let toml = signer.data_dir().join("signer.toml");
    let mut config = std::fs::read_to_string(&toml).expect("signer.toml");
    config.push_str("max_feerate_per_kw = 5000\n");
    std::fs::write(&toml, config).expect("signer.toml");
    NodeProcess::start_with(signer, TempDir::new("refused-b"), "refused-b", &chain.bcoin)
        .expect("node b")
}

const PAID_SAT: u64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_queued_validation_closes_with_the_previous_commitment() {
    let chain = Chain::start().await.expect("bcoin");
    let mut a = NodeProcess::start("refused-a", &chain.bcoin).expect("node a");
    let b = capped_payee(&chain);
    let (_, start_height) = chain.rpc.best_block().await.expect("tip");
    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    // Within LDK's in-flight limit (10% of the channel) per payment.
    for i in 0..3 {
        let out = pay(&a, &b, PAID_SAT * 1000 / 3, &format!("before {i}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(field(&out, "status"), "succeeded", "{out}");
    }
    let channel = channel_with(&a, &node_id(&b)).expect("channel");
    let funding: OutPoint = channel["funding_txo"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("funding outpoint");
    assert_eq!(channel["feerate_sat_per_kw"], 2500, "{channel}");
    chain.sync(&[&a, &b]).await.expect("sync");
    let (a_before, b_before) = (onchain_sat(&a), onchain_sat(&b));

    // A (the funder) now estimates 8000 sat/kw: its next timer tick sends
    // update_fee, LDK at B takes it, B's signer refuses that commitment.
    a.restart_node(&["--fallback-feerate-sat-per-kw", "8000"])
        .expect("A restarts");
    ok(
        &a,
        &["connect", &format!("{}@{}", node_id(&b), b.p2p_addr())],
    );
    assert!(
        wait_for(240, || b
            .log()
            .contains("broadcasting the previous commitment")),
        "B did not close with the previous commitment\n--- A ---\n{}\n--- B ---\n{}",
        a.log(),
        b.log()
    );
    let log = b.log();
    assert!(
        log.contains("after LDK moved to it") && log.contains("commitment-fee-range"),
        "not the queued validation's refusal by commitment-fee-range:\n{log}"
    );
    assert!(
        b.signer.log().contains("commitment-fee-range"),
        "{}",
        b.signer.log()
    );
    // The node never asked for the refused commitment: a signer asked for
    // one beyond its record would freeze the channel as rolled back.
    assert!(!b.log().contains("state-rollback-detected"), "{}", b.log());

    // The previous commitment confirms: its fee is at 2500 sat/kw, not 8000.
    let mut confirmed = false;
    for _ in 0..6 {
        chain.mine(1).await.expect("mine");
        if chain.spent_on_chain(&funding).await.expect("bcoin") {
            confirmed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert!(confirmed, "no commitment confirmed\n{}", b.log());
    let txs = chain.transactions(start_height + 1).await.expect("blocks");
    let commitment = spender(&txs, &funding)
        .expect("a commitment on chain")
        .clone();
    let fee = 1_000_000
        - commitment
            .output
            .iter()
            .map(|o| o.value.to_sat())
            .sum::<u64>();
    let weight = commitment.weight().to_wu();
    let feerate = fee * 1000 / weight;
    assert!(
        (2000..=3000).contains(&feerate),
        "the commitment on chain pays {feerate} sat/kw ({fee} sat for {weight} WU): not the previous one"
    );

    // Both sides get their balances back: A's at once, B's after its delay.
    chain
        .mine_until(200, "both balances swept into the wallets", || {
            onchain_sat(&a) > a_before && onchain_sat(&b) > b_before
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- A ---\n{}\n--- B ---\n{}", a.log(), b.log()));
    let (a_got, b_got) = (onchain_sat(&a) - a_before, onchain_sat(&b) - b_before);
    let a_share = 1_000_000 - PAID_SAT;
    assert!(
        b_got <= PAID_SAT && b_got > PAID_SAT - 10_000,
        "B got {b_got} sat back of {PAID_SAT}"
    );
    assert!(
        a_got < a_share && a_got > a_share - 20_000,
        "A got {a_got} sat back of {a_share} (less the commitment and sweep fees)"
    );
}
