//! The device's durable store: the signer core's [`Store`] over flash, with
//! atomic updates that survive a power cut at any point.
//!
//! Two slots of equal size. Each holds one whole snapshot of the signer's
//! state: magic, version counter, length, payload, CRC-32 of all that. An
//! update writes the full new snapshot into the slot that does *not* hold
//! the newest valid one, version + 1, checksum last. On start the valid slot
//! with the highest version wins, so a cut while writing leaves the previous
//! state (the half-written slot fails its checksum), and a cut after the
//! last byte leaves the new one.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use lnpd_signer_core::store::{Snapshot, Store, StoreError, Write};

/// A flash device as the store needs it. A board's driver implements it;
/// the simulator backs it with a file. Erased bytes read `0xFF`.
pub trait Flash {
    /// Bytes in the device.
    fn size(&self) -> usize;
    /// Size of an erase page.
    fn page_size(&self) -> usize;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), FlashError>;
    /// Erases the page starting at `offset` (a multiple of the page size).
    fn erase(&mut self, offset: usize) -> Result<(), FlashError>;
    /// Writes `data` at `offset` (into erased bytes).
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), FlashError>;
}

/// A flash operation failed (or power was lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashError(pub &'static str);

const MAGIC: [u8; 4] = *b"LNPD";
/// magic, version (u64), payload length (u32).
const HEADER: usize = 4 + 8 + 4;
const CRC: usize = 4;

/// The signer's state in two flash slots.
pub struct FlashStore<F: Flash> {
    flash: F,
    slot_size: usize,
    /// Version and slot of the newest valid snapshot, if any.
    current: Option<(u64, usize)>,
}

impl<F: Flash> FlashStore<F> {
    /// Uses the whole device, split in two slots of whole pages.
    pub fn open(flash: F) -> Result<Self, StoreError> {
        let page = flash.page_size();
        if page == 0 {
            return Err(StoreError("flash page size is zero".into()));
        }
        let slot_size = flash.size() / 2 / page * page;
        if slot_size < page || slot_size <= HEADER + CRC {
            return Err(StoreError("flash too small for two slots".into()));
        }
        let mut s = FlashStore {
            flash,
            slot_size,
            current: None,
        };
        s.current = [0, 1]
            .into_iter()
            .filter_map(|slot| s.read_slot(slot).map(|(v, _)| (v, slot)))
            .max();
        Ok(s)
    }

    /// The flash device (for the simulator to close it).
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The newest snapshot's version (0 before the first write).
    pub fn version(&self) -> u64 {
        self.current.map(|(v, _)| v).unwrap_or(0)
    }

    /// The valid snapshot in `slot`: version and payload.
    fn read_slot(&self, slot: usize) -> Option<(u64, Vec<u8>)> {
        let base = slot * self.slot_size;
        let mut head = [0u8; HEADER];
        self.flash.read(base, &mut head).ok()?;
        if head[..4] != MAGIC {
            return None;
        }
        let version = u64::from_be_bytes(head[4..12].try_into().ok()?);
        let len = u32::from_be_bytes(head[12..16].try_into().ok()?) as usize;
        if len > self.slot_size - HEADER - CRC {
            return None;
        }
        let mut rest = vec![0u8; len + CRC];
        self.flash.read(base + HEADER, &mut rest).ok()?;
        let (payload, crc) = rest.split_at(len);
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(payload);
        (h.finalize().to_be_bytes() == crc).then(|| (version, payload.to_vec()))
    }

    fn write_slot(&mut self, slot: usize, version: u64, payload: &[u8]) -> Result<(), StoreError> {
        let need = HEADER + payload.len() + CRC;
        if need > self.slot_size {
            return Err(StoreError(format!(
                "state of {need} bytes does not fit a {}-byte flash slot",
                self.slot_size
            )));
        }
        let fail = |e: FlashError| StoreError(format!("flash: {}", e.0));
        let base = slot * self.slot_size;
        let page = self.flash.page_size();
        for p in (0..need.div_ceil(page)).map(|i| base + i * page) {
            self.flash.erase(p).map_err(fail)?;
        }
        let mut head = [0u8; HEADER];
        head[..4].copy_from_slice(&MAGIC);
        head[4..12].copy_from_slice(&version.to_be_bytes());
        head[12..16].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(payload);
        self.flash.write(base, &head).map_err(fail)?;
        self.flash.write(base + HEADER, payload).map_err(fail)?;
        // The checksum last: until it is written the slot is not valid.
        self.flash
            .write(base + HEADER + payload.len(), &h.finalize().to_be_bytes())
            .map_err(fail)
    }
}

