//! USB HID framing: one protobuf message (`signer.proto`'s `Request` or
//! `Reply`) split into 64-byte reports and put back together.
//!
//! Every report starts with the channel id (4 bytes, big endian) and a
//! sequence number (2 bytes). The first report of a message (sequence 0)
//! then carries the message length (4 bytes) and 54 bytes of payload; the
//! next ones (sequence 1, 2, …) carry 58 bytes each. Unused bytes are zero.
//!
//! The reassembler is strict: a report of the wrong size, a sequence number
//! other than the next one, another channel's report in the middle of a
//! message, or a length above the limit is an error, the partial message is
//! dropped, and nothing else changes — the device answers with an error
//! reply and waits for a new message.

use alloc::vec::Vec;

/// Size of one HID report.
pub const REPORT_SIZE: usize = 64;
/// Bytes of header in every report: channel id and sequence number.
const HEADER: usize = 6;
/// Payload bytes in the first report (after the 4-byte length).
pub const FIRST_PAYLOAD: usize = REPORT_SIZE - HEADER - 4;
/// Payload bytes in each following report.
pub const NEXT_PAYLOAD: usize = REPORT_SIZE - HEADER;
/// Largest message on the device link (64 KiB, what a device's RAM
/// allows); the bridge sends larger batches one request at a time and
/// refuses a single larger request.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One 64-byte report.
pub type Report = [u8; REPORT_SIZE];

/// Why a report was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The report is not 64 bytes.
    ReportSize(usize),
    /// The announced message length is zero or above the limit.
    Length(u32),
    /// A continuation report arrived with no message started.
    NoMessage,
    /// The sequence number is not the next one.
    Sequence {
        /// The one expected.
        expected: u16,
        /// The one received.
        got: u16,
    },
    /// A report of another channel arrived in the middle of a message.
    Channel {
        /// The channel of the message being received.
        expected: u32,
        /// The report's channel.
        got: u32,
    },
    /// A message too long to be framed (when sending).
    TooLong(usize),
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::ReportSize(n) => write!(f, "HID report of {n} bytes, not {REPORT_SIZE}"),
            FrameError::Length(n) => {
                write!(f, "message length {n} outside 1..={MAX_MESSAGE}")
            }
            FrameError::NoMessage => f.write_str("continuation report without a first report"),
            FrameError::Sequence { expected, got } => {
                write!(f, "report {got} out of sequence (expected {expected})")
            }
            FrameError::Channel { expected, got } => {
                write!(
                    f,
                    "report of channel {got} inside a message of channel {expected}"
                )
            }
            FrameError::TooLong(n) => write!(f, "message of {n} bytes above {MAX_MESSAGE}"),
        }
    }
}

fn header(report: &[u8]) -> (u32, u16) {
    let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
    let seq = u16::from_be_bytes([report[4], report[5]]);
    (cid, seq)
}

/// Splits `message` into reports on channel `cid`.
pub fn fragment(cid: u32, message: &[u8]) -> Result<Vec<Report>, FrameError> {
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(FrameError::TooLong(message.len()));
    }
    let mut reports = Vec::new();
    let mut first = [0u8; REPORT_SIZE];
    first[..4].copy_from_slice(&cid.to_be_bytes());
    first[6..10].copy_from_slice(&(message.len() as u32).to_be_bytes());
    let n = message.len().min(FIRST_PAYLOAD);
    first[10..10 + n].copy_from_slice(&message[..n]);
    reports.push(first);
    for (i, chunk) in message[n..].chunks(NEXT_PAYLOAD).enumerate() {
        let mut r = [0u8; REPORT_SIZE];
        r[..4].copy_from_slice(&cid.to_be_bytes());
        // At most 1 + 64 KiB / 58 reports: the sequence fits in 16 bits.
        r[4..6].copy_from_slice(&((i + 1) as u16).to_be_bytes());
        r[HEADER..HEADER + chunk.len()].copy_from_slice(chunk);
        reports.push(r);
    }
    Ok(reports)
}

/// Puts messages back together from reports, one at a time.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    cid: u32,
    len: usize,
    next_seq: u16,
    buf: Vec<u8>,
}

impl Reassembler {
    /// An idle reassembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a message is half received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Feeds one report. Returns the channel and the message once its last
    /// report is in. On error the partial message is dropped.
    pub fn push(&mut self, report: &[u8]) -> Result<Option<(u32, Vec<u8>)>, FrameError> {
        let r = self.accept(report);
        if r.is_err() {
            self.partial = None;
        }
        r
    }

