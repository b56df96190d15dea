//! Hold invoices: a payment to an invoice created with `hold` is not
//! claimed when it arrives; it waits ("held") for the operator to settle it
//! (claim, with the preimage the node knows) or cancel it (fail it back).
//! Unanswered, LDK fails it back before its HTLCs expire. The set of held
//! payment hashes is kept in the node's store, so a restart still holds.

use lightning::types::payment::{PaymentHash, PaymentPreimage};
use lightning::util::persist::KVStoreSync;

use crate::node::Node;

const NAMESPACE: &str = "lnpd";
const HELD: &str = "hold_invoices";
/// Stored per hash: held, or cancelled (a payment arriving later is failed).
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
    /// The payment has not arrived (nothing to settle yet).
    #[error("the payment for {0} has not arrived yet: nothing to settle")]
    NotArrived(String),
    /// The store failed.
    #[error("node store: {0}")]
    Store(String),
}

fn store_err(e: impl std::fmt::Display) -> HoldError {
    HoldError::Store(e.to_string())
}

impl Node {
    /// Marks an invoice's payment hash as held.
    pub fn hold_invoice(&self, hash: [u8; 32]) -> Result<(), HoldError> {
        self.store
            .write(NAMESPACE, HELD, &hex::encode(hash), vec![STATE_HELD])
            .map_err(store_err)?;
        Ok(())
    }

    /// What to do with a payment to `hash`.
    pub fn hold_state(&self, hash: &[u8; 32]) -> HoldState {
        match self.store.read(NAMESPACE, HELD, &hex::encode(hash)) {
            Ok(v) if v == [STATE_HELD] => HoldState::Held,
            Ok(_) => HoldState::Cancelled,
            Err(_) => HoldState::NotHeld,
        }
    }

    fn is_held(&self, hash: &[u8; 32]) -> bool {
        self.hold_state(hash) == HoldState::Held
    }

    /// Claims a held payment that has arrived.
    pub fn settle_held(&self, hash: [u8; 32]) -> Result<(), HoldError> {
        let preimage = self
            .payments
            .lock()
            .ok()
            .and_then(|p| p.get(&hash).filter(|r| r.status == "held")?.preimage);
        let Some(preimage) = preimage else {
            return Err(if self.is_held(&hash) {
                HoldError::NotArrived(hex::encode(hash))
            } else {
                HoldError::Unknown(hex::encode(hash))
            });
        };
        self.store
            .remove(NAMESPACE, HELD, &hex::encode(hash), false)
            .map_err(store_err)?;
        tracing::info!(payment_hash = %hex::encode(hash), "settling a held payment");
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
