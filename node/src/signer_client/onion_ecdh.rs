//! The ECDH an incoming HTLC's onion needs, asked for when the HTLC
//! arrives rather than when LDK decodes it.
//!
//! LDK decodes an incoming HTLC's onion only once the HTLC is irrevocably
//! committed (after the peer's `revoke_and_ack`), and asks the node signer
//! for one ECDH per HTLC, one after the other: with a remote signer, one
//! round trip each on the payee's critical path, eight in a row for eight
//! HTLCs committed together. The onion's ephemeral key is in
//! `update_add_htlc` already, so [`PrefetchOnions`] starts that ECDH on the
//! signer connection's side lane when the message arrives; the commitment
//! round trips run meanwhile, and LDK's `ecdh` later takes the answer
//! ([`EcdhAhead::take`]) or waits for it if it is still on its way.
//!
//! Nothing here asks the signer for more than the node may ask anyway
//! (ECDH with the node key on any point is what onion peeling is). The
//! answers are kept a short while, erased when dropped, and at most
//! [`MAX_AHEAD`] of them: a peer sending HTLCs never decoded pushes out
//! only its own.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::ecdh::SharedSecret;
use bitcoin::secp256k1::PublicKey;
use lightning::ln::msgs::{
    AcceptChannel, AcceptChannelV2, AnnouncementSignatures, BaseMessageHandler,
    ChannelMessageHandler, ChannelReady, ChannelReestablish, ChannelUpdate, ClosingSigned,
    CommitmentSigned, ErrorMessage, FundingCreated, FundingSigned, Init, MessageSendEvent,
    OpenChannel, OpenChannelV2, PeerStorage, PeerStorageRetrieval, RevokeAndACK, Shutdown,
    SpliceAck, SpliceInit, SpliceLocked, Stfu, TxAbort, TxAckRbf, TxAddInput, TxAddOutput,
    TxComplete, TxInitRbf, TxRemoveInput, TxRemoveOutput, TxSignatures, UpdateAddHTLC,
    UpdateFailHTLC, UpdateFailMalformedHTLC, UpdateFee, UpdateFulfillHTLC,
};
use lightning::ln::types::ChannelId;
use lightning::types::features::{InitFeatures, NodeFeatures};
use lnpd_proto::signer::{self as pb, reply, request};
use zeroize::Zeroizing;

use super::connection::SignerConnection;

/// ECDH answers kept at most (the oldest goes first).
pub const MAX_AHEAD: usize = 64;

/// How long an ECDH asked ahead may take.
const AHEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one ECDH asked ahead, once it came.
#[derive(Default)]
struct Slot {
    /// `Some(None)`: no usable answer (the usual way is taken instead).
    answer: Mutex<Option<Option<Zeroizing<[u8; 32]>>>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, answer: Option<Zeroizing<[u8; 32]>>) {
        if let Ok(mut a) = self.answer.lock() {
            *a = Some(answer);
        }
        self.ready.notify_all();
    }
}

/// ECDH answers asked for ahead of LDK, by the point they were asked for.
#[derive(Default)]
pub struct EcdhAhead {
    slots: Mutex<VecDeque<(PublicKey, Arc<Slot>)>>,
}

