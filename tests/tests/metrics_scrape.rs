//! Both daemons' metrics and health endpoints, scraped over HTTP while a
//! node opens a channel, pays, and has a withdrawal refused by its signer:
//! every figure is checked against what happened (the requests signed, the
//! refusal's rule, the channel, the peer, the payment, the chain height),
//! and `/healthz` follows the signer going down and coming back.

use lnpd_tests::network::{pay, wait_for, Chain};
use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::scrape::{http_get, scrape, value};
use lnpd_tests::{SignerProcess, TempDir};

fn addr_in(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("metrics.addr")).expect("metrics.addr written")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_what_the_daemons_do() {
    let chain = Chain::start().await.expect("bcoin");
    let signer = SignerProcess::init_in(TempDir::new("metrics-a-signer"))
        .expect("signer init")
        .with_run_args(&["--metrics-listen", "127.0.0.1:0"]);
    let mut a = NodeProcess::start_with_args(
        signer,
        TempDir::new("metrics-a"),
        "metrics-a",
        &chain.bcoin,
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .expect("node a");
    let b = NodeProcess::start("metrics-b", &chain.bcoin).expect("node b");
    let node_metrics = addr_in(&a.data_dir());
    let signer_metrics = addr_in(&a.signer.data_dir());

    // Before any channel: ready, nothing signed for a channel yet.
    let (status, body) = http_get(&signer_metrics, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("the store took a durable write"), "{body}");
    let (status, body) = http_get(&node_metrics, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let s = scrape(&signer_metrics).unwrap();
    assert_eq!(value(&s, "lnpd_signer_channels", &[]), Some(0.0));
    assert_eq!(
        value(
            &s,
            "lnpd_signer_requests_total",
            &[("op", "sign_counterparty_commitment")]
        ),
        None
    );
    assert_eq!(http_get(&node_metrics, "/nothing").unwrap().0, 404);

    chain.fund(&[&a]).await.expect("funding A");
    chain
        .open_channel(&a, &b, 1_000_000)
        .await
        .expect("channel");
    pay(&a, &b, 30_000_000, "scraped").expect("payment");
    let refused = a.cli(&[
        "withdraw",
        "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        "100000",
    ]);
    assert!(!refused.status.success());

    // The signer: what it signed, what it refused and by which rule, its
    // durable writes, its channel and the chain it checked.
    let s = scrape(&signer_metrics).unwrap();
    let ok = |op| {
        value(
            &s,
            "lnpd_signer_requests_total",
            &[("op", op), ("outcome", "ok")],
        )
        .unwrap_or(0.0)
    };
    assert!(ok("sign_counterparty_commitment") >= 2.0);
    assert!(ok("validate_holder_commitment") >= 2.0);
    assert!(ok("sign_psbt") >= 1.0, "the funding transaction");
    assert_eq!(
        value(
            &s,
            "lnpd_signer_refusals_total",
            &[("rule", "onchain-outputs-known")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "lnpd_signer_requests_total",
            &[("op", "sign_psbt"), ("outcome", "policy")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &s,
            "lnpd_signer_durable_write_duration_seconds_count",
            &[("store", "redb")]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    assert!(
        value(
            &s,
            "lnpd_signer_request_duration_seconds_count",
            &[("op", "sign_counterparty_commitment")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // The backend's status is read at most once per STATUS_FOR: these
    // gauges may lag the channel and the chain by that long.
    assert!(wait_for(30, || {
        let s = scrape(&signer_metrics).unwrap();
        value(&s, "lnpd_signer_channels", &[]) == Some(1.0)
            && value(&s, "lnpd_signer_pending_approvals", &[]) == Some(0.0)
            && value(&s, "lnpd_signer_chain_height", &[]).unwrap_or(0.0) > 100.0
    }));

    // The node: its peer, its usable channel, the payment, the signer's
    // round trips, the chain (caught up with the backend).
    let n = scrape(&node_metrics).unwrap();
    assert_eq!(value(&n, "lnpd_node_peers", &[]), Some(1.0));
    assert_eq!(
        value(&n, "lnpd_node_channels", &[("state", "usable")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &n,
            "lnpd_node_payments_total",
            &[("direction", "outbound"), ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&n, "lnpd_node_signer_available", &[]), Some(1.0));
    assert!(
        value(
            &n,
            "lnpd_node_signer_round_trip_duration_seconds_count",
            &[("op", "sign_counterparty_commitment")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    // Paid back: the incoming HTLC's onion ECDH was asked for when the
    // HTLC arrived, and LDK took that answer.
    pay(&b, &a, 1_000_000, "back").expect("payment back");
    assert!(wait_for(30, || {
        let n = scrape(&node_metrics).unwrap();
        value(
            &n,
            "lnpd_node_payments_total",
            &[("direction", "inbound"), ("outcome", "succeeded")],
        ) == Some(1.0)
    }));
    let n = scrape(&node_metrics).unwrap();
    assert!(value(&n, "lnpd_node_ecdh_total", &[("asked", "ahead")]).unwrap_or(0.0) >= 1.0);
    assert!(
        value(&n, "lnpd_node_ecdh_total", &[("asked", "now")]).unwrap_or(0.0) >= 1.0,
        "the peer handshake's ECDH"
    );
    assert!(wait_for(30, || {
        let n = scrape(&node_metrics).unwrap();
        value(&n, "lnpd_node_chain_lag_blocks", &[]) == Some(0.0)
            && value(&n, "lnpd_node_chain_height", &[])
                == value(&n, "lnpd_node_chain_backend_height", &[])
    }));

    // The signer down: the node is not ready, and says why; back: ready.
    a.signer.kill9();
    let (status, body) = http_get(&node_metrics, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not answer"), "{body}");
    assert!(
        http_get(&signer_metrics, "/healthz").is_err(),
        "the signer is gone"
    );
    a.signer.restart().expect("signer restarts");
    assert!(
        wait_for(30, || http_get(&node_metrics, "/healthz")
            .is_ok_and(|(s, _)| s == 200)),
        "the node did not find its signer again"
    );
}
