//! Keeps the signer's view of the chain up with the node's: the signer
//! bounds HTLC expiries and sweep locktimes by the chain height, which it
//! learns only from block headers it checks itself (proof of work,
//! connection). The node sends what the signer lacks after each new block.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use lnpd_proto::signer::{reply, request, UpdateChainReply, UpdateChainRequest};

use crate::chain::ChainRpc;
use crate::signer_client::SignerConnection;

/// Headers per request (the signer takes at most 2000).
const CHUNK: u32 = 500;

/// Why the signer's chain could not be brought up to date (retried on the next block).
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The chain backend failed.
    #[error("chain backend: {0}")]
    Chain(#[from] crate::chain::ChainError),
    /// The signer refused or did not answer.
    #[error("signer: {0}")]
    Signer(String),
}

async fn update(
    signer: &Arc<SignerConnection>,
    first_height: u32,
    headers: Vec<Vec<u8>>,
) -> Result<UpdateChainReply, FeedError> {
    let signer = signer.clone();
    let body = request::Body::UpdateChain(UpdateChainRequest {
        first_height,
        headers,
    });
    let reply = tokio::task::spawn_blocking(move || signer.call(body, Duration::from_secs(30)))
        .await
        .map_err(|e| FeedError::Signer(e.to_string()))?
        .map_err(|e| FeedError::Signer(e.to_string()))?;
    match reply {
        reply::Body::UpdateChain(r) => Ok(r),
        _ => Err(FeedError::Signer("wrong reply type".into())),
    }
}

/// The headers after the block `block` up to the one just before the
/// signer's window of headers: what links an older funding block to it.
pub async fn headers_linking(
    chain: &ChainRpc,
    signer: &Arc<SignerConnection>,
    block: &BlockHash,
) -> Result<Vec<Vec<u8>>, FeedError> {
    let tip = update(signer, 0, Vec::new()).await?;
    let at = chain.header(block).await?.height;
    let mut headers = Vec::new();
    for h in at + 1..tip.first_height {
        let hash = chain.block_hash_at(h).await?;
        headers.push(serialize(&chain.raw_header(&hash).await?));
    }
    Ok(headers)
}

/// Sends the signer the headers it lacks up to `best`; returns the
/// signer's tip height. A signer on a stale branch gets the best chain from
/// the oldest block it keeps (it takes the branch once it is longer).
pub async fn feed(
    chain: &ChainRpc,
    signer: &Arc<SignerConnection>,
    best: (BlockHash, u32),
) -> Result<u32, FeedError> {
    let tip = update(signer, 0, Vec::new()).await?;
    let (best_hash, best_height) = best;
    if tip.block_hash == best_hash.to_byte_array() || tip.height >= best_height {
        return Ok(tip.height);
    }
    let ours = chain.block_hash_at(tip.height).await?;
    let mut next = if ours.to_byte_array() == tip.block_hash.as_slice() {
        tip.height + 1
    } else {
        tracing::info!(
            "the signer's chain tip {} is not on the best chain: resending from {}",
            tip.height,
            tip.first_height + 1
        );
        tip.first_height + 1
    };
    let mut height = tip.height;
    while next <= best_height {
        let last = best_height.min(next + CHUNK - 1);
        let mut headers = Vec::with_capacity((last - next + 1) as usize);
        for h in next..=last {
            let hash = chain.block_hash_at(h).await?;
            headers.push(serialize(&chain.raw_header(&hash).await?));
        }
        height = update(signer, next, headers).await?.height;
        next = last + 1;
    }
    tracing::debug!("signer's chain at height {height}");
    Ok(height)
}