impl EcdhAhead {
    /// Starts ECDH of the node key with `point` (no tweak) on the side lane
    /// of `conn`, unless it is already asked for.
    pub fn ask(&self, conn: &SignerConnection, point: PublicKey) {
        let slot = Arc::new(Slot::default());
        {
            let Ok(mut slots) = self.slots.lock() else {
                return;
            };
            if slots.iter().any(|(p, _)| *p == point) {
                return;
            }
            if slots.len() >= MAX_AHEAD {
                slots.pop_front();
            }
            slots.push_back((point, slot.clone()));
        }
        let body = request::Body::Ecdh(pb::EcdhRequest {
            recipient: pb::Recipient::Node as i32,
            other_key: point.serialize().to_vec(),
            tweak: None,
        });
        conn.call_beside(body, AHEAD_TIMEOUT, move |r| {
            let answer = match r {
                Ok(reply::Body::Ecdh(e)) => <[u8; 32]>::try_from(&e.shared_secret[..])
                    .ok()
                    .map(Zeroizing::new),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!("ECDH asked ahead: {e}; LDK's own request will ask again");
                    None
                }
            };
            slot.fill(answer);
        });
    }

    /// The answer for `point` if it was asked for ahead (waiting for it if
    /// it is on its way); `None`: ask the usual way. Each answer is taken
    /// once.
    pub fn take(&self, point: &PublicKey) -> Option<SharedSecret> {
        let slot = {
            let mut slots = self.slots.lock().ok()?;
            let i = slots.iter().position(|(p, _)| p == point)?;
            slots.remove(i)?.1
        };
        let deadline = Instant::now() + AHEAD_TIMEOUT + Duration::from_secs(1);
        let mut answer = slot.answer.lock().ok()?;
        while answer.is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            answer = slot.ready.wait_timeout(answer, left).ok()?.0;
        }
        let bytes = answer.as_ref()?.as_ref()?;
        SharedSecret::from_slice(&bytes[..]).ok()
    }

    /// How many answers came and wait to be taken.
    pub fn answered(&self) -> usize {
        self.slots
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, slot)| slot.answer.lock().is_ok_and(|a| a.is_some()))
                    .count()
            })
            .unwrap_or(0)
    }

    /// How many answers are kept or awaited.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The point whose ECDH LDK asks for first when it decodes this HTLC's
/// onion: the blinding point's for a blinded HTLC (its answer makes the
/// tweak of the second), the onion's ephemeral key's otherwise.
pub fn first_ecdh_point(msg: &UpdateAddHTLC) -> Option<PublicKey> {
    match msg.blinding_point {
        Some(p) => Some(p),
        None => msg.onion_routing_packet.public_key.ok(),
    }
}

/// LDK's channel message handler `C` (the channel manager), which also
/// has the ECDH of each incoming HTLC's onion started when the HTLC
/// arrives (see the module's text). Everything else goes to `C` unchanged.
pub struct PrefetchOnions<C: Deref>
where
    C::Target: ChannelMessageHandler,
{
    inner: C,
    ask: Box<dyn Fn(PublicKey) + Send + Sync>,
}

impl<C: Deref> PrefetchOnions<C>
where
    C::Target: ChannelMessageHandler,
{
    /// `inner` with `ask(point)` called for each incoming HTLC's first
    /// onion ECDH point.
    pub fn new(inner: C, ask: impl Fn(PublicKey) + Send + Sync + 'static) -> Self {
        PrefetchOnions {
            inner,
            ask: Box::new(ask),
        }
    }
}

impl<C: Deref> BaseMessageHandler for PrefetchOnions<C>
where
    C::Target: ChannelMessageHandler,
{
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        self.inner.get_and_clear_pending_msg_events()
    }
    fn peer_disconnected(&self, their_node_id: PublicKey) {
        self.inner.peer_disconnected(their_node_id)
    }
    fn provided_node_features(&self) -> NodeFeatures {
        self.inner.provided_node_features()
    }
    fn provided_init_features(&self, their_node_id: PublicKey) -> InitFeatures {
        self.inner.provided_init_features(their_node_id)
    }
    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &Init,
        inbound: bool,
    ) -> Result<(), ()> {
        self.inner.peer_connected(their_node_id, msg, inbound)
    }
}

/// Passes each listed message to the inner handler.
macro_rules! delegate {
    ($($name:ident($msg:ty)),* $(,)?) => {
        $(fn $name(&self, their_node_id: PublicKey, msg: $msg) {
            self.inner.$name(their_node_id, msg)
        })*
    };
}

