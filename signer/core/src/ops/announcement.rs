//! Our signatures on a channel's gossip announcement
//! (`gossip-announcement-keys`).

use bitcoin::hashes::{sha256d, Hash};
use bitcoin::secp256k1::Message;
use lightning::ln::msgs::UnsignedChannelAnnouncement;
use lightning::routing::gossip::NodeId;
use lightning::util::ser::LengthReadable;
use lnpd_proto::signer::{self as pb};

use crate::error::SignerError;
use crate::signer::Signer;
use crate::store::Store;
use crate::ChannelKeysId;

impl<S: Store> Signer<S> {
    pub(crate) fn sign_channel_announcement(
        &self,
        r: &pb::SignChannelAnnouncementRequest,
    ) -> Result<pb::SignChannelAnnouncementReply, SignerError> {
        let id = ChannelKeysId::from_slice(&r.channel_keys_id)?;
        let (_, _, params) = self.set_up_channel(&id)?;
        if r.unsigned_announcement.len() > 65_535 {
            return Err(SignerError::invalid("channel_announcement too long"));
        }
        let mut cursor = &r.unsigned_announcement[..];
        let msg = UnsignedChannelAnnouncement::read_from_fixed_length_buffer(&mut cursor)
            .map_err(|_| SignerError::invalid("malformed channel_announcement"))?;
        if !cursor.is_empty() {
            return Err(SignerError::invalid(
                "trailing bytes after channel_announcement",
            ));
        }
        let node = NodeId::from_pubkey(&self.node_id());
        let funding = NodeId::from_pubkey(&params.holder_pubkeys.funding_pubkey);
        crate::policy::node::check_announcement_keys(&self.policy, &msg, &node, &[funding])?;
        let digest =
            Message::from_digest(sha256d::Hash::hash(&r.unsigned_announcement).to_byte_array());
        Ok(pb::SignChannelAnnouncementReply {
            node_signature: self
                .sign(&digest, self.keys.node_secret())
                .serialize_compact()
                .to_vec(),
            bitcoin_signature: self
                .sign(&digest, &self.secrets(&id).funding_key)
                .serialize_compact()
                .to_vec(),
        })
    }
}
