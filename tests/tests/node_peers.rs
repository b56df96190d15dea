//! Two `lnpd` nodes, each with its own `lnpd-signer`, on a bcoin regtest
//! chain: each reports its signer's node id and the chain height, and they
//! connect to each other (the BOLT 8 handshake's ECDH done by the signers).

use lnpd_tests::node_process::NodeProcess;
use lnpd_tests::regtest::Bcoin;

fn json_field(out: &str, field: &str) -> String {
    let key = format!("\"{field}\":");
    let rest = &out[out.find(&key).unwrap_or_else(|| panic!("{field} in {out}")) + key.len()..];
    rest.trim_start_matches('"')
        .split(['"', ',', '}'])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sync_the_chain_and_connect_through_their_signers() {
    let bcoin = Bcoin::start().await.expect("bcoin");
    let rpc = bcoin.rpc(2500).unwrap();
    let a = NodeProcess::start("node-a", &bcoin).expect("node a");
    let b = NodeProcess::start("node-b", &bcoin).expect("node b");

    let info = |n: &NodeProcess| {
        let out = n.cli(&["--json", "getinfo"]);
        assert!(
            out.status.success(),
            "getinfo: {} / {}",
            String::from_utf8_lossy(&out.stderr),
            n.log()
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let a_info = info(&a);
    let a_id = json_field(&a_info, "node_id");
    // The node's id is its signer's: the node holds no key of its own.
    let mut signer =
        lnpd_proto::client::connect(a.signer.addr.as_deref().unwrap(), &a.signer.node_tls())
            .await
            .unwrap();
    let Ok(Ok(lnpd_proto::signer::reply::Body::Info(si))) = lnpd_proto::client::call(
        &mut signer,
        lnpd_proto::signer::request::Body::Info(lnpd_proto::signer::InfoRequest {
            protocol_version: lnpd_proto::SIGNER_PROTOCOL_VERSION,
            ..Default::default()
        }),
    )
    .await
    else {
        panic!("signer info")
    };
    assert_eq!(a_id, hex::encode(si.node_id));
    assert_eq!(json_field(&a_info, "signer_connected"), "true");
    assert_eq!(a_id.len(), 66);

    // New blocks reach the node through its chain poller.
    let addr = bitcoin::Address::p2wpkh(
        &bitcoin::CompressedPublicKey(
            bitcoin::secp256k1::PublicKey::from_slice(&hex::decode(&a_id).unwrap()).unwrap(),
        ),
        bitcoin::Network::Regtest,
    );
    bcoin.mine(&rpc, 5, &addr).await.unwrap();
    let mut height = String::new();
    for _ in 0..100 {
        height = json_field(&info(&a), "block_height");
        if height == "5" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(height, "5", "{}", a.log());

    let b_id = json_field(&info(&b), "node_id");
    let out = a.cli(&["connect", &format!("{b_id}@{}", b.p2p_addr())]);
    assert!(
        out.status.success(),
        "connect: {} / {} / {}",
        String::from_utf8_lossy(&out.stderr),
        a.log(),
        b.log()
    );
    let peers = String::from_utf8_lossy(&a.cli(&["peers"]).stdout).to_string();
    assert!(peers.contains(&b_id), "A's peers: {peers}");
    let mut b_peers = String::new();
    for _ in 0..50 {
        b_peers = String::from_utf8_lossy(&b.cli(&["peers"]).stdout).to_string();
        if b_peers.contains(&a_id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(b_peers.contains(&a_id), "B's peers: {b_peers}");

    // A bad token is refused with a clear message.
    std::fs::write(a.data_dir().join("admin.token"), "wrong").unwrap();
    let out = a.cli(&["getinfo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));
}