impl<C: Deref> ChannelMessageHandler for PrefetchOnions<C>
where
    C::Target: ChannelMessageHandler,
{
    fn handle_update_add_htlc(&self, their_node_id: PublicKey, msg: &UpdateAddHTLC) {
        if let Some(point) = first_ecdh_point(msg) {
            (self.ask)(point);
        }
        self.inner.handle_update_add_htlc(their_node_id, msg)
    }

    delegate!(
        handle_open_channel(&OpenChannel),
        handle_open_channel_v2(&OpenChannelV2),
        handle_accept_channel(&AcceptChannel),
        handle_accept_channel_v2(&AcceptChannelV2),
        handle_funding_created(&FundingCreated),
        handle_funding_signed(&FundingSigned),
        handle_channel_ready(&ChannelReady),
        handle_peer_storage(PeerStorage),
        handle_peer_storage_retrieval(PeerStorageRetrieval),
        handle_shutdown(&Shutdown),
        handle_closing_signed(&ClosingSigned),
        handle_stfu(&Stfu),
        handle_splice_init(&SpliceInit),
        handle_splice_ack(&SpliceAck),
        handle_splice_locked(&SpliceLocked),
        handle_tx_add_input(&TxAddInput),
        handle_tx_add_output(&TxAddOutput),
        handle_tx_remove_input(&TxRemoveInput),
        handle_tx_remove_output(&TxRemoveOutput),
        handle_tx_complete(&TxComplete),
        handle_tx_signatures(&TxSignatures),
        handle_tx_init_rbf(&TxInitRbf),
        handle_tx_ack_rbf(&TxAckRbf),
        handle_tx_abort(&TxAbort),
        handle_update_fulfill_htlc(UpdateFulfillHTLC),
        handle_update_fail_htlc(&UpdateFailHTLC),
        handle_update_fail_malformed_htlc(&UpdateFailMalformedHTLC),
        handle_commitment_signed(&CommitmentSigned),
        handle_revoke_and_ack(&RevokeAndACK),
        handle_update_fee(&UpdateFee),
        handle_announcement_signatures(&AnnouncementSignatures),
        handle_channel_reestablish(&ChannelReestablish),
        handle_channel_update(&ChannelUpdate),
        handle_error(&ErrorMessage),
    );

    fn handle_commitment_signed_batch(
        &self,
        their_node_id: PublicKey,
        channel_id: ChannelId,
        batch: Vec<CommitmentSigned>,
    ) {
        self.inner
            .handle_commitment_signed_batch(their_node_id, channel_id, batch)
    }

    fn get_chain_hashes(&self) -> Option<Vec<ChainHash>> {
        self.inner.get_chain_hashes()
    }

    fn message_received(&self) {
        self.inner.message_received()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning::ln::msgs::OnionPacket;
    use lightning::ln::peer_handler::ErroringMessageHandler;
    use lightning::types::payment::PaymentHash;

    fn point(i: u8) -> PublicKey {
        PublicKey::from_secret_key(
            &Secp256k1::new(),
            &SecretKey::from_slice(&[i; 32]).expect("key"),
        )
    }

    fn add(blinding_point: Option<PublicKey>) -> UpdateAddHTLC {
        UpdateAddHTLC {
            channel_id: ChannelId([1; 32]),
            htlc_id: 0,
            amount_msat: 1000,
            payment_hash: PaymentHash([2; 32]),
            cltv_expiry: 100,
            skimmed_fee_msat: None,
            onion_routing_packet: OnionPacket {
                version: 0,
                public_key: Ok(point(3)),
                hop_data: [0; 20 * 65],
                hmac: [0; 32],
            },
            blinding_point,
            hold_htlc: None,
        }
    }

    #[test]
    fn an_incoming_htlc_starts_its_first_onion_ecdh_and_reaches_the_handler() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let handler = PrefetchOnions::new(Arc::new(ErroringMessageHandler::new()), {
            let asked = asked.clone();
            move |p| asked.lock().expect("lock").push(p)
        });
        handler.handle_update_add_htlc(point(9), &add(None));
        handler.handle_update_add_htlc(point(9), &add(Some(point(4))));
        assert_eq!(*asked.lock().expect("lock"), vec![point(3), point(4)]);
        // The inner handler got both (it answers each with an error).
        assert_eq!(handler.get_and_clear_pending_msg_events().len(), 2);
        // Other messages only pass through.
        handler.handle_update_fee(
            point(9),
            &UpdateFee {
                channel_id: ChannelId([1; 32]),
                feerate_per_kw: 253,
            },
        );
        assert_eq!(asked.lock().expect("lock").len(), 2);
        assert_eq!(handler.get_and_clear_pending_msg_events().len(), 1);
    }

    #[test]
    fn an_onion_with_an_invalid_key_starts_nothing() {
        let mut msg = add(None);
        msg.onion_routing_packet.public_key = Err(bitcoin::secp256k1::Error::InvalidPublicKey);
        assert_eq!(first_ecdh_point(&msg), None);
    }
}
