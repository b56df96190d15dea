//! Two lnpd nodes with their own signers on bcoin regtest: fund, open a
//! channel (the funding transaction signed only after the first commitment
//! is countersigned), pay 20 invoices each way, close cooperatively; the
//! final on-chain balances are the payments made minus the fees of the
//! funding and closing transactions, read back from the chain; the close
//! outputs stay in the wallets, unspent. The signer
//! follows the chain height from the headers the node feeds it.

use bitcoin::OutPoint;
use lnpd_tests::network::{
    channel_with, fee_of, field, node_id, ok, onchain_sat, pay, spender, wait_for, Chain,
};
use lnpd_tests::node_process::NodeProcess;

const PAYMENTS: u64 = 20;
const A_TO_B_MSAT: u64 = 12_000_000;
const B_TO_A_MSAT: u64 = 5_000_000;
const CHANNEL_SAT: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pays_twenty_each_way_and_balances_add_up_on_chain() {
    let chain = Chain::start().await.expect("bcoin");
    let a = NodeProcess::start("chan-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("chan-b", &chain.bcoin).expect("node b");
    let (_, start_height) = chain.rpc.best_block().await.unwrap();
    chain.fund(&[&a]).await.expect("funding A");
    let a_before = onchain_sat(&a);
    assert_eq!(onchain_sat(&b), 0);

    let chan_id = chain
        .open_channel(&a, &b, CHANNEL_SAT)
        .await
        .expect("channel");
    let b_id = node_id(&b);
    // The signer follows the chain from the headers the node feeds it.
    assert!(
        wait_for(30, || {
            let info = ok(&a, &["--json", "getinfo"]);
            field(&info, "signer_block_height") == field(&info, "block_height")
        }),
        "A's signer checked the headers up to the tip: {}",
        ok(&a, &["--json", "getinfo"])
    );

    for i in 0..PAYMENTS {
        let out = pay(&a, &b, A_TO_B_MSAT, &format!("a-to-b {i}")).unwrap_or_else(|e| {
            panic!(
                "{e}\n--- A ---\n{}\n--- B ---\n{}\n--- A's signer ---\n{}",
                a.log(),
                b.log(),
                a.signer.log()
            )
        });
        assert_eq!(field(&out, "status"), "succeeded");
        assert_eq!(
            field(&out, "fee_msat"),
            "0",
            "a direct payment pays no routing fee"
        );
    }
    for i in 0..PAYMENTS {
        let out = pay(&b, &a, B_TO_A_MSAT, &format!("b-to-a {i}"))
            .unwrap_or_else(|e| panic!("{e}\n--- B ---\n{}", b.log()));
        assert_eq!(field(&out, "status"), "succeeded");
    }
    let b_net_sat = PAYMENTS * (A_TO_B_MSAT - B_TO_A_MSAT) / 1000;
    let listed = ok(&a, &["payments"]);
    assert_eq!(
        listed.lines().filter(|l| l.contains("succeeded")).count() as u64,
        2 * PAYMENTS,
        "{listed}"
    );
    // Channel balances as the node reports them (B's is exact: it pays no commitment fee).
    let b_chan = channel_with(&b, &node_id(&a)).expect("B's channel");
    assert!(b_chan["outbound_msat"].as_u64().unwrap() <= b_net_sat * 1000);
    assert!(b_chan["inbound_msat"].as_u64().unwrap() > 0);
    let funding: OutPoint = channel_with(&a, &b_id).expect("A's channel")["funding_txo"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    ok(&a, &["closechannel", &chan_id]);
    chain
        .mine_until(60, "close output in B's wallet", || onchain_sat(&b) > 0)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- B ---\n{}", b.log()));
    chain.mine(1).await.unwrap();
    assert!(wait_for(30, || onchain_sat(&a) > a_before - CHANNEL_SAT));

    let txs = chain.transactions(start_height + 1).await.expect("chain");
    let funding_tx = txs
        .get(&funding.txid)
        .expect("funding transaction on chain");
    let close_tx = spender(&txs, &funding).expect("closing transaction on chain");
    let funding_fee = fee_of(&txs, funding_tx).unwrap();
    let close_fee = fee_of(&txs, close_tx).unwrap();
    assert!(funding_fee > 0 && close_fee > 0);

    // B, the fundee, pays no fee: it has exactly what it was paid, net.
    assert_eq!(onchain_sat(&b), b_net_sat, "\n--- B ---\n{}", b.log());
    // A paid B, the funding fee and (as funder) the closing fee.
    let a_after = a_before - b_net_sat - funding_fee - close_fee;
    assert_eq!(
        onchain_sat(&a),
        a_after,
        "funding fee {funding_fee}, closing fee {close_fee}\n--- A ---\n{}",
        a.log()
    );

    // One owner per coin: the close outputs are the wallets' and nobody
    // sweeps them again (no second fee), block after block.
    chain.mine(8).await.unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    chain.mine(2).await.unwrap();
    chain.sync(&[&a, &b]).await.unwrap();
    let txs = chain.transactions(start_height + 1).await.expect("chain");
    let close_txid = close_tx.compute_txid();
    assert_eq!(close_tx.output.len(), 2, "both sides have a close output");
    for vout in 0..close_tx.output.len() as u32 {
        let out = OutPoint::new(close_txid, vout);
        assert!(
            spender(&txs, &out).is_none(),
            "close output {out} was spent again\n--- A ---\n{}\n--- B ---\n{}",
            a.log(),
            b.log()
        );
    }
    assert_eq!(onchain_sat(&b), b_net_sat, "\n--- B ---\n{}", b.log());
    assert_eq!(onchain_sat(&a), a_after, "\n--- A ---\n{}", a.log());
}
