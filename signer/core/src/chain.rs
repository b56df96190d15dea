//! The chain as the signer knows it, for the rules that need the current
//! height (`commitment-htlc-cltv-range`, `sweep-locktime-range`): block
//! headers the node feeds with `UpdateChain`, each checked to connect to the
//! one before and to carry its proof of work, from the network's genesis (or
//! an operator's checkpoint) on. The node can withhold headers, which only
//! makes the signer stricter (it believes in a lower height); it cannot make
//! the signer believe in a higher one without mining the blocks.
//!
//! Checked, as each network's consensus has it: connection, proof of work
//! against the header's own target, the target at most the network's
//! limit, the target unchanged between retargets and exactly the one the
//! last period's timespan gives at a retarget (mainnet, signet, testnet3
//! and testnet4; regtest never retargets), testnet's minimum-difficulty
//! blocks (only after 20 minutes without a block; otherwise the period's
//! target), the median-time-past rule, and no header more than two hours
//! ahead of the signer's clock. On every network but regtest the chain
//! starts from an operator's checkpoint at a retarget height (a multiple
//! of 2016): from genesis a node could keep feeding ancient headers, and
//! the signer needs the period's first header for exact retargets. Not
//! checked: signet's block signatures (signet coins carry no value).

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
    /// The first header of the tip's retarget period, with its height,
    /// when known (kept once it leaves the window).
    pub period: Option<(u32, Header)>,
}

impl ChainView {
    /// The view from stored headers, or from `base` when none are stored.
    /// `period` is the stored first header of the tip's period (height,
    /// 80 bytes), empty when not stored.
    pub fn load(
        first_height: u32,
        stored: &[Vec<u8>],
        base: Checkpoint,
        period: (u32, &[u8]),
    ) -> Result<Self, SignerError> {
        if stored.is_empty() {
            let mut view = ChainView {
                first_height: base.height,
                headers: alloc::vec![base.header],
                period: None,
            };
            view.period = view.find_period(None);
            return Ok(view);
        }
        let headers = stored
            .iter()
            .map(|b| deserialize(b))
            .collect::<Result<Vec<Header>, _>>()
            .map_err(|_| SignerError::internal("stored block header does not decode"))?;
        let kept = if period.1.is_empty() {
            None
        } else {
            Some((
                period.0,
                deserialize(period.1)
                    .map_err(|_| SignerError::internal("stored period header does not decode"))?,
            ))
        };
        let mut view = ChainView {
            first_height,
            headers,
            period: None,
        };
        view.period = view.find_period(kept);
        Ok(view)
    }

    /// The first header of the tip's period: in the window, or `kept` if
    /// it is that one.
    fn find_period(&self, kept: Option<(u32, Header)>) -> Option<(u32, Header)> {
        let tip = self.height();
        let start = tip - tip % RETARGET_INTERVAL;
        if start >= self.first_height {
            return Some((start, self.headers[(start - self.first_height) as usize]));
        }
        kept.filter(|(h, _)| *h == start)
    }

    /// The header at `height`, if in the window.
    pub fn header_at(&self, height: u32) -> Option<&Header> {
        height
            .checked_sub(self.first_height)
            .and_then(|i| self.headers.get(i as usize))
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
        let mut all: Vec<Header> = self.headers[..keep].to_vec();
        // The period start of the branch point, for a retarget in the new
        // headers whose period began before the window.
        let mut period = self.period.filter(|(h, _)| *h < self.first_height);
        for (i, h) in headers.iter().enumerate() {
            let height = first_height + i as u32;
            let context = Context {
                network,
                params: &params,
                before: &all,
                first_height: self.first_height,
                period,
            };
            check_header(&context, h, height, now)?;
            all.push(*h);
            if height.is_multiple_of(RETARGET_INTERVAL) {
                period = Some((height, *h));
            }
        }
        let drop = all.len().saturating_sub(WINDOW);
        let mut view = ChainView {
            first_height: self.first_height + drop as u32,
            headers: all.split_off(drop),
            period: None,
        };
        view.period = view.find_period(period);
        Ok(view)
    }
}

/// Blocks per retarget period.
pub const RETARGET_INTERVAL: u32 = 2016;

/// What a header is checked against.
struct Context<'a> {
    network: Network,
    params: &'a Params,
    /// The headers before it, oldest first, from `first_height`.
    before: &'a [Header],
    first_height: u32,
    /// The first header of a period that began before `before`.
    period: Option<(u32, Header)>,
}

impl Context<'_> {
    fn at(&self, height: u32) -> Option<&Header> {
        if let Some(h) = height
            .checked_sub(self.first_height)
            .and_then(|i| self.before.get(i as usize))
        {
            return Some(h);
        }
        self.period
            .as_ref()
            .filter(|(h, _)| *h == height)
            .map(|(_, h)| h)
    }
}

/// Most headers linking an older block to the signer's window.
const MAX_LINK_HEADERS: usize = 10_000;

