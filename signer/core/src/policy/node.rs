//! Rules on what the node key signs besides channels: invoices
//! (`invoice-sign-format`) and channel announcements
//! (`gossip-announcement-keys`). The node key signs SHA-256 digests of
//! several message kinds; data that is not what it claims to be could be
//! a digest of another kind of message.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use bitcoin::bech32::Fe32;
use bitcoin::Network;
use lightning::ln::msgs::UnsignedChannelAnnouncement;
use lightning::routing::gossip::NodeId;
use lightning_invoice::{Currency, RawBolt11Invoice};

use crate::error::SignerError;
use crate::policy::{PolicyConfig, RuleId};

/// `invoice-sign-format`: the human-readable part names this signer's
/// network, and the data parses as a BOLT 11 invoice's data part with a
/// payment hash.
pub fn validate_invoice(
    policy: &PolicyConfig,
    network: Network,
    hrp: &str,
    data_u5: &[u8],
) -> Result<(), SignerError> {
    let parsed = (|| {
        let data: Vec<Fe32> = data_u5
            .iter()
            .map(|v| Fe32::try_from(*v).map_err(|_| "data holds a value above 31".to_string()))
            .collect::<Result<_, _>>()?;
        RawBolt11Invoice::from_raw(hrp, &data).map_err(|e| e.to_string())
    })();
    let ours = Currency::from(network);
    let ok = match &parsed {
        Ok(raw) => raw.hrp.currency == ours && raw.payment_hash().is_some(),
        Err(_) => false,
    };
    policy.check(RuleId::InvoiceSignFormat, ok, || match parsed {
        Err(why) => format!("not a BOLT 11 invoice: {why}"),
        Ok(raw) if raw.hrp.currency != ours => format!(
            "an invoice for {:?}; the signer is on {network}",
            raw.hrp.currency
        ),
        Ok(_) => "the invoice has no payment hash".into(),
    })
}

/// `gossip-announcement-keys`: a channel announcement names this node with
/// one of its channels' funding keys, on the same side.
pub fn check_announcement_keys(
    policy: &PolicyConfig,
    msg: &UnsignedChannelAnnouncement,
    node: &NodeId,
    funding_keys: &[NodeId],
) -> Result<(), SignerError> {
    let ours = (msg.node_id_1 == *node && funding_keys.contains(&msg.bitcoin_key_1))
        || (msg.node_id_2 == *node && funding_keys.contains(&msg.bitcoin_key_2));
    policy.check(RuleId::GossipAnnouncementKeys, ours, || {
        "the channel_announcement does not pair this node with the funding key of one of its channels"
            .into()
    })
}