/// Snapshot as bytes: channel count, then (id, length, record) each, then
/// the meta record with a presence byte, then the state counter (8 bytes;
/// absent in snapshots written before it, read as 0).
fn encode(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(s.channels.len() as u32).to_be_bytes());
    for (id, rec) in &s.channels {
        out.extend_from_slice(id);
        out.extend_from_slice(&(rec.len() as u32).to_be_bytes());
        out.extend_from_slice(rec);
    }
    match &s.meta {
        Some(m) => {
            out.push(1);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&s.counter.to_be_bytes());
    out
}

fn decode(mut b: &[u8]) -> Result<Snapshot, StoreError> {
    let bad = || StoreError("corrupt snapshot in flash".into());
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if b.len() < n {
            return Err(bad());
        }
        let (x, rest) = b.split_at(n);
        b = rest;
        Ok(x)
    };
    let u32_at = |x: &[u8]| u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize;
    let count = u32_at(take(4)?);
    let mut channels = BTreeMap::new();
    for _ in 0..count {
        let mut id = [0u8; 32];
        id.copy_from_slice(take(32)?);
        let len = u32_at(take(4)?);
        channels.insert(id, take(len)?.to_vec());
    }
    let meta = match take(1)?[0] {
        0 => None,
        1 => {
            let len = u32_at(take(4)?);
            Some(take(len)?.to_vec())
        }
        _ => return Err(bad()),
    };
    let counter = match take(8) {
        Ok(c) => u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        Err(_) => 0,
    };
    Ok(Snapshot {
        channels,
        meta,
        counter,
    })
}

impl<F: Flash> Store for FlashStore<F> {
    fn load(&self) -> Result<Snapshot, StoreError> {
        match self.current {
            None => Ok(Snapshot::default()),
            Some((_, slot)) => {
                let (_, payload) = self
                    .read_slot(slot)
                    .ok_or_else(|| StoreError("flash slot no longer valid".into()))?;
                decode(&payload)
            }
        }
    }

    fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut snap = self.load()?;
        for w in writes {
            match w {
                Write::Channel(id, bytes) => {
                    snap.channels.insert(id, bytes);
                }
                Write::Meta(bytes) => snap.meta = Some(bytes),
                Write::DeleteChannel(id) => {
                    snap.channels.remove(&id);
                }
                Write::Counter(n) => snap.counter = n,
            }
        }
        let (version, slot) = match self.current {
            Some((v, s)) => (v + 1, 1 - s),
            None => (1, 0),
        };
        self.write_slot(slot, version, &encode(&snap))?;
        self.current = Some((version, slot));
        Ok(())
    }
}

/// Flash in RAM: the simulator's volatile mode and the tests. It can lose
/// power after a given number of written or erased bytes: the operation in
/// progress stops half way and fails, as on a board.
pub struct RamFlash {
    mem: Vec<u8>,
    page: usize,
    budget: Option<usize>,
}

impl RamFlash {
    /// `size` bytes of erased flash in pages of `page` bytes.
    pub fn new(size: usize, page: usize) -> Self {
        RamFlash {
            mem: vec![0xFF; size],
            page,
            budget: None,
        }
    }

    /// Power fails after `bytes` more bytes are written or erased (`None`:
    /// power stays on).
    pub fn set_power_budget(&mut self, bytes: Option<usize>) {
        self.budget = bytes;
    }

    fn spend(&mut self, n: usize) -> usize {
        match &mut self.budget {
            None => n,
            Some(b) => {
                let k = n.min(*b);
                *b -= k;
                k
            }
        }
    }
}

