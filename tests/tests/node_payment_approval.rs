//! `payment-approval` end to end: A's signer asks its operator before
//! signing payments above 30 000 sat. A small payment goes through at once;
//! a large one waits in `lnpd-cli pay` until the operator runs
//! `lnpd-signer approve <id>` on the signer's side, then completes; a denied
//! one fails with the rule named and leaves the channel usable.
//!
//! On a terminal the commands that wait show their progress: the channel's
//! confirmations (`openchannel --wait`), the approval the payment waits for
//! (`pay`), the chain sync (`waitsync`); with `--json` they print only the
//! result.

use std::process::Command;

use lnpd_tests::network::{
    channel_with, cli_on_terminal, field, node_id, ok, pay, wait_for, Chain,
};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::{signer_bin, SignerProcess, TempDir};

/// A's signer with an approval threshold.
fn approving_node(chain: &Chain) -> NodeProcess {
    let signer = SignerProcess::init_in(TempDir::new("approve-a-signer")).expect("signer init");
    let toml = signer.data_dir().join("signer.toml");
    let mut config = std::fs::read_to_string(&toml).expect("signer.toml");
    config.push_str("approval_above_sat = 30000\napproval_timeout_secs = 120\n");
    std::fs::write(&toml, config).expect("signer.toml");
    NodeProcess::start_with(signer, TempDir::new("approve-a"), "approve-a", &chain.bcoin)
        .expect("node a")
}

/// `lnpd-signer <args>` on A's signer data directory.
fn operator(a: &NodeProcess, args: &[&str]) -> String {
    let out = Command::new(signer_bin())
        .args(args)
        .arg("--data-dir")
        .arg(a.signer.data_dir())
        .output()
        .expect("lnpd-signer runs");
    assert!(
        out.status.success(),
        "lnpd-signer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Pays in a thread, answers the approval request with `answer` once it is
/// listed, and returns the payment's outcome.
fn pay_answering(
    a: &NodeProcess,
    b: &NodeProcess,
    msat: u64,
    answer: &str,
) -> Result<String, String> {
    std::thread::scope(|s| {
        let payment = s.spawn(|| pay(a, b, msat, answer).map_err(|e| e.to_string()));
        let id = std::cell::RefCell::new(String::new());
        assert!(
            wait_for(60, || {
                let listed = operator(a, &["pending", "--json"]);
                let first = listed
                    .lines()
                    .next()
                    .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
                if let Some(v) = first {
                    *id.borrow_mut() = v["id"].as_str().unwrap_or_default().to_string();
                }
                !id.borrow().is_empty()
            }),
            "the payment shows up in `lnpd-signer pending`\n{}",
            a.log()
        );
        assert!(!payment.is_finished(), "the payment waits for the operator");
        let id = id.into_inner();
        assert!(operator(a, &[answer, &id]).contains(&id));
        payment.join().expect("payment thread")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_payment_waits_for_the_operator() {
    let chain = Chain::start().await.expect("bcoin");
    let a = approving_node(&chain);
    let b = NodeProcess::start("approve-b", &chain.bcoin).expect("node b");
    chain.fund(&[&a]).await.expect("funding A");

    // The channel opened on a terminal with --wait: its confirmations shown,
    // blocks mined meanwhile, its final id printed once usable.
    let b_id = node_id(&b);
    ok(&a, &["connect", &format!("{b_id}@{}", b.p2p_addr())]);
    let mut open = cli_on_terminal(&a, &["openchannel", &b_id, "1000000", "--wait"]).unwrap();
    for _ in 0..120 {
        if open.try_wait().unwrap().is_some() {
            break;
        }
        chain.mine(1).await.expect("mining");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let out = open.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{shown}\n{}", a.log());
    assert!(shown.contains("opening 1000000 sat to"), "{shown}");
    assert!(shown.contains("confirmed"), "confirmations shown: {shown}");
    let chan = channel_with(&a, &b_id).expect("the channel");
    assert!(
        shown
            .trim_end()
            .ends_with(chan["channel_id"].as_str().unwrap()),
        "{shown}"
    );
    assert!(wait_for(60, || channel_with(&b, &node_id(&a))
        .is_some_and(|c| c["is_usable"] == true)));

    let small = pay(&a, &b, 10_000_000, "small").expect("a payment under the threshold");
    assert_eq!(field(&small, "status"), "succeeded");
    assert!(operator(&a, &["pending"]).contains("no payment waits"));

    let approved = pay_answering(&a, &b, 50_000_000, "approve").expect("approved payment");
    assert_eq!(field(&approved, "status"), "succeeded", "{approved}");
    assert!(a.log().contains("waits for the signer operator's approval"));
    assert!(operator(&a, &["log"]).contains("approved"));

    let denied = pay_answering(&a, &b, 60_000_000, "deny").expect_err("denied payment");
    assert!(
        denied.contains("payment-approval") && denied.contains("denied by the operator"),
        "{denied}"
    );
    // On a terminal, `pay` shows what it waits for: the operator's
    // approval, with the command to give it; with --json, only the result.
    for json in [false, true] {
        let invoice = ok(
            &b,
            &["invoice", "40000000", "--description", "on a terminal"],
        );
        let mut args = vec!["pay", invoice.as_str()];
        if json {
            args.insert(0, "--json");
        }
        let payment = cli_on_terminal(&a, &args).unwrap();
        let id = std::cell::RefCell::new(String::new());
        assert!(wait_for(60, || {
            let listed = operator(&a, &["pending", "--json"]);
            *id.borrow_mut() = listed
                .lines()
                .next()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v["id"].as_str().map(String::from))
                .unwrap_or_default();
            !id.borrow().is_empty()
        }));
        let id = id.into_inner();
        // Long enough for the progress line to name the approval.
        std::thread::sleep(std::time::Duration::from_secs(2));
        operator(&a, &["approve", &id]);
        let out = payment.wait_with_output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{shown}");
        if json {
            assert!(
                !shown.contains("paying:"),
                "no progress with --json: {shown}"
            );
            let v: serde_json::Value = serde_json::from_str(shown.trim()).expect("one JSON result");
            assert_eq!(v["status"], "succeeded");
        } else {
            assert!(
                shown.contains(&format!(
                    "paying: waits for the signer operator: `lnpd-signer approve {id}`"
                )),
                "{shown}"
            );
            assert!(shown.contains("succeeded"), "{shown}");
        }
    }

    // And the chain sync.
    let sync = cli_on_terminal(&a, &["waitsync"])
        .unwrap()
        .wait_with_output()
        .unwrap();
    let shown = String::from_utf8_lossy(&sync.stdout).to_string();
    assert!(
        sync.status.success() && shown.contains("synced at block"),
        "{shown}"
    );

    let after = pay(&a, &b, 10_000_000, "after").expect("the channel still works");
    assert_eq!(field(&after, "status"), "succeeded");
    let payments = ok(&b, &["payments"]);
    assert_eq!(payments.matches("succeeded").count(), 5, "{payments}");
}
