//! `info`: what the signer holds and how it is configured.

use crate::cli::Common;
use crate::common::{open, Opened};
use anyhow::{anyhow, bail, Result};

pub(crate) fn info(common: Common, json: bool) -> Result<()> {
    let Opened {
        mut signer,
        sealing,
        ..
    } = open(&common)?;
    let desc = signer
        .handle(lnpd_proto::signer::request::Body::GetWalletDescriptor(
            Default::default(),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    let lnpd_proto::signer::reply::Body::GetWalletDescriptor(desc) = desc else {
        bail!("unexpected reply")
    };
    let channels: Vec<_> = signer
        .channels()
        .map(|(id, c)| {
            (
                hex::encode(id.0),
                c.setup.as_ref().map(|s| s.channel_value_sat),
                c.holder_number(),
                c.counterparty_number(),
                c.closing_signed,
            )
        })
        .collect();
    if json {
        let chans: Vec<String> = channels
            .iter()
            .map(|(id, v, h, c, closed)| {
                format!(
                    "{{\"channel_keys_id\":\"{id}\",\"value_sat\":{},\"holder_commitment\":{},\"counterparty_commitment\":{},\"closing_signed\":{closed}}}",
                    v.map_or("null".into(), |v| v.to_string()),
                    h.map_or("null".into(), |v| v.to_string()),
                    c.map_or("null".into(), |v| v.to_string())
                )
            })
            .collect();
        println!(
            "{{\"node_id\":\"{}\",\"network\":\"{}\",\"seed\":{},\"external_descriptor\":\"{}\",\"internal_descriptor\":\"{}\",\"channels\":[{}]}}",
            signer.node_id(),
            signer.network().to_core_arg(),
            serde_json::Value::from(sealing.describe()),
            desc.external_descriptor,
            desc.internal_descriptor,
            chans.join(",")
        );
    } else {
        println!("node id:     {}", signer.node_id());
        println!("network:     {}", signer.network().to_core_arg());
        println!("seed:        {}", sealing.describe());
        println!("receive:     {}", desc.external_descriptor);
        println!("change:      {}", desc.internal_descriptor);
        println!("channels:    {}", channels.len());
        for (id, v, h, c, closed) in channels {
            println!(
                "  {id}  value={}  holder=#{}  counterparty=#{}{}",
                v.map_or("not set up".into(), |v| format!("{v} sat")),
                h.map_or("-".into(), |v| v.to_string()),
                c.map_or("-".into(), |v| v.to_string()),
                if closed { "  (closing signed)" } else { "" }
            );
        }
    }
    Ok(())
}
