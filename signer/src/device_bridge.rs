//! `lnpd-signer run --device`: the node's gRPC calls bridged to a hardware
//! signer, found with hidapi (by vendor/product id or a hidraw path) or the
//! simulator's Unix socket carrying the same 64-byte reports. The device
//! holds the keys and enforces the policy; this side only moves messages,
//! after checking on each connection that the device is the one paired
//! with this host (`lnpd-signer pair`) and proving to it that this is the
//! paired host.
//!
//! No USB device is attached to the machines this project is tested on: the
//! hidapi path is built and its "nothing found" error tested; everything
//! else runs against the simulator.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, Secp256k1, SecretKey};
use lnpd_proto::device_client::{DeviceClient, LinkError, ReportLink};
use lnpd_proto::hid::{Report, MAX_MESSAGE, REPORT_SIZE};
use lnpd_proto::pairing::{hello_digest, host_hello_digest, pairing_code};
use lnpd_proto::signer::{self as pb, device_reply, device_request, reply, request};
use lnpd_signer_core::{ChannelKeysId, SignerError};
use serde::{Deserialize, Serialize};

use crate::server::Backend;

/// USB vendor id of the lnpd signer (pid.codes' open-source range).
pub const DEFAULT_VID: u16 = 0x1209;
/// USB product id of the lnpd signer.
pub const DEFAULT_PID: u16 = 0x4C4E;
/// How long a reply may take: the device may be waiting for its button.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the device is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The simulator's socket.
    Sim(PathBuf),
    /// A USB HID device by vendor and product id.
    Hid {
        /// Vendor id.
        vid: u16,
        /// Product id.
        pid: u16,
    },
    /// A USB HID device by its path (e.g. /dev/hidraw3).
    HidPath(String),
}

impl FromStr for DeviceSpec {
    type Err = BridgeError;
    fn from_str(s: &str) -> Result<Self, BridgeError> {
        let bad = || {
            BridgeError::Spec(format!(
                "{s:?}: use sim:<socket>, hid, hid:<vid>:<pid> (hex) or a /dev/hidraw path"
            ))
        };
        if let Some(path) = s.strip_prefix("sim:") {
            return Ok(DeviceSpec::Sim(PathBuf::from(path)));
        }
        if s == "hid" {
            return Ok(DeviceSpec::Hid {
                vid: DEFAULT_VID,
                pid: DEFAULT_PID,
            });
        }
        if let Some(ids) = s.strip_prefix("hid:") {
            let (v, p) = ids.split_once(':').ok_or_else(bad)?;
            let id =
                |x: &str| u16::from_str_radix(x.trim_start_matches("0x"), 16).map_err(|_| bad());
            return Ok(DeviceSpec::Hid {
                vid: id(v)?,
                pid: id(p)?,
            });
        }
        if s.starts_with('/') {
            return Ok(DeviceSpec::HidPath(s.to_string()));
        }
        Err(bad())
    }
}

/// What went wrong reaching or trusting the device.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A `--device` value that names nothing.
    #[error("--device {0}")]
    Spec(String),
    /// Nothing found where the spec points.
    #[error("no hardware signer found: {0}")]
    NotFound(String),
    /// The link failed.
    #[error("hardware signer link: {0}")]
    Link(String),
    /// The device answered with an error.
    #[error("the device refused: {0}")]
    Device(String),
    /// Not paired, or not the paired device.
    #[error("{0}")]
    Trust(String),
    /// A file of the data directory.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

type Link = Box<dyn ReportLink<Error = std::io::Error> + Send>;

/// The simulator's socket.
struct SimLink(UnixStream);

impl ReportLink for SimLink {
    type Error = std::io::Error;
    fn send(&mut self, report: &Report) -> std::io::Result<()> {
        self.0.write_all(report)
    }
    fn receive(&mut self) -> std::io::Result<Report> {
        let mut r = [0u8; REPORT_SIZE];
        self.0.read_exact(&mut r)?;
        Ok(r)
    }
}

/// A USB HID device.
struct HidLink(hidapi::HidDevice);

