//! Three nodes in a line, A—B—C, each with its own signer: A pays C's
//! invoices through B. B forwards with its signer's signatures on both
//! channels and earns its fee.

use lnpd_tests::network::{field, node_id, ok, pay, Chain};
use lnpd_tests::node_process::NodeProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pays_c_through_b() {
    let chain = Chain::start().await.expect("bcoin");
    let a = NodeProcess::start("line-a", &chain.bcoin).expect("node a");
    let b = NodeProcess::start("line-b", &chain.bcoin).expect("node b");
    let c = NodeProcess::start("line-c", &chain.bcoin).expect("node c");
    chain.fund(&[&a, &b]).await.expect("funding");
    chain.open_channel(&a, &b, 1_000_000).await.expect("A-B");
    chain.open_channel(&b, &c, 1_000_000).await.expect("B-C");

    let mut fees = 0u64;
    for i in 0..3 {
        let out = pay(&a, &c, 20_000_000, &format!("a-to-c {i}")).unwrap_or_else(|e| {
            panic!(
                "{e}\n--- A ---\n{}\n--- B ---\n{}\n--- C ---\n{}",
                a.log(),
                b.log(),
                c.log()
            )
        });
        assert_eq!(field(&out, "status"), "succeeded");
        fees += field(&out, "fee_msat").parse::<u64>().unwrap();
    }
    assert!(fees > 0, "B charged its forwarding fee");
    let received = ok(&c, &["payments"]);
    assert_eq!(
        received
            .lines()
            .filter(|l| l.contains("inbound") && l.contains("succeeded"))
            .count(),
        3,
        "{received}"
    );
    assert_eq!(b.log().matches("forwarded a payment").count(), 3);
    // C is not A's peer: the payment went through B.
    assert!(!ok(&a, &["peers"]).contains(&node_id(&c)));
}
