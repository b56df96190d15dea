//! TLS material for mutual authentication between node and signer: a private
//! CA, the signer's server certificate and the node's client certificate,
//! all made with `rcgen` (pure Rust; no OpenSSL).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths of the TLS files in a signer's `tls/` directory.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The private CA's certificate (give it to the node).
    pub ca_cert: PathBuf,
    /// The private CA's key (stays with the signer).
    pub ca_key: PathBuf,
    /// The signer's server certificate.
    pub server_cert: PathBuf,
    /// The signer's server key.
    pub server_key: PathBuf,
    /// The node's client certificate (give it to the node).
    pub node_cert: PathBuf,
    /// The node's client key (give it to the node).
    pub node_key: PathBuf,
}

impl TlsFiles {
    /// The standard file names under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
        }
    }
}

/// Why TLS material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Disk error, with the file concerned.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Writes a file readable by its owner only (keys, the encrypted seed).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "lnpd signer private CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn leaf(
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    Ok(p)
}

/// Creates a CA, a server certificate for `hosts` (names or IP addresses)
/// and a node client certificate in `dir`. Refuses to overwrite.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<TlsFiles, TlsError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let files = TlsFiles::in_dir(dir);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params()?, &ca_key);

    let server_key = KeyPair::generate()?;
    let server_cert = leaf(
        "lnpd-signer",
        hosts.to_vec(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?
    .signed_by(&server_key, &issuer)?;
    let node_key = KeyPair::generate()?;
    let node_cert = leaf("lnpd-node", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?
        .signed_by(&node_key, &issuer)?;

    for (path, pem, private) in [
        (&files.ca_key, ca_key.serialize_pem(), true),
        (&files.ca_cert, ca_cert.pem(), false),
        (&files.server_key, server_key.serialize_pem(), true),
        (&files.server_cert, server_cert.pem(), false),
        (&files.node_key, node_key.serialize_pem(), true),
        (&files.node_cert, node_cert.pem(), false),
    ] {
        if private {
            write_private(path, pem.as_bytes()).map_err(io(path))?;
        } else {
            fs::write(path, pem.as_bytes()).map_err(io(path))?;
        }
    }
    Ok(files)
}

/// Reads a PEM file, naming it in the error.
pub fn read_pem(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io(path))
}
