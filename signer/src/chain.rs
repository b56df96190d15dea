//! The chain as the signer knows it, for the rules that need the current
//! height (`commitment-htlc-cltv-range`, `sweep-locktime-range`): block
//! headers the node feeds with `UpdateChain`, each checked to connect to the
//! one before and to carry its proof of work, from the network's genesis (or
//! an operator's checkpoint) on. The node can withhold headers, which only
//! makes the signer stricter (it believes in a lower height); it cannot make
//! the signer believe in a higher one without mining the blocks.
//!
//! Checked: connection, proof of work against the header's own target, the
//! target at most the network's limit, and the target unchanged between
//! retargets (changed by at most a factor of four at one; regtest never
//! retargets). Not checked: the exact retarget value, the median-time rule,
//! testnet's minimum-difficulty exception (any target within the limit is
//! taken there) and signet's block signatures.

use alloc::format;
use alloc::vec::Vec;

use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::consensus::params::Params;
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Network};

use crate::error::SignerError;

/// Headers kept: how deep a reorganisation the signer follows.
pub const WINDOW: usize = 144;
/// Most headers in one `UpdateChain` request.
pub const MAX_HEADERS_PER_UPDATE: usize = 2_000;
/// How far ahead of the signer's clock a header's time may be (as in Bitcoin Core).
const MAX_FUTURE_SECS: u64 = 7_200;

/// A header the chain starts from: the genesis block or a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its height.
    pub height: u32,
    /// The header.
    pub header: Header,
}

impl Checkpoint {
    /// The network's genesis block.
    pub fn genesis(network: Network) -> Self {
        Checkpoint {
            height: 0,
            header: bitcoin::constants::genesis_block(network).header,
        }
    }

    /// Parses `<height>:<80-byte header in hex>` (as `getblockheader <hash> false` prints it).
    pub fn parse(s: &str) -> Result<Self, SignerError> {
        let bad = || SignerError::invalid("checkpoint must be <height>:<block header hex>");
        let (height, hex) = s.trim().split_once(':').ok_or_else(bad)?;
        let height = height.trim().parse().map_err(|_| bad())?;
        let hex = hex.trim();
        if hex.len() != 160 {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..80)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let header = deserialize(&bytes).map_err(|_| bad())?;
        Ok(Checkpoint { height, header })
    }
}

/// The recent headers, oldest first; the last is the tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainView {
    /// Height of `headers[0]`.
    pub first_height: u32,
    /// Never empty.
    pub headers: Vec<Header>,
}

impl ChainView {
    /// The view from stored headers, or from `base` when none are stored.
    pub fn load(
        first_height: u32,
        stored: &[Vec<u8>],
        base: Checkpoint,
    ) -> Result<Self, SignerError> {
        if stored.is_empty() {
            return Ok(ChainView {
                first_height: base.height,
                headers: alloc::vec![base.header],
            });
        }
        let headers = stored
            .iter()
            .map(|b| deserialize(b))
            .collect::<Result<Vec<Header>, _>>()
            .map_err(|_| SignerError::internal("stored block header does not decode"))?;
        Ok(ChainView {
            first_height,
            headers,
        })
    }

    /// The tip's height.
    pub fn height(&self) -> u32 {
        self.first_height + self.headers.len() as u32 - 1
    }

    /// The tip's hash.
    pub fn tip_hash(&self) -> BlockHash {
        self.headers
            .last()
            .map_or(BlockHash::all_zeros(), |h| h.block_hash())
    }

    /// The headers, serialized for storage.
    pub fn encoded(&self) -> Vec<Vec<u8>> {
        self.headers.iter().map(serialize).collect()
    }