    fn accept(&mut self, report: &[u8]) -> Result<Option<(u32, Vec<u8>)>, FrameError> {
        if report.len() != REPORT_SIZE {
            return Err(FrameError::ReportSize(report.len()));
        }
        let (cid, seq) = header(report);
        let payload = if seq == 0 {
            if let Some(p) = &self.partial {
                return Err(FrameError::Sequence {
                    expected: p.next_seq,
                    got: 0,
                });
            }
            let len = u32::from_be_bytes([report[6], report[7], report[8], report[9]]);
            if len == 0 || len as usize > MAX_MESSAGE {
                return Err(FrameError::Length(len));
            }
            self.partial = Some(Partial {
                cid,
                len: len as usize,
                // Moved on to 1 below, with every report.
                next_seq: 0,
                buf: Vec::with_capacity(len as usize),
            });
            &report[10..]
        } else {
            let p = self.partial.as_ref().ok_or(FrameError::NoMessage)?;
            if p.cid != cid {
                return Err(FrameError::Channel {
                    expected: p.cid,
                    got: cid,
                });
            }
            if p.next_seq != seq {
                return Err(FrameError::Sequence {
                    expected: p.next_seq,
                    got: seq,
                });
            }
            &report[HEADER..]
        };
        let p = self.partial.as_mut().ok_or(FrameError::NoMessage)?;
        let take = (p.len - p.buf.len()).min(payload.len());
        p.buf.extend_from_slice(&payload[..take]);
        p.next_seq = p.next_seq.wrapping_add(1);
        if p.buf.len() == p.len {
            let done = self.partial.take().ok_or(FrameError::NoMessage)?;
            return Ok(Some((done.cid, done.buf)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::vec;

    fn roundtrip(len: usize) {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let reports = fragment(0xdead_beef, &msg).unwrap();
        let mut r = Reassembler::new();
        let mut out = None;
        for (i, rep) in reports.iter().enumerate() {
            let got = r.push(rep).unwrap();
            if i + 1 < reports.len() {
                assert!(got.is_none());
            } else {
                out = got;
            }
        }
        assert_eq!(out, Some((0xdead_beef, msg)));
        assert!(!r.in_progress());
    }

    #[test]
    fn messages_of_every_boundary_size_come_back_whole() {
        for len in [
            1,
            FIRST_PAYLOAD - 1,
            FIRST_PAYLOAD,
            FIRST_PAYLOAD + 1,
            FIRST_PAYLOAD + NEXT_PAYLOAD,
            FIRST_PAYLOAD + NEXT_PAYLOAD + 1,
            1000,
            MAX_MESSAGE,
        ] {
            roundtrip(len);
        }
    }

    #[test]
    fn refuses_bad_frames_and_recovers() {
        let msg = vec![5u8; 200];
        let reports = fragment(1, &msg).unwrap();
        let mut r = Reassembler::new();
        // Wrong size.
        assert_eq!(r.push(&[0u8; 63]), Err(FrameError::ReportSize(63)));
        // Continuation with nothing started.
        assert_eq!(r.push(&reports[1]), Err(FrameError::NoMessage));
        // Skipped report.
        r.push(&reports[0]).unwrap();
        assert_eq!(
            r.push(&reports[2]),
            Err(FrameError::Sequence {
                expected: 1,
                got: 2
            })
        );
        assert!(!r.in_progress(), "the partial message is dropped");
        // Another channel in the middle.
        r.push(&reports[0]).unwrap();
        let other = fragment(2, &msg).unwrap();
        assert_eq!(
            r.push(&other[1]),
            Err(FrameError::Channel {
                expected: 1,
                got: 2
            })
        );
        // A new first report in the middle of a message.
        r.push(&reports[0]).unwrap();
        assert!(matches!(
            r.push(&reports[0]),
            Err(FrameError::Sequence { .. })
        ));
        // Oversized and empty lengths.
        let mut big = reports[0];
        big[6..10].copy_from_slice(&((MAX_MESSAGE + 1) as u32).to_be_bytes());
        assert!(matches!(r.push(&big), Err(FrameError::Length(_))));
        let mut empty = reports[0];
        empty[6..10].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(r.push(&empty), Err(FrameError::Length(0)));
        // After all that, a good message goes through.
        let mut out = None;
        for rep in &reports {
            out = r.push(rep).unwrap();
        }
        assert_eq!(out, Some((1, msg)));
        assert_eq!(fragment(1, &[]), Err(FrameError::TooLong(0)));
        assert!(fragment(1, &vec![0; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn random_reports_never_panic_and_leave_it_usable() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = fragment(7, &[9u8; 300]).unwrap();
        let mut r = Reassembler::new();
        for round in 0..20_000 {
            let mut rep = [0u8; REPORT_SIZE];
            for b in rep.iter_mut() {
                *b = next() as u8;
            }
            // Often a plausible header, to reach the deeper checks.
            if round % 3 == 0 {
                rep[..6].copy_from_slice(&good[(next() % 6) as usize][..6]);
            }
            let len = if round % 50 == 0 {
                (next() % 70) as usize
            } else {
                REPORT_SIZE
            };
            let _ = r.push(&rep[..len.min(REPORT_SIZE)]);
            if let Some(p) = &r.partial {
                assert!(p.buf.len() <= p.len && p.len <= MAX_MESSAGE);
            }
        }
        r.partial = None;
        let mut out = None;
        for rep in &good {
            out = r.push(rep).unwrap();
        }
        assert_eq!(out.map(|(c, m)| (c, m.len())), Some((7, 300)));
    }
}
