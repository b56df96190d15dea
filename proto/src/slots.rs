//! Bounds on what is held at once for connecting peers (connections being
//! served, handshakes in progress), in all and per source address: one
//! address that opens many must not take every place. The signer daemon
//! bounds the node connections it serves; the node bounds the handshakes
//! of signers that dial in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The places, their limits and who holds them.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_ip: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Why no place was given: what was held when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// Places held in all.
    pub total: usize,
    /// Places held by the asking address.
    pub from_ip: usize,
}

/// One place, freed when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    /// At most `max_total` places in all and `max_per_ip` per address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Slots {
            max_total,
            max_per_ip,
            held: Mutex::new(Held::default()),
        })
    }

    /// A place for `ip`, or what was held when none was left.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        // A poisoned lock only means a holder panicked; the counts are
        // whole (each change is one statement), so keep counting.
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = h.by_ip.get(&ip).copied().unwrap_or(0);
        if h.total >= self.max_total || from_ip >= self.max_per_ip {
            return Err(Full {
                total: h.total,
                from_ip,
            });
        }
        h.total += 1;
        *h.by_ip.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// Places held now (in all).
    pub fn held(&self) -> usize {
        self.held
            .lock()
            .map(|h| h.total)
            .unwrap_or_else(|p| p.into_inner().total)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn bounds_each_address_and_the_total_and_frees_on_drop() {
        let slots = Slots::new(3, 2);
        let a1 = slots.take(ip(1)).expect("first from a");
        let a2 = slots.take(ip(1)).expect("second from a");
        assert_eq!(
            slots.take(ip(1)).map(|_| ()),
            Err(Full {
                total: 2,
                from_ip: 2
            })
        );
        let b1 = slots.take(ip(2)).expect("first from b");
        // Full in all, though b has room.
        assert_eq!(
            slots.take(ip(2)).map(|_| ()),
            Err(Full {
                total: 3,
                from_ip: 1
            })
        );
        drop(a1);
        assert_eq!(slots.held(), 2);
        let a3 = slots.take(ip(1)).expect("a's place freed");
        drop((a2, a3, b1));
        assert_eq!(slots.held(), 0);
        // Nothing left behind for an address that held none.
        assert!(slots.held.lock().expect("lock").by_ip.is_empty());
    }
}