    /// Applies `headers`, the first at `first_height`: they extend the tip,
    /// or replace a branch of the window with a longer one. `now` is the
    /// signer's clock (0: unknown). Returns the new view; `self` is unchanged.
    pub fn extended(
        &self,
        network: Network,
        first_height: u32,
        headers: &[Header],
        now: u64,
    ) -> Result<ChainView, SignerError> {
        if headers.is_empty() {
            return Ok(self.clone());
        }
        if headers.len() > MAX_HEADERS_PER_UPDATE {
            return Err(SignerError::invalid(format!(
                "at most {MAX_HEADERS_PER_UPDATE} headers per update"
            )));
        }
        let tip = self.height();
        if first_height <= self.first_height || first_height > tip + 1 {
            return Err(SignerError::precondition(format!(
                "headers from height {first_height} do not connect: the signer knows {}..={tip}",
                self.first_height
            )));
        }
        let new_tip = first_height + headers.len() as u32 - 1;
        if new_tip <= tip && first_height <= tip {
            return Err(SignerError::precondition(format!(
                "a branch to height {new_tip} is not longer than the signer's chain (tip {tip})"
            )));
        }
        let keep = (first_height - self.first_height) as usize;
        let params = Params::new(network);
        let mut prev = self.headers[keep - 1];
        for (i, h) in headers.iter().enumerate() {
            let height = first_height + i as u32;
            check_header(&params, &prev, h, height, now)?;
            prev = *h;
        }
        let mut all: Vec<Header> = self.headers[..keep].to_vec();
        all.extend_from_slice(headers);
        let drop = all.len().saturating_sub(WINDOW);
        Ok(ChainView {
            first_height: self.first_height + drop as u32,
            headers: all.split_off(drop),
        })
    }
}

impl<S: crate::store::Store> crate::handler::Signer<S> {
    /// The chain as stored (the checkpoint or genesis before any update).
    pub fn chain_view(&self) -> Result<ChainView, SignerError> {
        let base = self
            .policy
            .chain_checkpoint
            .unwrap_or_else(|| Checkpoint::genesis(self.keys.network()));
        ChainView::load(self.meta.chain_first_height, &self.meta.chain_headers, base)
    }

    /// The height the signer believes the chain is at.
    pub(crate) fn chain_height(&self) -> u32 {
        // Counted, not decoded: this runs for every commitment signed.
        match self.meta.chain_headers.len() {
            0 => self.policy.chain_checkpoint.map_or(0, |c| c.height),
            n => self.meta.chain_first_height + n as u32 - 1,
        }
    }