impl ReportLink for HidLink {
    type Error = std::io::Error;
    fn send(&mut self, report: &Report) -> std::io::Result<()> {
        // hidapi takes the report id first: 0, the device has one report.
        let mut out = [0u8; REPORT_SIZE + 1];
        out[1..].copy_from_slice(report);
        self.0
            .write(&out)
            .map(|_| ())
            .map_err(std::io::Error::other)
    }
    fn receive(&mut self) -> std::io::Result<Report> {
        let mut r = [0u8; REPORT_SIZE];
        let n = self
            .0
            .read_timeout(&mut r, REPLY_TIMEOUT.as_millis() as i32)
            .map_err(std::io::Error::other)?;
        if n != REPORT_SIZE {
            return Err(std::io::Error::other(format!(
                "a {n}-byte report (timed out or short)"
            )));
        }
        Ok(r)
    }
}

/// Opens the link `spec` names.
pub fn open_link(spec: &DeviceSpec) -> Result<Link, BridgeError> {
    match spec {
        DeviceSpec::Sim(path) => {
            // A simulator that just started may not listen yet.
            let mut tries = 0;
            let connected = loop {
                match UnixStream::connect(path) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 20 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => break other,
                }
            };
            let s = connected.map_err(|e| {
                BridgeError::NotFound(format!(
                    "cannot connect to the simulator at {}: {e} (is lnpd-signer-sim running?)",
                    path.display()
                ))
            })?;
            s.set_read_timeout(Some(REPLY_TIMEOUT))
                .map_err(|e| BridgeError::Link(e.to_string()))?;
            Ok(Box::new(SimLink(s)))
        }
        DeviceSpec::Hid { vid, pid } => {
            let api = hidapi::HidApi::new()
                .map_err(|e| BridgeError::NotFound(format!("USB HID unavailable: {e}")))?;
            let seen = api.device_list().count();
            let found = api
                .device_list()
                .find(|d| d.vendor_id() == *vid && d.product_id() == *pid)
                .ok_or_else(|| {
                    BridgeError::NotFound(format!(
                        "no USB HID device with vendor id {vid:04x} and product id {pid:04x} \
                         (searched {seen} HID devices); attach the signer, pass its path \
                         (--device /dev/hidrawN), or use the simulator (--device sim:<socket>)"
                    ))
                })?;
            let dev = found
                .open_device(&api)
                .map_err(|e| BridgeError::Link(format!("opening {vid:04x}:{pid:04x}: {e}")))?;
            Ok(Box::new(HidLink(dev)))
        }
        DeviceSpec::HidPath(path) => {
            let api = hidapi::HidApi::new()
                .map_err(|e| BridgeError::NotFound(format!("USB HID unavailable: {e}")))?;
            let c = std::ffi::CString::new(path.as_str())
                .map_err(|_| BridgeError::Spec(format!("{path:?} is not a path")))?;
            let dev = api
                .open_path(&c)
                .map_err(|e| BridgeError::NotFound(format!("no USB HID device at {path}: {e}")))?;
            Ok(Box::new(HidLink(dev)))
        }
    }
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // Without OS randomness nothing here is safe: fail the whole process.
    if let Err(e) = getrandom::fill(&mut b) {
        eprintln!("fatal: no OS randomness: {e}");
        std::process::exit(1);
    }
    b
}

/// The host's identity (`host.key` in the data directory, owner-only).
pub struct HostKey(SecretKey);

impl HostKey {
    /// Loads the key, making it on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, BridgeError> {
        let file_err = |message: String| BridgeError::File {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let bytes = hex::decode(s.trim()).map_err(|e| file_err(e.to_string()))?;
                SecretKey::from_slice(&bytes)
                    .map(HostKey)
                    .map_err(|e| file_err(e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key =
                    SecretKey::from_slice(&random32()).map_err(|e| file_err(e.to_string()))?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                opts.open(path)
                    .and_then(|mut f| f.write_all(hex::encode(key.secret_bytes()).as_bytes()))
                    .map_err(|e| file_err(e.to_string()))?;
                Ok(HostKey(key))
            }
            Err(e) => Err(file_err(e.to_string())),
        }
    }

