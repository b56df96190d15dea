//! Coins for LDK's fee bumping of anchor channels: when a force-close
//! commitment (or a zero-fee HTLC transaction) pays too little fee, LDK
//! builds a child (CPFP) or adds inputs from the wallet. This module lends it
//! the watch-only wallet's coins and has the signer sign the wallet inputs;
//! LDK then signs the anchor or HTLC input through the channel signer.
//!
//! One owner per coin: LDK is offered only coins no other spend holds, and
//! the coins of a bump are locked in the wallet from its signature to its
//! broadcast, so a withdrawal or a funding never takes them meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::{Psbt, ScriptBuf, Transaction, Txid};
use lightning::events::bump_transaction::sync::WalletSourceSync;
use lightning::events::bump_transaction::{BumpTransactionEvent, Utxo};
use lnpd_proto::signer::{reply, request, GetShutdownScriptRequest, SignPsbtRequest};

use crate::signer_client::SignerConnection;
use crate::wallet::Wallet;

/// The wallet as LDK's fee-bumping coin source.
pub struct FeeBumpWallet {
    wallet: Arc<Wallet>,
    signer: Arc<SignerConnection>,
    /// Commitment transactions seen in bump events: the signer checks the
    /// amounts of every input of what it signs, so the anchor input's
    /// previous transaction must be in the PSBT too.
    parents: Mutex<HashMap<Txid, Transaction>>,
}

impl FeeBumpWallet {
    /// Lends `wallet`'s coins; signatures come from `signer`.
    pub fn new(wallet: Arc<Wallet>, signer: Arc<SignerConnection>) -> Self {
        FeeBumpWallet {
            wallet,
            signer,
            parents: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers the commitment transaction of a bump event before LDK
    /// handles it.
    pub fn remember(&self, event: &BumpTransactionEvent) {
        if let BumpTransactionEvent::ChannelClose { commitment_tx, .. } = event {
            if let Ok(mut p) = self.parents.lock() {
                p.insert(commitment_tx.compute_txid(), commitment_tx.clone());
            }
        }
    }
}

impl WalletSourceSync for FeeBumpWallet {
    fn list_confirmed_utxos(&self) -> Result<Vec<Utxo>, ()> {
        Ok(self
            .wallet
            .bump_coins()
            .into_iter()
            .map(|(op, out, hash)| Utxo::new_v0_p2wpkh(op, out.value, &hash))
            .collect())
    }

    fn get_change_script(&self) -> Result<ScriptBuf, ()> {
        // From the signer, which hands each internal script out once.
        match self.signer.call(
            request::Body::GetShutdownScript(GetShutdownScriptRequest {}),
            Duration::from_secs(30),
        ) {
            Ok(reply::Body::Script(s)) => {
                let script = ScriptBuf::from_bytes(s.script_pubkey);
                self.wallet.adopt_change_script(&script).map_err(|e| {
                    tracing::error!("fee bump: change script refused: {e}");
                })?;
                Ok(script)
            }
            Ok(_) => Err(()),
            Err(e) => {
                tracing::error!("fee bump: no change script from the signer: {e}");
                Err(())
            }
        }
    }

    fn sign_psbt(&self, mut psbt: Psbt) -> Result<Transaction, ()> {
        let own = self.wallet.describe_own_inputs(&mut psbt).map_err(|e| {
            tracing::error!("fee bump: {e}");
        })?;
        if let Ok(parents) = self.parents.lock() {
            for (txin, input) in psbt.unsigned_tx.input.iter().zip(psbt.inputs.iter_mut()) {
                if input.non_witness_utxo.is_none() {
                    input.non_witness_utxo = parents.get(&txin.previous_output.txid).cloned();
                }
            }
        }
        // LDK retries the bump on its next block or timer.
        self.wallet.claim_for_bump(&psbt).map_err(|e| {
            tracing::warn!("fee bump not signed: {e}");
        })?;
        tracing::info!(
            inputs = psbt.inputs.len(),
            own,
            "fee bump: asking the signer to sign the wallet inputs"
        );
        let signed = match self.signer.call(
            request::Body::SignPsbt(SignPsbtRequest {
                psbt: psbt.serialize(),
            }),
            Duration::from_secs(30),
        ) {
            Ok(reply::Body::SignPsbt(p)) => Psbt::deserialize(&p.psbt).ok(),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("fee bump not signed: {e}");
                None
            }
        };
        let finalized = signed.map(|p| self.wallet.finalize_own(p));
        match finalized {
            Some(Ok(tx)) => {
                self.wallet.note_bump(&tx);
                Ok(tx)
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::error!("fee bump: {e}");
                }
                self.wallet.release(&psbt, None);
                Err(())
            }
        }
    }
}
