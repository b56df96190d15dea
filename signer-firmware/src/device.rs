//! The device's main loop body: HID reports in, HID reports out. A complete
//! message is a `signer.proto` `Request`, handled by the signer core (the
//! same code, policy and state rules as `lnpd-signer run`) over the flash
//! store; its `Reply` goes back on the same channel. A bad frame gets an
//! `INVALID` error reply and changes nothing.

use alloc::boxed::Box;
use alloc::string::ToString;
use alloc::vec::Vec;

use bitcoin::Network;
use lnpd_proto::signer as pb;
use lnpd_signer::handler::{error_to_wire, Entropy};
use lnpd_signer::{PolicyConfig, Seed, Signer, SignerError};
use prost::Message;

use crate::flash::{Flash, FlashStore};
use crate::hid::{fragment, Reassembler, Report};

/// A hardware signer: the signer core over flash, behind HID framing.
pub struct Device<F: Flash> {
    signer: Signer<FlashStore<F>>,
    rx: Reassembler,
}

impl<F: Flash> Device<F> {
    /// Starts the device with its seed, loading its state from `flash`.
    pub fn new(
        seed: &Seed,
        network: Network,
        policy: PolicyConfig,
        flash: F,
        entropy: Box<dyn Entropy>,
    ) -> Result<Self, SignerError> {
        let store = FlashStore::open(flash).map_err(SignerError::from)?;
        Ok(Device {
            signer: Signer::new(seed, network, policy, store, entropy)?,
            rx: Reassembler::new(),
        })
    }

    /// Handles one report; returns the reports of the reply (none until a
    /// request is complete).
    pub fn on_report(&mut self, report: &[u8]) -> Vec<Report> {
        match self.rx.push(report) {
            Ok(None) => Vec::new(),
            Ok(Some((cid, request))) => {
                let reply = self.signer.handle_bytes(&request);
                fragment(cid, &reply)
                    .unwrap_or_else(|e| error_reports(cid, &SignerError::internal(e.to_string())))
            }
            Err(e) => {
                let cid = report
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                error_reports(cid, &SignerError::invalid(e.to_string()))
            }
        }
    }

    /// The signer core (for the simulator's status output).
    pub fn signer(&self) -> &Signer<FlashStore<F>> {
        &self.signer
    }
}

fn error_reports(cid: u32, e: &SignerError) -> Vec<Report> {
    let reply = pb::Reply {
        id: 0,
        body: Some(pb::reply::Body::Error(error_to_wire(e))),
    };
    // An error reply is small: it always frames.
    fragment(cid, &reply.encode_to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::RamFlash;
    use crate::hid::REPORT_SIZE;
    use lnpd_proto::signer::{reply, request};
    use lnpd_signer::testing::{
        memory_signer, test_entropy, ChannelPair, PairOptions, SignerHandle,
    };

    /// The host side: requests framed into reports and fed to the device.
    struct OverHid {
        device: Device<RamFlash>,
        cid: u32,
    }

    impl OverHid {
        fn exchange(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for r in fragment(self.cid, bytes).unwrap() {
                out.extend(self.device.on_report(&r));
            }
            let mut rx = Reassembler::new();
            let mut reply = None;
            for r in out {
                if let Some((cid, m)) = rx.push(&r).unwrap() {
                    assert_eq!(cid, self.cid);
                    reply = Some(m);
                }
            }
            reply.expect("one reply per request")
        }
    }

    impl SignerHandle for OverHid {
        fn handle(&mut self, body: request::Body) -> Result<reply::Body, SignerError> {
            let req = pb::Request {
                id: 3,
                body: Some(body),
            };
            let reply = pb::Reply::decode(&self.exchange(&req.encode_to_vec())[..])
                .map_err(|_| SignerError::internal("undecodable reply"))?;
            match reply.body {
                Some(reply::Body::Error(e)) => Err(lnpd_signer::handler::error_from_wire(&e)),
                Some(b) => Ok(b),
                None => Err(SignerError::internal("empty reply")),
            }
        }
        fn handle_batch(
            &mut self,
            bodies: Vec<request::Body>,
        ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
            Ok(bodies.into_iter().map(|b| self.handle(b)).collect())
        }
    }

    fn device(flash: RamFlash) -> Device<RamFlash> {
        Device::new(
            &Seed::new(alloc::vec![1; 32]).unwrap(),
            Network::Regtest,
            PolicyConfig::default(),
            flash,
            test_entropy(1),
        )
        .unwrap()
    }

    #[test]
    fn a_channel_runs_through_hid_reports() {
        let host = OverHid {
            device: device(RamFlash::new(64 * 1024, 256)),
            cid: 0x0102_0304,
        };
        let mut p = ChannelPair::open(
            Box::new(host),
            Box::new(memory_signer(2, PolicyConfig::default())),
            PairOptions::default(),
        )
        .expect("channel opens over HID");
        let h = p.add_htlc(20_000_000, 1).expect("payment over HID");
        p.settle_htlc(&h).expect("settled over HID");
        assert_eq!(p.number, 2);
    }

    #[test]
    fn a_bad_frame_gets_an_error_reply_and_changes_nothing() {
        let mut d = device(RamFlash::new(64 * 1024, 256));
        let mut out = d.on_report(&[0u8; 10]);
        assert_eq!(out.len(), 1);
        let mut second = [0u8; REPORT_SIZE];
        second[..4].copy_from_slice(&7u32.to_be_bytes());
        second[5] = 3; // a continuation with nothing started
        out.extend(d.on_report(&second));
        for r in out {
            let mut rx = Reassembler::new();
            let (_, m) = rx.push(&r).unwrap().expect("one-report error reply");
            let reply = pb::Reply::decode(&m[..]).unwrap();
            assert!(matches!(
                reply.body,
                Some(reply::Body::Error(e)) if e.kind == pb::ErrorKind::Invalid as i32
            ));
        }
        // Garbage that frames fine but is no Request: an error reply too.
        let mut host = OverHid { device: d, cid: 9 };
        let reply = pb::Reply::decode(&host.exchange(&[0xFF; 40])[..]).unwrap();
        assert!(matches!(reply.body, Some(reply::Body::Error(_))));
        assert_eq!(host.device.signer().channels().count(), 0);
    }
}
