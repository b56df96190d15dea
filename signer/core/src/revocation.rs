//! The peer's revocation secrets as the signer keeps them (BOLT 3 compact
//! storage, LDK's encoding), and the obscured commitment number of a
//! commitment transaction. Pure data: no request handling.

use bitcoin::secp256k1::PublicKey;
use bitcoin::Transaction;
use lightning::ln::chan_utils::{self, CounterpartyCommitmentSecrets};
use lightning::util::ser::Readable;

use crate::error::SignerError;
use crate::state::ChannelRecord;
use lnpd_proto::{CommitmentNumber, INITIAL_COMMITMENT_NUMBER};

/// The peer's secrets a record holds.
pub fn counterparty_secrets(
    record: &ChannelRecord,
) -> Result<CounterpartyCommitmentSecrets, SignerError> {
    if record.counterparty_secrets.is_empty() {
        return Ok(CounterpartyCommitmentSecrets::new());
    }
    let mut cursor = &record.counterparty_secrets[..];
    CounterpartyCommitmentSecrets::read(&mut cursor)
        .map_err(|_| SignerError::internal("corrupt counterparty secrets in store"))
}

/// The peer's secret for its commitment `n`, if it revealed it. Never asks
/// LDK's compact storage for an index it cannot hold (that asserts).
pub fn known_secret(
    secrets: &CounterpartyCommitmentSecrets,
    n: CommitmentNumber,
) -> Option<[u8; 32]> {
    let idx = n.to_ldk();
    if idx < secrets.get_min_seen_secret() {
        return None;
    }
    secrets.get_secret(idx)
}

/// How many of its commitments the peer has revoked (they are revoked in order).
pub fn revoked_count(secrets: &CounterpartyCommitmentSecrets) -> u64 {
    let min = secrets.get_min_seen_secret();
    if min >= 1 << 48 {
        0
    } else {
        INITIAL_COMMITMENT_NUMBER - min + 1
    }
}

/// The commitment number (counting up) a commitment transaction carries in
/// its locktime and sequence (BOLT 3), given the funder's and the fundee's
/// payment basepoints. None when the transaction is not shaped as a
/// commitment.
pub fn commitment_number_of(
    tx: &Transaction,
    funder_payment_point: &PublicKey,
    fundee_payment_point: &PublicKey,
) -> Option<CommitmentNumber> {
    let input = tx.input.first()?;
    let lock = tx.lock_time.to_consensus_u32();
    let seq = input.sequence.0;
    if tx.input.len() != 1 || lock >> 24 != 0x20 || seq >> 24 != 0x80 {
        return None;
    }
    let obscured = (u64::from(seq & 0x00ff_ffff) << 24) | u64::from(lock & 0x00ff_ffff);
    let factor = chan_utils::get_commitment_transaction_number_obscure_factor(
        funder_payment_point,
        fundee_payment_point,
        true,
    );
    // The obscured value is the number counting up, as BOLT 3 counts.
    CommitmentNumber::new(obscured ^ factor).ok()
}
