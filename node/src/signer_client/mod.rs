//! The node's remote signer: LDK's signer traits (`NodeSigner`,
//! `SignerProvider`, `EntropySource`, `OutputSpender`, `ChannelSigner`,
//! `EcdsaChannelSigner`) answered by `lnpd-signer` over gRPC with mutual TLS.
//! The node holds no private key: only public data (node id, channel public
//! keys) is cached here, plus the three symmetric keys LDK keeps in the node.

pub mod channel;
pub mod connection;
pub mod convert;
pub mod inbound;
pub mod keys;
pub mod onion_ecdh;
pub mod queued;

pub use channel::RemoteChannelSigner;
pub use connection::{CallError, GrpcTransport, SignerConnection, SignerTransport};
pub use keys::RemoteKeysManager;
pub use lnpd_proto::client::{call, connect, ClientError, SignerTls};
