//! Hold invoices: a payment to an invoice created with `hold` is not
//! claimed when it arrives; it waits ("held") for the operator to settle it
//! (claim, with the preimage the node knows) or cancel it (fail it back).
//! Unanswered, LDK fails it back before its HTLCs expire. Held hashes and
//! their preimages are kept in the node's store, so a restart still holds
//! and can still settle (LDK does not announce a payment again that it
//! announced before the restart). Settled before it arrives, a payment is
//! claimed when it comes.

use lightning::types::payment::{PaymentHash, PaymentPreimage};
use lightning::util::persist::KVStoreSync;

use crate::node::Node;

const NAMESPACE: &str = "lnpd";
const HELD: &str = "hold_invoices";
/// Stored per hash: held (followed by the 32-byte preimage), or cancelled
/// (a payment arriving later is failed).
const STATE_HELD: u8 = 1;
const STATE_CANCELLED: u8 = 0;

/// What the node does with an arriving payment of a hold invoice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    /// Not a hold invoice: claim at once.
    NotHeld,
    /// Wait for the operator.
    Held,
    /// The operator cancelled it: fail it back.
    Cancelled,
}

/// What went wrong with a hold request.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// No invoice of that hash is held.
    #[error("no hold invoice with payment hash {0}")]
    Unknown(String),
    /// The store failed.
    #[error("node store: {0}")]
    Store(String),
}

fn store_err(e: impl std::fmt::Display) -> HoldError {
    HoldError::Store(e.to_string())
}

impl Node {
    /// Marks an invoice's payment hash as held, with the preimage that
    /// settles it.
    pub fn hold_invoice(&self, hash: [u8; 32], preimage: [u8; 32]) -> Result<(), HoldError> {
        let mut record = vec![STATE_HELD];
        record.extend_from_slice(&preimage);
        self.store
            .write(NAMESPACE, HELD, &hex::encode(hash), record)
            .map_err(store_err)?;
        Ok(())
    }

    /// What to do with a payment to `hash`.
    pub fn hold_state(&self, hash: &[u8; 32]) -> HoldState {
        match self.store.read(NAMESPACE, HELD, &hex::encode(hash)) {
            Ok(v) if v.first() == Some(&STATE_HELD) => HoldState::Held,
            Ok(_) => HoldState::Cancelled,
            Err(_) => HoldState::NotHeld,
        }
    }

    fn is_held(&self, hash: &[u8; 32]) -> bool {
        self.hold_state(hash) == HoldState::Held
    }

    /// Claims a held payment (at once if it has arrived, else when it does).
    pub fn settle_held(&self, hash: [u8; 32]) -> Result<(), HoldError> {
        let key = hex::encode(hash);
        let record = self.store.read(NAMESPACE, HELD, &key).ok();
        let preimage = record
            .filter(|r| r.first() == Some(&STATE_HELD))
            .and_then(|r| <[u8; 32]>::try_from(r.get(1..)?).ok())
            .ok_or_else(|| HoldError::Unknown(key.clone()))?;
        self.store
            .remove(NAMESPACE, HELD, &key, false)
            .map_err(store_err)?;
        tracing::info!(payment_hash = %key, "settling a held payment");
        self.channel_manager.claim_funds(PaymentPreimage(preimage));
        Ok(())
    }

    /// Fails a held payment back (or refuses it in advance).
    pub fn cancel_held(&self, hash: [u8; 32]) -> Result<(), HoldError> {
        if !self.is_held(&hash) {
            return Err(HoldError::Unknown(hex::encode(hash)));
        }
        self.store
            .write(NAMESPACE, HELD, &hex::encode(hash), vec![STATE_CANCELLED])
            .map_err(store_err)?;
        tracing::info!(payment_hash = %hex::encode(hash), "cancelling a held payment");
        self.channel_manager.fail_htlc_backwards(&PaymentHash(hash));
        Ok(())
    }
}