    /// Signs `digest` (the host's hello proof).
    fn sign(&self, digest: [u8; 32]) -> Vec<u8> {
        Secp256k1::new()
            .sign_ecdsa(&Message::from_digest(digest), &self.0)
            .serialize_compact()
            .to_vec()
    }

    /// The public key the device pairs with.
    pub fn public(&self) -> Vec<u8> {
        PublicKey::from_secret_key(&Secp256k1::new(), &self.0)
            .serialize()
            .to_vec()
    }
}

/// The paired device (`device.json` in the data directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paired {
    /// Its identity key (hex).
    pub device_key: String,
}

impl Paired {
    /// Reads `device.json`; a clear error when the host was never paired.
    pub fn load(path: &Path) -> Result<Self, BridgeError> {
        let s = std::fs::read_to_string(path).map_err(|_| {
            BridgeError::Trust(format!(
                "no paired device ({} missing): run `lnpd-signer pair --device ...` first",
                path.display()
            ))
        })?;
        serde_json::from_str(&s).map_err(|e| BridgeError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    fn save(&self, path: &Path) -> Result<(), BridgeError> {
        let body = serde_json::to_string_pretty(self).map_err(|e| BridgeError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(path, body).map_err(|e| BridgeError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

fn exchange(
    client: &mut DeviceClient<Link>,
    body: device_request::Body,
) -> Result<device_reply::Body, BridgeError> {
    let reply = client
        .exchange(&pb::DeviceRequest { body: Some(body) })
        .map_err(|e| match e {
            LinkError::Link(e) => BridgeError::Link(e.to_string()),
            LinkError::Frame(e) => BridgeError::Link(format!("bad reports from the device: {e}")),
            LinkError::Decode => BridgeError::Link("undecodable reply from the device".into()),
        })?;
    match reply.body {
        Some(device_reply::Body::Error(e)) => Err(BridgeError::Device(e.message)),
        Some(b) => Ok(b),
        None => Err(BridgeError::Link("empty reply from the device".into())),
    }
}

fn new_client(spec: &DeviceSpec) -> Result<DeviceClient<Link>, BridgeError> {
    let r = random32();
    Ok(DeviceClient::new(
        open_link(spec)?,
        u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
    ))
}

/// Pairs the device `spec` names with this host: shows the code (which the
/// device shows too), waits for the device's button, then `confirm(code)`
/// on this side; saves the device's key in `paired_file`.
pub fn pair(
    spec: &DeviceSpec,
    host: &HostKey,
    paired_file: &Path,
    confirm: impl FnOnce(&str) -> bool,
) -> Result<Paired, BridgeError> {
    let mut client = new_client(spec)?;
    let device_key = identity(&mut client)?.device_key;
    let nonce = random32().to_vec();
    let code = pairing_code(&device_key, &host.public(), &nonce);
    println!("pairing code: {code}");
    println!("check that the device shows the same code, then confirm on the device");
    let reply = match exchange(
        &mut client,
        device_request::Body::Pair(pb::PairRequest {
            host_key: host.public(),
            nonce,
        }),
    )? {
        device_reply::Body::Pair(p) => p,
        _ => return Err(BridgeError::Link("wrong reply to Pair".into())),
    };
    if reply.code != code || reply.device_key != device_key {
        return Err(BridgeError::Trust(
            "the device answered with another code or key: not paired".into(),
        ));
    }
    if !confirm(&code) {
        return Err(BridgeError::Trust(
            "pairing not confirmed on this side".into(),
        ));
    }
    let paired = Paired {
        device_key: hex::encode(&device_key),
    };
    paired.save(paired_file)?;
    Ok(paired)
}

/// The device's key and this connection's nonce.
fn identity(client: &mut DeviceClient<Link>) -> Result<pb::IdentityReply, BridgeError> {
    match exchange(client, device_request::Body::Identity(Default::default()))? {
        device_reply::Body::Identity(i) => Ok(i),
        _ => Err(BridgeError::Link("wrong reply to Identity".into())),
    }
}

/// A connection on which the device proved it is the paired one.
fn connect(
    spec: &DeviceSpec,
    host: &HostKey,
    paired: &Paired,
) -> Result<DeviceClient<Link>, BridgeError> {
    let mut client = new_client(spec)?;
    let expected = hex::decode(&paired.device_key).unwrap_or_default();
    let nonce = identity(&mut client)?.nonce;
    let challenge = random32().to_vec();
    let proof = host.sign(host_hello_digest(&nonce, client.cid(), &expected));
    let reply = match exchange(
        &mut client,
        device_request::Body::Hello(pb::HelloRequest {
            host_key: host.public(),
            challenge: challenge.clone(),
            host_signature: proof,
        }),
    )? {
        device_reply::Body::Hello(h) => h,
        _ => return Err(BridgeError::Link("wrong reply to Hello".into())),
    };
    let key = PublicKey::from_slice(&expected)
        .map_err(|_| BridgeError::Trust("device.json holds no valid device key".into()))?;
    let sig = Signature::from_compact(&reply.signature)
        .map_err(|_| BridgeError::Trust("the device's hello signature does not parse".into()))?;
    let digest = Message::from_digest(hello_digest(&challenge, &host.public()));
    if reply.device_key != expected || Secp256k1::new().verify_ecdsa(&digest, &sig, &key).is_err() {
        return Err(BridgeError::Trust(
            "this is not the paired device (its identity proof does not match device.json)".into(),
        ));
    }
    Ok(client)
}

/// Asks the paired device to add `entry` to its allow-list (its user
/// confirms on the device).
pub fn allowlist_add(
    spec: &DeviceSpec,
    host: &HostKey,
    paired: &Paired,
    entry: &str,
) -> Result<(), BridgeError> {
    let mut client = connect(spec, host, paired)?;
    match exchange(
        &mut client,
        device_request::Body::AllowlistAdd(pb::AllowlistAddRequest {
            entry: entry.to_string(),
        }),
    )? {
        device_reply::Body::AllowlistAdd(_) => Ok(()),
        _ => Err(BridgeError::Link("wrong reply to AllowlistAdd".into())),
    }
}

/// The bridge: the node's requests forwarded to the device.
pub struct DeviceBackend {
    spec: DeviceSpec,
    host: HostKey,
    paired: Paired,
    conn: Mutex<Option<DeviceClient<Link>>>,
    audit: Option<crate::audit::AuditLog>,
}

impl DeviceBackend {
    /// Connects to the paired device (and fails clearly if it is not there).
    pub fn connect(spec: DeviceSpec, host: HostKey, paired: Paired) -> Result<Self, BridgeError> {
        let client = connect(&spec, &host, &paired)?;
        Ok(DeviceBackend {
            spec,
            host,
            paired,
            conn: Mutex::new(Some(client)),
            audit: None,
        })
    }

    /// Records the device's refusals in `audit` (`lnpd-signer log`).
    pub fn with_audit(mut self, audit: crate::audit::AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Records a refusal by the device's policy (log and audit log).
    fn audit_refusal(&self, err: &SignerError, op: &str, channel: Option<ChannelKeysId>) {
        if let Some(rule) = err.rule {
            tracing::warn!(
                rule = rule.as_str(),
                op,
                "the device refused: {}",
                err.message
            );
            if let Some(audit) = &self.audit {
                audit.refusal_of(err, op, channel);
            }
        }
    }

    fn send(&self, body: device_request::Body) -> Result<device_reply::Body, SignerError> {
        let request = pb::DeviceRequest { body: Some(body) };
        if prost::Message::encoded_len(&request) > MAX_MESSAGE {
            return Err(SignerError::invalid(format!(
                "request too large for the hardware signer's link (over {MAX_MESSAGE} bytes)"
            )));
        }
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| SignerError::internal("device link lock poisoned"))?;
        if conn.is_none() {
            *conn = Some(connect(&self.spec, &self.host, &self.paired).map_err(|e| {
                tracing::warn!("hardware signer unavailable: {e}");
                SignerError::unavailable(e.to_string())
            })?);
        }
        let client = conn
            .as_mut()
            .ok_or_else(|| SignerError::internal("no device link"))?;
        match client.exchange(&request) {
            Ok(pb::DeviceReply { body: Some(b) }) => Ok(b),
            Ok(_) => Err(SignerError::internal("empty reply from the device")),
            Err(e) => {
                // Reconnect (and prove identity again) on the next request.
                *conn = None;
                let why = match e {
                    LinkError::Link(e) => e.to_string(),
                    LinkError::Frame(e) => e.to_string(),
                    LinkError::Decode => "undecodable reply".into(),
                };
                tracing::warn!("hardware signer link failed: {why}");
                Err(SignerError::unavailable(format!(
                    "hardware signer link failed: {why}"
                )))
            }
        }
    }
}

impl Backend for DeviceBackend {
    fn may_block_long(&self) -> bool {
        true
    }

    /// Ready when the device answers a ping (its state and keys are its own).
    fn status(&self) -> crate::server::BackendStatus {
        match self.call(request::Body::Ping(Default::default())) {
            Ok(_) => crate::server::BackendStatus {
                channels: None,
                pending_approvals: None,
                chain_height: None,
                ready: Ok("the hardware signer answers".into()),
            },
            Err(e) => crate::server::BackendStatus::not_ready(format!(
                "the hardware signer does not answer: {e}"
            )),
        }
    }

    fn call(&self, body: request::Body) -> Result<reply::Body, SignerError> {
        let op = body.name();
        let channel = body.channel_keys_id();
        let req = pb::Request {
            id: 1,
            body: Some(body),
        };
        let result = match self.send(device_request::Body::Request(req))? {
            device_reply::Body::Reply(reply) => reply.into_result(),
            device_reply::Body::Error(e) => Err(SignerError::from_wire(&e)),
            _ => Err(SignerError::internal("unexpected reply from the device")),
        };
        result.inspect_err(|e| self.audit_refusal(e, op, channel))
    }

    fn call_batch(
        &self,
        bodies: Vec<request::Body>,
    ) -> Result<Vec<Result<reply::Body, SignerError>>, SignerError> {
        let context: Vec<_> = bodies
            .iter()
            .map(|b| (b.name(), b.channel_keys_id()))
            .collect();
        let batch = pb::BatchRequest {
            requests: bodies
                .into_iter()
                .enumerate()
                .map(|(i, b)| pb::Request {
                    id: i as u64,
                    body: Some(b),
                })
                .collect(),
        };
        if prost::Message::encoded_len(&batch) + 16 > MAX_MESSAGE {
            // Too large for one message: one by one, in order (each its own
            // durable write on the device instead of one for all).
            return Ok(batch
                .requests
                .into_iter()
                .filter_map(|r| r.body)
                .map(|b| self.call(b))
                .collect());
        }
        let n = batch.requests.len();
        match self.send(device_request::Body::Batch(batch))? {
            device_reply::Body::Batch(b) if b.replies.len() == n => Ok(b
                .replies
                .into_iter()
                .zip(context)
                .map(|(r, (op, channel))| {
                    r.into_result()
                        .inspect_err(|e| self.audit_refusal(e, op, channel))
                })
                .collect()),
            device_reply::Body::Error(e) => {
                let e = SignerError::from_wire(&e);
                self.audit_refusal(&e, "batch", None);
                Err(e)
            }
            _ => Err(SignerError::internal("unexpected reply from the device")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!(
            "sim:/tmp/s".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Sim("/tmp/s".into())
        );
        assert_eq!(
            "hid".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Hid {
                vid: DEFAULT_VID,
                pid: DEFAULT_PID
            }
        );
        assert_eq!(
            "hid:0x1209:4c4e".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Hid {
                vid: 0x1209,
                pid: 0x4c4e
            }
        );
        assert!("usb".parse::<DeviceSpec>().is_err());
        assert!("hid:zz:1".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn says_what_it_searched_when_no_device_is_there() {
        let err = match open_link(&DeviceSpec::Hid {
            vid: 0xFFFE,
            pid: 0xFFFD,
        }) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("no such device exists here"),
        };
        assert!(err.contains("no hardware signer found"), "{err}");
        let err = match open_link(&DeviceSpec::Sim("/nonexistent/sim.sock".into())) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("no simulator there"),
        };
        assert!(err.contains("lnpd-signer-sim"), "{err}");
    }
}