    pub(crate) fn update_chain(
        &mut self,
        r: &lnpd_proto::signer::UpdateChainRequest,
    ) -> Result<lnpd_proto::signer::UpdateChainReply, SignerError> {
        let headers = r
            .headers
            .iter()
            .map(|b| {
                if b.len() != 80 {
                    return Err(SignerError::invalid("a block header is 80 bytes"));
                }
                deserialize::<Header>(b)
                    .map_err(|_| SignerError::invalid("block header does not decode"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let view = self.chain_view()?;
        let next = view.extended(self.keys.network(), r.first_height, &headers, self.now)?;
        if next != view {
            let mut meta = self.meta.clone();
            meta.chain_first_height = next.first_height;
            meta.chain_headers = next.encoded();
            self.commit_meta(meta)?;
        }
        Ok(lnpd_proto::signer::UpdateChainReply {
            height: next.height(),
            block_hash: next.tip_hash().to_byte_array().to_vec(),
            first_height: next.first_height,
        })
    }
}

/// One header against its predecessor.
fn check_header(
    params: &Params,
    prev: &Header,
    h: &Header,
    height: u32,
    now: u64,
) -> Result<(), SignerError> {
    let bad = |why: &str| SignerError::invalid(format!("block header at height {height}: {why}"));
    if h.prev_blockhash != prev.block_hash() {
        return Err(bad("does not follow the block before"));
    }
    let target = h.target();
    if target > params.max_attainable_target {
        return Err(bad("target above the network's limit"));
    }
    if h.validate_pow(target).is_err() {
        return Err(bad("proof of work does not meet its target"));
    }
    let prev_target = prev.target();
    let retarget = u64::from(height).is_multiple_of(params.difficulty_adjustment_interval());
    let target_ok = if params.no_pow_retargeting {
        h.bits == prev.bits
    } else if params.allow_min_difficulty_blocks {
        true
    } else if retarget {
        target >= prev_target.min_transition_threshold()
            && target <= prev_target.max_transition_threshold(params)
    } else {
        h.bits == prev.bits
    };
    if !target_ok {
        return Err(bad("target changes where the network does not allow it"));
    }
    if now > 0 && u64::from(h.time) > now + MAX_FUTURE_SECS {
        return Err(bad("time more than two hours ahead of the signer's clock"));
    }
    Ok(())
}

/// `n` regtest headers mined on `from` (about two tries each); `salt`
/// tells branches apart. For tests.
#[cfg(any(test, feature = "test-utils"))]
pub fn mine_regtest(from: &Header, n: usize, salt: u8) -> Vec<Header> {
    let mut out: Vec<Header> = Vec::with_capacity(n);
    for _ in 0..n {
        let prev = *out.last().unwrap_or(from);
        let mut h = Header {
            version: bitcoin::block::Version::TWO,
            prev_blockhash: prev.block_hash(),
            merkle_root: bitcoin::TxMerkleNode::from_byte_array([salt; 32]),
            time: prev.time + 600,
            bits: prev.bits,
            nonce: 0,
        };
        while h.validate_pow(h.target()).is_err() {
            h.nonce += 1;
        }
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::CompactTarget;

    fn chain(from: &Header, n: usize, salt: u8) -> Vec<Header> {
        mine_regtest(from, n, salt)
    }

    fn genesis_view() -> ChainView {
        ChainView::load(0, &[], Checkpoint::genesis(Network::Regtest)).unwrap()
    }

    #[test]
    fn follows_a_chain_and_keeps_a_window() {
        let v = genesis_view();
        assert_eq!(v.height(), 0);
        let blocks = chain(&v.headers[0], 200, 1);
        let v = v.extended(Network::Regtest, 1, &blocks[..150], 0).unwrap();
        let v = v
            .extended(Network::Regtest, 151, &blocks[150..], 0)
            .unwrap();
        assert_eq!(v.height(), 200);
        assert_eq!(v.headers.len(), WINDOW);
        assert_eq!(v.tip_hash(), blocks[199].block_hash());
        let back = ChainView::load(
            v.first_height,
            &v.encoded(),
            Checkpoint::genesis(Network::Regtest),
        )
        .unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn takes_a_longer_branch_and_refuses_a_shorter_one() {
        let v = genesis_view();
        let main = chain(&v.headers[0], 10, 1);
        let v = v.extended(Network::Regtest, 1, &main, 0).unwrap();
        let fork = chain(&main[6], 3, 2); // heights 8..=10: not longer
        assert!(v.extended(Network::Regtest, 8, &fork, 0).is_err());
        let fork = chain(&main[6], 5, 2); // heights 8..=12
        let v = v.extended(Network::Regtest, 8, &fork, 0).unwrap();
        assert_eq!(v.height(), 12);
        assert_eq!(v.tip_hash(), fork[4].block_hash());
    }

    #[test]
    fn refuses_forged_or_disconnected_headers() {
        let v = genesis_view();
        let blocks = chain(&v.headers[0], 3, 1);
        // A gap.
        assert!(v.extended(Network::Regtest, 2, &blocks[1..], 0).is_err());
        // Not on our chain.
        let other = chain(&blocks[0], 1, 9);
        assert!(v.extended(Network::Regtest, 1, &other, 0).is_err());
        // Proof of work missing.
        let mut forged = blocks[0];
        while forged.validate_pow(forged.target()).is_ok() {
            forged.nonce += 1;
        }
        assert!(v.extended(Network::Regtest, 1, &[forged], 0).is_err());
        // An easier target than regtest allows, or a changed one.
        let mut easy = blocks[0];
        easy.bits = CompactTarget::from_consensus(0x2100ffff);
        assert!(v.extended(Network::Regtest, 1, &[easy], 0).is_err());
        // From the future.
        let late = blocks[0];
        assert!(v
            .extended(Network::Regtest, 1, &[late], u64::from(late.time) - 7_201)
            .is_err());
        assert!(v
            .extended(Network::Regtest, 1, &[late], u64::from(late.time))
            .is_ok());
    }

    #[test]
    fn parses_a_checkpoint() {
        let g = Checkpoint::genesis(Network::Regtest);
        let hex: alloc::string::String = serialize(&g.header)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(Checkpoint::parse(&format!("0:{hex}")).unwrap(), g);
        assert!(Checkpoint::parse("12:abcd").is_err());
        assert!(Checkpoint::parse(&hex).is_err());
    }
}
