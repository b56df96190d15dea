//! The host's side of the hardware signer link: a `DeviceRequest` framed
//! into HID reports over any report transport (USB HID, the simulator's
//! socket, or a device in the same process for tests), the reply put back
//! together.

use prost::Message;

use crate::hid::{fragment, FrameError, Reassembler, Report};
use crate::signer::{DeviceReply, DeviceRequest};

/// Moves 64-byte reports to and from a device.
pub trait ReportLink {
    /// The transport's error.
    type Error;
    /// Sends one report.
    fn send(&mut self, report: &Report) -> Result<(), Self::Error>;
    /// Waits for the device's next report.
    fn receive(&mut self) -> Result<Report, Self::Error>;
}

impl<L: ReportLink + ?Sized> ReportLink for alloc::boxed::Box<L> {
    type Error = L::Error;
    fn send(&mut self, report: &Report) -> Result<(), Self::Error> {
        (**self).send(report)
    }
    fn receive(&mut self) -> Result<Report, Self::Error> {
        (**self).receive()
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum LinkError<E> {
    /// The transport failed.
    Link(E),
    /// The device's reports did not frame.
    Frame(FrameError),
    /// The device's reply did not decode.
    Decode,
}

/// A device reached over a report link, on one channel id.
pub struct DeviceClient<L: ReportLink> {
    link: L,
    cid: u32,
}

impl<L: ReportLink> DeviceClient<L> {
    /// Talks on channel `cid` (any value the host picks for this connection).
    pub fn new(link: L, cid: u32) -> Self {
        DeviceClient { link, cid }
    }

    /// Sends `request`, returns the device's reply.
    pub fn exchange(
        &mut self,
        request: &DeviceRequest,
    ) -> Result<DeviceReply, LinkError<L::Error>> {
        for r in fragment(self.cid, &request.encode_to_vec()).map_err(LinkError::Frame)? {
            self.link.send(&r).map_err(LinkError::Link)?;
        }
        let mut rx = Reassembler::new();
        loop {
            let report = self.link.receive().map_err(LinkError::Link)?;
            // Reports of another channel are another host's business.
            if report[..4] != self.cid.to_be_bytes() {
                continue;
            }
            if let Some((_, message)) = rx.push(&report).map_err(LinkError::Frame)? {
                return DeviceReply::decode(&message[..]).map_err(|_| LinkError::Decode);
            }
        }
    }

    /// The link, back.
    pub fn into_link(self) -> L {
        self.link
    }

    /// The channel id.
    pub fn cid(&self) -> u32 {
        self.cid
    }
}
