//! Two lnpd nodes with their own signers on bcoin regtest: fund, open a
//! channel (the funding transaction signed only after the first commitment
//! is countersigned), pay invoices both ways, close cooperatively; the
//! fundee's close output arrives in its on-chain wallet.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, CompressedPublicKey, Network};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::regtest::{Bcoin, SEGWIT_ACTIVATION_HEIGHT};

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn ok(n: &NodeProcess, args: &[&str]) -> String {
    let o = n.cli(args);
    assert!(
        o.status.success(),
        "lnpd-cli {args:?}: {}\n--- node log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        n.log()
    );
    text(&o)
}

/// Whether `lnpd-cli channels` lists a usable channel.
fn usable(n: &NodeProcess) -> bool {
    ok(n, &["channels"])
        .lines()
        .any(|l| l.ends_with(" usable") && !l.ends_with("not usable"))
}

fn field(out: &str, name: &str) -> String {
    let key = format!("\"{name}\":");
    out[out.find(&key).unwrap_or_else(|| panic!("{name} in {out}")) + key.len()..]
        .trim_start_matches('"')
        .split(['"', ',', '}'])
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pay_both_ways_and_close() {
    let bcoin = Bcoin::start().await.expect("bcoin");
    let rpc = bcoin.rpc(2500).unwrap();
    let a = NodeProcess::start("chan-a", &bcoin).expect("node a");
    let b = NodeProcess::start("chan-b", &bcoin).expect("node b");
    let s = Secp256k1::new();
    let miner = Address::p2wpkh(
        &CompressedPublicKey(PublicKey::from_secret_key(
            &s,
            &SecretKey::from_slice(&[9; 32]).unwrap(),
        )),
        Network::Regtest,
    );

    let a_addr = Address::from_str(&ok(&a, &["newaddress"]))
        .unwrap()
        .require_network(Network::Regtest)
        .unwrap();
    bcoin.mine(&rpc, 10, &a_addr).await.unwrap();
    bcoin
        .mine(&rpc, SEGWIT_ACTIVATION_HEIGHT, &miner)
        .await
        .unwrap();
    let wait = |n: &NodeProcess, what: &str, cond: &dyn Fn(&NodeProcess) -> bool| {
        for _ in 0..300 {
            if cond(n) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n--- log ---\n{}", n.log());
    };
    wait(&a, "A's coins", &|n| {
        field(
            &text(&n.cli(&["--json", "balance"])),
            "onchain_spendable_sat",
        ) != "0"
    });

    let b_id = field(&ok(&b, &["--json", "getinfo"]), "node_id");
    ok(&a, &["connect", &format!("{b_id}@{}", b.p2p_addr())]);
    ok(&a, &["openchannel", &b_id, "1000000"]);

    // The funding transaction is signed and broadcast once B countersigned A's first commitment.
    for _ in 0..60 {
        bcoin.mine(&rpc, 1, &miner).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if usable(&a) && usable(&b) {
            break;
        }
    }
    assert!(
        usable(&a),
        "channel not usable\n--- A ---\n{}\n--- B ---\n{}",
        a.log(),
        b.log()
    );

    for i in 0..5 {
        let inv = ok(
            &b,
            &[
                "invoice",
                "10000000",
                "--description",
                &format!("a-to-b {i}"),
            ],
        );
        let o = a.cli(&["--json", "pay", &inv, "--timeout", "10"]);
        assert!(
            o.status.success(),
            "payment {i}: {}\n--- A ---\n{}\n--- B ---\n{}\n--- A's signer ---\n{}\n--- B's signer ---\n{}",
            String::from_utf8_lossy(&o.stderr),
            a.log(),
            b.log(),
            a.signer.log(),
            b.signer.log()
        );
        assert_eq!(field(&text(&o), "status"), "succeeded");
    }
    for i in 0..2 {
        let inv = ok(
            &a,
            &[
                "invoice",
                "10000000",
                "--description",
                &format!("b-to-a {i}"),
            ],
        );
        assert_eq!(
            field(&ok(&b, &["--json", "pay", &inv]), "status"),
            "succeeded"
        );
    }
    assert!(ok(&a, &["payments"]).lines().count() >= 7);

    let chan_id = ok(&a, &["channels"])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    ok(&a, &["closechannel", &chan_id]);
    for _ in 0..60 {
        bcoin.mine(&rpc, 1, &miner).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if field(
            &text(&b.cli(&["--json", "balance"])),
            "onchain_spendable_sat",
        ) != "0"
        {
            break;
        }
    }
    // B received 5 x 10,000 and sent 2 x 10,000; as fundee it pays no fee.
    assert_eq!(
        field(
            &text(&b.cli(&["--json", "balance"])),
            "onchain_spendable_sat"
        ),
        "30000",
        "\n--- B ---\n{}",
        b.log()
    );
}
