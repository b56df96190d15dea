//! Small precise types for values that are easy to mix up, shared by the
//! node and the signer.

use core::fmt;

use crate::error::SignerError;

/// Identifies a channel's keys; the signer derives every channel secret from it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelKeysId(pub [u8; 32]);

impl ChannelKeysId {
    /// Parses a 32-byte id from a request field.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SignerError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            SignerError::invalid(alloc::format!(
                "channel_keys_id must be 32 bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self(arr))
    }
}

impl fmt::Display for ChannelKeysId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChannelKeysId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelKeysId({self})")
    }
}

/// LDK and BOLT 3 count commitment numbers down from 2^48 - 1.
pub const INITIAL_COMMITMENT_NUMBER: u64 = (1 << 48) - 1;

/// A commitment number counting *up* from 0 (the first commitment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitmentNumber(pub u64);

impl CommitmentNumber {
    /// Validates a number from a request (at most 2^48 - 1).
    pub fn new(n: u64) -> Result<Self, SignerError> {
        if n > INITIAL_COMMITMENT_NUMBER {
            return Err(SignerError::invalid(alloc::format!(
                "commitment number {n} exceeds 2^48 - 1"
            )));
        }
        Ok(Self(n))
    }
    /// The same number as LDK counts it (down from 2^48 - 1).
    pub fn to_ldk(self) -> u64 {
        INITIAL_COMMITMENT_NUMBER - self.0
    }
    /// Converts LDK's count-down index into ours.
    pub fn from_ldk(idx: u64) -> Result<Self, SignerError> {
        if idx > INITIAL_COMMITMENT_NUMBER {
            return Err(SignerError::invalid(
                "LDK commitment index exceeds 2^48 - 1",
            ));
        }
        Ok(Self(INITIAL_COMMITMENT_NUMBER - idx))
    }
}

impl fmt::Display for CommitmentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
