//! Client side of `signer.proto`: connect to a signer over mutual TLS and
//! send any typed request on its rpc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::signer::signer_client::SignerClient;
use crate::signer::{reply, request};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

/// The TLS files a client needs to reach a signer (made by `lnpd-signer init`).
#[derive(Clone, Debug)]
pub struct SignerTls {
    /// The signer's private CA certificate (`tls/ca.pem`).
    pub ca_cert: PathBuf,
    /// The node's client certificate (`tls/node.pem`); `None` connects without one.
    pub client_cert: Option<PathBuf>,
    /// The node's client key (`tls/node.key`).
    pub client_key: Option<PathBuf>,
    /// The name the signer's certificate is checked against.
    pub domain: String,
}

impl SignerTls {
    /// The standard files of a signer's `tls/` directory.
    pub fn from_signer_dir(tls_dir: &Path) -> Self {
        SignerTls {
            ca_cert: tls_dir.join("ca.pem"),
            client_cert: Some(tls_dir.join("node.pem")),
            client_key: Some(tls_dir.join("node.key")),
            domain: "localhost".into(),
        }
    }
}

/// Why the signer could not be reached.
#[derive(Debug)]
pub enum ClientError {
    /// A TLS file could not be read.
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Connection or TLS failure.
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A bad endpoint string.
    Endpoint(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io { path, source } => write!(f, "cannot read {path}: {source}"),
            ClientError::Connect { endpoint, source } => {
                write!(f, "cannot connect to the signer at {endpoint}: {source}")
            }
            ClientError::Endpoint(e) => {
                write!(f, "invalid signer endpoint {e:?}: expected host:port")
            }
        }
    }
}

impl std::error::Error for ClientError {}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Connects to the signer at `addr` (host:port) with mutual TLS.
pub async fn connect(addr: &str, tls: &SignerTls) -> Result<SignerClient<Channel>, ClientError> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca_cert)?))
        .domain_name(&tls.domain);
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|_| ClientError::Endpoint(addr.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .tls_config(cfg)
        .map_err(|source| ClientError::Connect {
            endpoint: addr.to_string(),
            source,
        })?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: addr.to_string(),
            source,
        })?;
    Ok(SignerClient::new(channel))
}

/// The policy rule a refusal names, if any.
pub fn refused_rule(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("lnpd-rule")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

macro_rules! dispatch {
    ($client:expr, $body:expr, { $($q:ident => $method:ident => $a:ident,)* }) => {
        match $body {
            $(request::Body::$q(r) => $client.$method(r).await.map(|r| reply::Body::$a(r.into_inner())),)*
        }
    };
}

/// Sends requests as one batch (handled in order, made durable together);
/// one reply per request, each a result or an `Error` body.
pub async fn call_batch(
    client: &mut SignerClient<Channel>,
    bodies: Vec<request::Body>,
) -> Result<Vec<crate::signer::Reply>, Status> {
    let requests = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| crate::signer::Request {
            id: i as u64,
            body: Some(b),
        })
        .collect();
    Ok(client
        .batch(crate::signer::BatchRequest { requests })
        .await?
        .into_inner()
        .replies)
}

/// Sends one typed request on its rpc and returns the typed reply.
pub async fn call(
    client: &mut SignerClient<Channel>,
    body: request::Body,
) -> Result<reply::Body, Status> {
    dispatch!(client, body, {
        Ping => ping => Ping,
        Info => info => Info,
        GetNodeId => get_node_id => GetNodeId,
        Ecdh => ecdh => Ecdh,
        SignInvoice => sign_invoice => RecoverableSignature,
        SignBolt12Invoice => sign_bolt12_invoice => SchnorrSignature,
        SignGossip => sign_gossip => Signature,
        SignMessage => sign_message => SignMessage,
        GetNodeKeys => get_node_keys => GetNodeKeys,
        NewChannelKeysId => new_channel_keys_id => NewChannelKeysId,
        GetChannelPublicKeys => get_channel_public_keys => ChannelPublicKeys,
        SetupChannel => setup_channel => SetupChannel,
        GetDestinationScript => get_destination_script => Script,
        GetShutdownScript => get_shutdown_script => Script,
        GetPerCommitmentPoint => get_per_commitment_point => GetPerCommitmentPoint,
        ReleaseCommitmentSecret => release_commitment_secret => ReleaseCommitmentSecret,
        ValidateHolderCommitment => validate_holder_commitment => ValidateHolderCommitment,
        ValidateCounterpartyRevocation => validate_counterparty_revocation => ValidateCounterpartyRevocation,
        SignCounterpartyCommitment => sign_counterparty_commitment => SignCounterpartyCommitment,
        SignHolderCommitment => sign_holder_commitment => Signature,
        SignHolderHtlcTransaction => sign_holder_htlc_transaction => Signature,
        SignCounterpartyHtlcSweep => sign_counterparty_htlc_sweep => Signature,
        SignJusticeRevokedOutput => sign_justice_revoked_output => Signature,
        SignJusticeRevokedHtlc => sign_justice_revoked_htlc => Signature,
        SignClosingTransaction => sign_closing_transaction => Signature,
        SignChannelAnnouncement => sign_channel_announcement => SignChannelAnnouncement,
        SignHolderAnchorInput => sign_holder_anchor_input => Signature,
        SpendSpendableOutputs => spend_spendable_outputs => SpendSpendableOutputs,
        GetWalletDescriptor => get_wallet_descriptor => GetWalletDescriptor,
        SignPsbt => sign_psbt => SignPsbt,
        ShowInvoice => show_invoice => ShowInvoice,
        UpdateChain => update_chain => UpdateChain,
        ProveFunding => prove_funding => ProveFunding,
    })
}