/// The height of `block` when `later` links it to the window: each header
/// follows the one before with its proof of work and a target the network
/// allows (unchanged between retargets, within a factor of four at one),
/// and the last is the header just before the window's first.
pub(crate) fn linked_height(
    view: &ChainView,
    network: Network,
    block: &Header,
    later: &[Vec<u8>],
) -> Result<u32, SignerError> {
    if later.len() > MAX_LINK_HEADERS {
        return Err(SignerError::invalid(format!(
            "at most {MAX_LINK_HEADERS} headers link a block to the signer's window"
        )));
    }
    let headers = decode_headers(later)?;
    let params = Params::new(network);
    let first = view
        .headers
        .first()
        .ok_or_else(|| SignerError::internal("empty chain view"))?;
    let bad = |why: &str| SignerError::invalid(format!("headers after the funding block: {why}"));
    let mut prev = *block;
    for h in &headers {
        if h.prev_blockhash != prev.block_hash() {
            return Err(bad("a header does not follow the one before"));
        }
        let target = h.target();
        if target > params.max_attainable_target || h.validate_pow(target).is_err() {
            return Err(bad("a header lacks its proof of work"));
        }
        let prev_target = prev.target();
        let allowed = h.bits == prev.bits
            || params.allow_min_difficulty_blocks
            || (target >= prev_target.min_transition_threshold()
                && target <= prev_target.max_transition_threshold(&params));
        if !allowed {
            return Err(bad("a target changes more than the network allows"));
        }
        prev = *h;
    }
    if first.prev_blockhash != prev.block_hash() {
        return Err(bad("they do not lead to the signer's window"));
    }
    view.first_height
        .checked_sub(headers.len() as u32 + 1)
        .ok_or_else(|| bad("more headers than the chain has blocks"))
}

/// One header against the chain before it.
/// Decodes serialized 80-byte block headers, refusing any other length.
pub(crate) fn decode_headers(raw: &[Vec<u8>]) -> Result<Vec<Header>, SignerError> {
    raw.iter()
        .map(|b| {
            if b.len() != 80 {
                return Err(SignerError::invalid("a block header is 80 bytes"));
            }
            deserialize::<Header>(b)
                .map_err(|_| SignerError::invalid("block header does not decode"))
        })
        .collect()
}

fn check_header(c: &Context, h: &Header, height: u32, now: u64) -> Result<(), SignerError> {
    let bad = |why: &str| SignerError::invalid(format!("block header at height {height}: {why}"));
    let prev = c
        .before
        .last()
        .ok_or_else(|| SignerError::internal("no header to extend"))?;
    let params = c.params;
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
    let expected = expected_bits(c, h, height).map_err(|why| bad(&why))?;
    if let Some(bits) = expected {
        if h.bits != bits {
            return Err(bad("target is not the one the network's rules give"));
        }
    }
    // Median time past of the eleven blocks before.
    if c.before.len() >= 11 {
        let mut times: Vec<u32> = c.before[c.before.len() - 11..]
            .iter()
            .map(|b| b.time)
            .collect();
        times.sort_unstable();
        if h.time <= times[5] {
            return Err(bad("time not after the median of the eleven blocks before"));
        }
    }
    if now > 0 && u64::from(h.time) > now + MAX_FUTURE_SECS {
        return Err(bad("time more than two hours ahead of the signer's clock"));
    }
    Ok(())
}

/// The bits a header at `height` must carry; none when the network lets
/// the header choose (testnet's minimum-difficulty blocks).
fn expected_bits(
    c: &Context,
    h: &Header,
    height: u32,
) -> Result<Option<bitcoin::CompactTarget>, alloc::string::String> {
    let params = c.params;
    let prev = c.before.last().ok_or("no header before")?;
    if params.no_pow_retargeting {
        return Ok(Some(prev.bits));
    }
    let pow_limit = params.max_attainable_target.to_compact_lossy();
    if height.is_multiple_of(RETARGET_INTERVAL) {
        let start = c
            .at(height - RETARGET_INTERVAL)
            .ok_or("the period's first header is not known (start from a checkpoint at a multiple of 2016)")?;
        // Testnet4 (BIP 94) retargets from the period's first target, not
        // from a minimum-difficulty block's.
        let last = if c.network == Network::Testnet4 {
            start.bits
        } else {
            prev.bits
        };
        let timespan = u64::from(prev.time.saturating_sub(start.time));
        return Ok(Some(bitcoin::CompactTarget::from_next_work_required(
            last, timespan, params,
        )));
    }
    if params.allow_min_difficulty_blocks {
        if u64::from(h.time) > u64::from(prev.time) + 2 * params.pow_target_spacing {
            // Twenty minutes without a block: the minimum is allowed.
            if h.bits == pow_limit {
                return Ok(None);
            }
        }
        // Otherwise the period's target: the last block that is not a
        // minimum-difficulty one, or the period's first.
        let mut at = height - 1;
        loop {
            let Some(b) = c.at(at) else {
                return Err("the period's target is not known".into());
            };
            if at.is_multiple_of(RETARGET_INTERVAL) || b.bits != pow_limit {
                return Ok(Some(b.bits));
            }
            at -= 1;
        }
    }
    Ok(Some(prev.bits))
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
        ChainView::load(0, &[], Checkpoint::genesis(Network::Regtest), (0, &[])).unwrap()
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
            (0, &[]),
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
