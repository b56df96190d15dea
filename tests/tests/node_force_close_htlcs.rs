//! Force closes with HTLCs in flight, on anchor channels, on bcoin regtest.
//! Payees hold payments (`invoice --hold`), so the HTLCs are in both
//! commitments when a channel is force-closed; what happens to each on
//! chain is then followed into the wallets. Every signature on the way
//! (commitment, anchor child, HTLC transactions and their fee inputs,
//! claims, sweeps) comes from the node's signer and passes its policy.

use std::process::{Child, Command, Stdio};

use bitcoin::{OutPoint, Transaction};
use lnpd_tests::network::{channel_with, node_id, ok, onchain_sat, pay, spender, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;

/// The delay LDK asks the peer to wait (BOLT 2's `to_self_delay`), its default.
const TO_SELF_DELAY: u32 = 144;
const CHANNEL_SAT: u64 = 1_000_000;
/// Below the 10% of the channel LDK lets in flight towards a node.
const HTLC_SAT: u64 = 60_000;
/// What a node's anchor child, HTLC transaction fee inputs and sweeps may
/// cost it at most, together.
const FEES_SAT: u64 = 40_000;

/// Starts paying `invoice` from `payer` without waiting for the outcome
/// (a held payment has none until the payee answers).
fn pay_in_background(payer: &NodeProcess, invoice: &str) -> Child {
    Command::new(lnpd_tests::process::bin("lnpd-cli"))
        .arg("--data-dir")
        .arg(payer.data_dir())
        .args(["pay", invoice, "--timeout", "900"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lnpd-cli runs")
}

/// The payments of `n` with `status`, as (hash, direction).
fn payments_with(n: &NodeProcess, status: &str) -> Vec<(String, String)> {
    ok(n, &["--json", "payments"])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|p| p["status"] == status)
        .map(|p| {
            (
                p["payment_hash"].as_str().unwrap_or_default().to_string(),
                p["direction"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `payer` pays a hold invoice of `payee` for `sat`; returns the payment
/// hash once the payee holds it, and the paying process.
fn held(payer: &NodeProcess, payee: &NodeProcess, sat: u64) -> (String, Child) {
    let before = payments_with(payee, "held").len();
    let invoice = ok(
        payee,
        &[
            "invoice",
            &(sat * 1000).to_string(),
            "--hold",
            "--description",
            "held",
        ],
    );
    let child = pay_in_background(payer, &invoice);
    assert!(
        wait_for(60, || payments_with(payee, "held").len() > before),
        "the payee never held the payment\n--- payer ---\n{}\n--- payee ---\n{}",
        payer.log(),
        payee.log()
    );
    let hash = payments_with(payee, "held")
        .pop()
        .expect("a held payment")
        .0;
    (hash, child)
}

/// Both nodes' logs and their signers', for a failure message.
fn logs(a: &NodeProcess, b: &NodeProcess) -> String {
    format!(
        "--- A ---\n{}\n--- A's signer ---\n{}\n--- B ---\n{}\n--- B's signer ---\n{}",
        a.log(),
        a.signer.log(),
        b.log(),
        b.signer.log()
    )
}

/// Mines block by block (up to `max`) until `outpoint` is spent on chain;
/// returns the spending transaction.
async fn mine_until_spent(
    chain: &Chain,
    from_height: u32,
    outpoint: &OutPoint,
    max: u32,
    what: &str,
    a: &NodeProcess,
    b: &NodeProcess,
) -> Transaction {
    for _ in 0..max {
        if chain.spent_on_chain(outpoint).await.expect("gettxout") {
            let txs = chain.transactions(from_height).await.expect("chain");
            return spender(&txs, outpoint)
                .cloned()
                .unwrap_or_else(|| panic!("{what}: {outpoint} spent, spender not found"));
        }
        chain.mine(1).await.expect("mining");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    panic!("{what}: not after {max} blocks\n{}", logs(a, b))
}

/// The output of `tx` holding `sat` (one HTLC of that value).
fn output_of(tx: &Transaction, sat: u64) -> OutPoint {
    let vout = tx
        .output
        .iter()
        .position(|o| o.value.to_sat() == sat)
        .unwrap_or_else(|| panic!("no output of {sat} sat in {tx:?}"));
    OutPoint::new(tx.compute_txid(), vout as u32)
}

/// A second-stage HTLC transaction of an anchor channel: the HTLC's value
/// whole at the input's index, the fee from added wallet inputs.
fn check_second_stage(tx: &Transaction, htlc: &OutPoint) -> OutPoint {
    let i = tx
        .input
        .iter()
        .position(|x| x.previous_output == *htlc)
        .expect("spends the HTLC");
    assert!(
        tx.input.len() >= 2,
        "the zero-fee HTLC transaction got a wallet input for its fee: {tx:?}"
    );
    assert_eq!(
        tx.output[i].value.to_sat(),
        HTLC_SAT,
        "the HTLC's value goes whole to the delayed output"
    );
    OutPoint::new(tx.compute_txid(), i as u32)
}

struct Net {
    chain: Chain,
    a: NodeProcess,
    b: NodeProcess,
    chan_id: String,
    funding: OutPoint,
    start_height: u32,
}

/// A channel of `CHANNEL_SAT` from A to B; both wallets funded.
async fn net(tag: &str) -> Net {
    let chain = Chain::start().await.expect("bcoin");
    let a = NodeProcess::start(&format!("{tag}-a"), &chain.bcoin).expect("node a");
    let b = NodeProcess::start(&format!("{tag}-b"), &chain.bcoin).expect("node b");
    let (_, start_height) = chain.rpc.best_block().await.unwrap();
    chain.fund(&[&a, &b]).await.expect("funding");
    let chan_id = chain
        .open_channel(&a, &b, CHANNEL_SAT)
        .await
        .expect("channel");
    let funding = channel_with(&a, &node_id(&b)).expect("channel")["funding_txo"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    Net {
        chain,
        a,
        b,
        chan_id,
        funding,
        start_height: start_height + 1,
    }
}

/// We (A) force-close with an HTLC we offered: at its expiry our
/// HTLC-timeout transaction, fee-bumped with a wallet input, confirms; after
/// the CSV delay its output is swept into our wallet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_offered_htlc_times_out_on_chain_and_comes_back() {
    let Net {
        chain,
        a,
        b,
        chan_id,
        funding,
        start_height,
    } = net("htlc-out").await;
    let (_, mut payer) = held(&a, &b, HTLC_SAT);
    chain.sync(&[&a, &b]).await.unwrap();
    let a_before = onchain_sat(&a);

    ok(&a, &["closechannel", &chan_id, "--force"]);
    let commitment =
        mine_until_spent(&chain, start_height, &funding, 20, "A's commitment", &a, &b).await;
    let htlc = output_of(&commitment, HTLC_SAT);
    let timeout_tx = mine_until_spent(
        &chain,
        start_height,
        &htlc,
        400,
        "A's HTLC-timeout transaction",
        &a,
        &b,
    )
    .await;
    assert!(!timeout_tx.lock_time.is_block_time());
    let second_stage = check_second_stage(&timeout_tx, &htlc);
    mine_until_spent(
        &chain,
        start_height,
        &second_stage,
        TO_SELF_DELAY + 40,
        "the HTLC's value swept into A's wallet",
        &a,
        &b,
    )
    .await;
    let _ = payer.kill();
    chain.mine(2).await.unwrap();
    chain.sync(&[&a]).await.unwrap();
    let to_local: u64 = commitment
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .filter(|v| *v > HTLC_SAT)
        .sum();
    // to_local is swept by now too (its delay ended before the HTLC's).
    let back = onchain_sat(&a).saturating_sub(a_before);
    let expected = to_local + HTLC_SAT;
    assert!(
        back <= expected && back > expected - FEES_SAT,
        "A got {back} sat back of {expected} (to_local {to_local}, HTLC {HTLC_SAT})\n{}",
        logs(&a, &b)
    );
    let _ = payer.wait();
}

/// We (B) force-close holding a payment, then settle it: our HTLC-success
/// transaction (preimage, wallet input for the fee) confirms and, after the
/// delay, the value is in our wallet; the payer learns the preimage on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_claim_a_received_htlc_with_its_preimage_after_our_force_close() {
    let Net {
        chain,
        a,
        b,
        chan_id,
        funding,
        start_height,
    } = net("htlc-in").await;
    let (hash, mut payer) = held(&a, &b, HTLC_SAT);
    chain.sync(&[&a, &b]).await.unwrap();
    let b_before = onchain_sat(&b);

    ok(&b, &["closechannel", &chan_id, "--force"]);
    let commitment =
        mine_until_spent(&chain, start_height, &funding, 20, "B's commitment", &a, &b).await;
    ok(&b, &["settleinvoice", &hash]);
    let htlc = output_of(&commitment, HTLC_SAT);
    let success_tx = mine_until_spent(
        &chain,
        start_height,
        &htlc,
        30,
        "B's HTLC-success transaction",
        &a,
        &b,
    )
    .await;
    let second_stage = check_second_stage(&success_tx, &htlc);
    assert!(
        success_tx.input.iter().any(|x| x.witness.len() == 5),
        "the HTLC-success witness carries the preimage"
    );
    mine_until_spent(
        &chain,
        start_height,
        &second_stage,
        TO_SELF_DELAY + 40,
        "the HTLC's value swept into B's wallet",
        &a,
        &b,
    )
    .await;
    chain.mine(2).await.unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    let got = onchain_sat(&b).saturating_sub(b_before);
    assert!(
        got <= HTLC_SAT && got > HTLC_SAT - FEES_SAT,
        "B got {got} sat for its {HTLC_SAT} sat HTLC\n{}",
        logs(&a, &b)
    );
    assert!(
        wait_for(30, || payments_with(&a, "succeeded")
            .iter()
            .any(|(h, _)| *h == hash)),
        "A learnt the preimage from the chain: the payment succeeded\n{}",
        logs(&a, &b)
    );
    let _ = payer.kill();
    let _ = payer.wait();
}

/// The peer (B) force-closes with HTLCs both ways: we (A) claim from its
/// commitment the HTLC it offered us (with the preimage, once we settle),
/// the HTLC we offered (after its expiry) and our balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_force_closes_with_htlcs_both_ways_and_we_claim_ours() {
    let Net {
        chain,
        a,
        b,
        chan_id: _,
        funding,
        start_height,
    } = net("htlc-both").await;
    // B gets a balance, then an HTLC each way is held.
    pay(&a, &b, 90_000_000, "balance").unwrap();
    // The payment's HTLC is removed from both commitments before the next.
    let b_id = node_id(&b);
    assert!(wait_for(30, || {
        channel_with(&a, &b_id).is_some_and(|c| {
            c["outbound_msat"].as_u64().unwrap_or(0) + c["inbound_msat"].as_u64().unwrap_or(0) > 0
                && payments_with(&b, "succeeded").len() == 1
        })
    }));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, mut a_pays) = held(&a, &b, HTLC_SAT);
    const B_HTLC_SAT: u64 = 40_000;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (a_holds, mut b_pays) = held(&b, &a, B_HTLC_SAT);
    chain.sync(&[&a, &b]).await.unwrap();
    let a_before = onchain_sat(&a);

    let b_chan = channel_with(&b, &node_id(&a)).expect("B's channel");
    ok(
        &b,
        &[
            "closechannel",
            b_chan["channel_id"].as_str().unwrap(),
            "--force",
        ],
    );
    let commitment =
        mine_until_spent(&chain, start_height, &funding, 20, "B's commitment", &a, &b).await;
    // A settles what B offered it: claimed on B's commitment with the preimage.
    ok(&a, &["settleinvoice", &a_holds]);
    let theirs = output_of(&commitment, B_HTLC_SAT);
    let claim = mine_until_spent(
        &chain,
        start_height,
        &theirs,
        30,
        "A's claim of B's HTLC",
        &a,
        &b,
    )
    .await;
    assert!(
        claim
            .input
            .iter()
            .any(|x| x.previous_output == theirs && x.witness.len() == 3),
        "A's claim carries the preimage (signature, preimage, script)"
    );
    // The HTLC A offered comes back to A after its expiry.
    let ours = output_of(&commitment, HTLC_SAT);
    mine_until_spent(
        &chain,
        start_height,
        &ours,
        400,
        "A's claim of its timed-out HTLC",
        &a,
        &b,
    )
    .await;
    chain.mine(3).await.unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    // A's balance on B's commitment (to_remote) is A's too.
    let to_remote: u64 = commitment
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .filter(|v| *v > CHANNEL_SAT / 2)
        .sum();
    let expected = to_remote + HTLC_SAT + B_HTLC_SAT;
    assert!(
        wait_for(60, || {
            let back = onchain_sat(&a).saturating_sub(a_before);
            back <= expected && back > expected - FEES_SAT
        }),
        "A got {} sat back of {expected} (to_remote {to_remote}, HTLCs {HTLC_SAT} + \
         {B_HTLC_SAT})\n{}",
        onchain_sat(&a).saturating_sub(a_before),
        logs(&a, &b)
    );
    for c in [&mut a_pays, &mut b_pays] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Copies the files of `from` into `to` (recursively), replacing them.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("directory");
    for e in std::fs::read_dir(from).expect("directory").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// Copies a signer's durable state (store and witness) between directories.
fn copy_signer_state(from: &std::path::Path, to: &std::path::Path) {
    for file in ["state.redb", "state.witness"] {
        std::fs::copy(from.join(file), to.join(file)).expect("signer state copied");
    }
}

/// The peer (B) broadcasts a revoked commitment (its node and signer run
/// from a backup taken before it paid us): our justice transaction takes
/// everything, its balance included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_commitment_is_answered_with_justice() {
    let Net {
        chain,
        a,
        mut b,
        chan_id: _,
        funding,
        start_height,
    } = net("justice").await;
    pay(&a, &b, 90_000_000, "B's balance").unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    // B's state now, with 90 000 sat of its own in the channel.
    let backup = lnpd_tests::process::TempDir::new("justice-backup");
    b.stop_node();
    copy_dir(&b.data_dir(), &backup.path.join("node"));
    // The whole signer state as a cheater would keep it: the store and the
    // signer's own witness of how far it got (restoring the store alone is
    // refused as a rollback).
    copy_signer_state(&b.signer.data_dir(), &backup.path);
    b.restart_node(&[]).expect("B restarts");
    ok(
        &b,
        &["connect", &format!("{}@{}", node_id(&a), a.p2p_addr())],
    );
    assert!(wait_for(30, || lnpd_tests::network::usable_with(
        &b,
        &node_id(&a)
    )));
    // B pays most of it back: the backup's commitment is revoked.
    pay(&b, &a, 70_000_000, "back to A").unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    let a_before = onchain_sat(&a);

    // B cheats: node and signer restored from the backup, the old state
    // broadcast while A is not connected.
    b.stop_node();
    b.signer.kill9();
    copy_dir(&backup.path.join("node"), &b.data_dir());
    copy_signer_state(&backup.path, &b.signer.data_dir());
    b.signer.restart().expect("B's signer restarts");
    b.restart_node(&[]).expect("B restarts on the old state");
    let b_chan = channel_with(&b, &node_id(&a)).expect("B's (stale) channel");
    ok(
        &b,
        &[
            "closechannel",
            b_chan["channel_id"].as_str().unwrap(),
            "--force",
        ],
    );
    let revoked = mine_until_spent(
        &chain,
        start_height,
        &funding,
        20,
        "B's revoked commitment",
        &a,
        &b,
    )
    .await;
    let b_old = output_of(&revoked, 90_000);
    let justice = mine_until_spent(
        &chain,
        start_height,
        &b_old,
        30,
        "A's justice transaction",
        &a,
        &b,
    )
    .await;
    assert!(
        justice.output.iter().all(|o| o.value.to_sat() > 0),
        "{justice:?}"
    );
    chain.mine(3).await.unwrap();
    chain.sync(&[&a]).await.unwrap();
    // A has its own balance (to_remote on B's commitment) and B's.
    let in_channel: u64 = revoked
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .filter(|v| *v > 1_000)
        .sum();
    // Its own output (to_remote) comes through the sweeper, 6 blocks on.
    let whole = || {
        let back = onchain_sat(&a).saturating_sub(a_before);
        back <= in_channel && back > in_channel - FEES_SAT
    };
    if chain.mine_until(20, "A has it all", whole).await.is_err() {
        panic!(
            "A got {} sat of the {in_channel} sat the revoked commitment holds\n{}",
            onchain_sat(&a).saturating_sub(a_before),
            logs(&a, &b)
        );
    }
}