impl Flash for RamFlash {
    fn size(&self) -> usize {
        self.mem.len()
    }
    fn page_size(&self) -> usize {
        self.page
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), FlashError> {
        let src = self
            .mem
            .get(offset..offset.saturating_add(buf.len()))
            .ok_or(FlashError("read out of range"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn erase(&mut self, offset: usize) -> Result<(), FlashError> {
        let end = offset.saturating_add(self.page);
        if end > self.mem.len() || !offset.is_multiple_of(self.page) {
            return Err(FlashError("erase out of range"));
        }
        let k = self.spend(self.page);
        self.mem[offset..offset + k].fill(0xFF);
        if k < self.page {
            // Half erased: the rest holds garbage, as real flash may.
            self.mem[offset + k..end].fill(0x5A);
            return Err(FlashError("power lost"));
        }
        Ok(())
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), FlashError> {
        if offset.saturating_add(data.len()) > self.mem.len() {
            return Err(FlashError("write out of range"));
        }
        let k = self.spend(data.len());
        self.mem[offset..offset + k].copy_from_slice(&data[..k]);
        if k < data.len() {
            return Err(FlashError("power lost"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn channel_write(tag: u8, len: usize) -> Write {
        Write::Channel([tag; 32], vec![tag; len])
    }

    #[test]
    fn state_survives_reopening() {
        let mut s = FlashStore::open(RamFlash::new(8192, 256)).unwrap();
        assert_eq!(s.load().unwrap(), Snapshot::default());
        s.commit(vec![channel_write(1, 100), Write::Meta(vec![9; 10])])
            .unwrap();
        s.commit(vec![channel_write(2, 50)]).unwrap();
        let before = s.load().unwrap();
        let s = FlashStore::open(s.into_flash()).unwrap();
        assert_eq!(s.load().unwrap(), before);
        assert_eq!(s.version(), 2);
        assert_eq!(before.channels.len(), 2);
    }

    #[test]
    fn a_power_cut_at_any_byte_leaves_the_old_or_the_new_state() {
        // Reference: state after each of three commits.
        let commits = [
            vec![channel_write(1, 300)],
            vec![channel_write(2, 200), Write::Meta(vec![7; 20])],
            vec![channel_write(1, 500)],
        ];
        let mut reference = FlashStore::open(RamFlash::new(8192, 256)).unwrap();
        let mut states = vec![reference.load().unwrap()];
        for c in commits.clone() {
            reference.commit(c).unwrap();
            states.push(reference.load().unwrap());
        }
        // Cut the power after every possible number of bytes during the
        // third commit, restart, and look.
        let mut finished = 0;
        for cut in 0..2100 {
            let mut s = FlashStore::open(RamFlash::new(8192, 256)).unwrap();
            s.commit(commits[0].clone()).unwrap();
            s.commit(commits[1].clone()).unwrap();
            let mut flash = s.into_flash();
            flash.set_power_budget(Some(cut));
            let mut s = FlashStore::open(flash).unwrap();
            let done = s.commit(commits[2].clone()).is_ok();
            let mut flash = s.into_flash();
            flash.set_power_budget(None);
            let s = FlashStore::open(flash).unwrap();
            let got = s.load().unwrap();
            if done {
                finished += 1;
                assert_eq!(got, states[3], "cut after {cut} bytes: commit said done");
            } else {
                assert!(
                    got == states[2] || got == states[3],
                    "cut after {cut} bytes left a state that never was"
                );
            }
            // And the store goes on working after the restart.
            let mut s = s;
            s.commit(vec![channel_write(3, 10)]).unwrap();
            assert!(s.load().unwrap().channels.contains_key(&[3; 32]));
        }
        assert!(
            finished > 0 && finished < 2100,
            "cuts fell both inside and after the write"
        );
    }

    #[test]
    fn refuses_a_state_larger_than_a_slot() {
        let mut s = FlashStore::open(RamFlash::new(1024, 256)).unwrap();
        assert!(s.commit(vec![channel_write(1, 600)]).is_err());
        assert_eq!(s.load().unwrap(), Snapshot::default());
    }
}
