//! The node's ECDH (onion peeling, peer handshakes) does not wait for the
//! requests it already has in flight to the signer: it takes its own stream
//! of the same mutual-TLS connection. A signer whose signing request is held
//! open stands in for a slow durable write; before the side lane, the ECDH
//! waited behind it until its own timeout.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use lnpd_node::signer_client::SignerConnection;
use lnpd_proto::signer::{self as pb, reply, request};
use lnpd_signer::server::{self, Incoming, ServerLimits};
use lnpd_signer::testing::{Held, HeldBackend, ReleaseOnDrop};
use lnpd_tests::process::SignerProcess;

#[test]
fn ecdh_does_not_wait_for_a_signature_in_flight() {
    // TLS files as `lnpd-signer init` makes them (the process is not run).
    let signer = SignerProcess::init("side-lane").expect("init signer");
    let files = lnpd_signer::tls::TlsFiles::in_dir(&signer.data_dir().join("tls"));
    let tls = server::tls_config(&files).expect("server TLS");

    let held = Arc::new(Held::default());
    let _release = ReleaseOnDrop(held.clone());
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let backend = HeldBackend(held.clone());
    let server = std::thread::spawn(move || {
        // As the daemon runs: one worker.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("address"))
                .expect("address sent");
            let shutdown = async {
                let _ = stop_rx.await;
            };
            server::serve(
                backend,
                Incoming::Listen(listener),
                tls,
                ServerLimits::default(),
                None,
                shutdown,
            )
            .await
            .expect("serve");
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server listens");

    let conn = SignerConnection::start(&addr.to_string(), signer.node_tls()).expect("connection");
    // Connected and greeted.
    let pong = conn
        .call(
            request::Body::Ping(pb::PingRequest { nonce: vec![1] }),
            Duration::from_secs(10),
        )
        .expect("ping");
    assert!(matches!(pong, reply::Body::Ping(_)), "{pong:?}");

    // A signature asked for without waiting, held in the signer.
    let (done_tx, done_rx) = mpsc::channel();
    conn.submit(
        request::Body::SignHolderCommitment(pb::SignHolderCommitmentRequest {
            channel_keys_id: vec![1; 32],
            commitment_number: 1,
        }),
        Duration::from_secs(30),
        move |r| {
            let _ = done_tx.send(r);
        },
    );
    assert!(
        held.wait_holding(Duration::from_secs(10)),
        "the signature reached the signer"
    );

    // The ECDH is answered while the signature is still held.
    let ecdh = conn.call(
        request::Body::Ecdh(pb::EcdhRequest {
            recipient: 0,
            other_key: vec![2; 33],
            tweak: None,
        }),
        Duration::from_secs(5),
    );
    match ecdh {
        Ok(reply::Body::Ecdh(r)) => assert_eq!(r.shared_secret, vec![7; 32]),
        other => panic!("ECDH waited for the signature in flight: {other:?}"),
    }
    assert!(held.holding(), "the signature was still in flight");
    assert_eq!(conn.unanswered(), 1);

    // The held request then gets its own answer.
    held.release();
    let signed = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the held request is answered");
    assert!(signed.is_err(), "the test signer refuses it once released");
    let _ = stop_tx.send(());
    server.join().expect("server thread");
}
