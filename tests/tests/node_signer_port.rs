//! The node's port for a signer that dials out (`--signer-listen`), before
//! any TLS: what a stranger gets. The node speaks first there (it is the
//! TLS client), so a connection it will try to authenticate receives a TLS
//! ClientHello, and one it refuses is closed with nothing sent:
//! `--signer-allow-from` closes connections from other addresses, and one
//! address cannot hold more than two handshakes (silent connections cannot
//! keep the signer out).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use lnpd_node::signer_client::inbound::InboundTransport;
use lnpd_tests::{SignerProcess, TempDir};

/// What the node sends first on a new connection: `Some(first byte)`, or
/// `None` when it closes it without a word.
fn greeting(addr: SocketAddr) -> (TcpStream, Option<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 1];
    let first = match s.read(&mut b) {
        Ok(0) => None,
        Ok(_) => Some(b[0]),
        Err(e) => panic!("neither a greeting nor a close within 3 s: {e}"),
    };
    (s, first)
}

#[test]
fn strangers_are_closed_before_any_handshake() {
    let signer = SignerProcess::init_in(TempDir::new("port-signer")).unwrap();
    let tls = signer.node_tls();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    const TLS_HANDSHAKE: u8 = 0x16;

    // Allowed from 127.0.0.1: a ClientHello. Two at once from it: both
    // greeted; the third waits for none and is closed.
    let open =
        InboundTransport::listen(any, tls.clone(), vec!["127.0.0.1".parse().unwrap()]).unwrap();
    let (first, a) = greeting(open.local_addr());
    let (second, b) = greeting(open.local_addr());
    assert_eq!((a, b), (Some(TLS_HANDSHAKE), Some(TLS_HANDSHAKE)));
    let (_, third) = greeting(open.local_addr());
    assert_eq!(third, None, "a third handshake from one address");
    // Once one of them is gone, the address may try again.
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let (_, again) = greeting(open.local_addr());
    assert_eq!(again, Some(TLS_HANDSHAKE));
    drop(second);

    // Allowed from another address only: closed at once.
    let other: IpAddr = "10.9.9.9".parse().unwrap();
    let closed = InboundTransport::listen(any, tls, vec![other]).unwrap();
    let (_, got) = greeting(closed.local_addr());
    assert_eq!(got, None);
}
