//! A real etcd cluster on loopback for the replicated-signer tests: three
//! members (Debian's `etcd-server`, installed by `scripts/test` when
//! missing) on free ports, each in its own directory; members can be
//! killed and started again. Every process is killed when the cluster is
//! dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::TempDir;

/// One member.
struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

/// A running cluster.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    initial: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The etcd binary: `LNPD_ETCD`, else `etcd` on the path.
pub fn etcd_bin() -> String {
    std::env::var("LNPD_ETCD").unwrap_or_else(|_| "etcd".into())
}

impl EtcdCluster {
    /// Starts `n` members and waits until they answer.
    pub fn start(tag: &str, n: usize) -> Result<EtcdCluster> {
        let dir = TempDir::new(&format!("etcd-{tag}"));
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: format!("127.0.0.1:{}", free_port()?),
                peer: format!("127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir,
            members,
            initial,
        };
        for i in 0..n {
            c.start_member(i)?;
        }
        c.wait_healthy(Duration::from_secs(30))?;
        Ok(c)
    }

    /// Starts member `i` (again, after [`Self::kill`]: with its data).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let data = self.dir.path.join(&m.name);
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join(format!("{}.log", m.name)))?;
        let child = Command::new(etcd_bin())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(&self.initial)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(format!("lnpd-{}", std::process::id()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install Debian's etcd-server, or set LNPD_ETCD)",
                    etcd_bin()
                )
            })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Kills member `i` (`kill -9`).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcd://` URL of every member.
    pub fn url(&self) -> String {
        format!(
            "etcd://{}",
            self.members
                .iter()
                .map(|m| m.client.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    /// Client address of member `i`.
    pub fn client_addr(&self, i: usize) -> &str {
        &self.members[i].client
    }

    /// Waits until some running member answers its health check with a
    /// quorum behind it.
    pub fn wait_healthy(&self, within: Duration) -> Result<()> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                if health(&m.client) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "etcd cluster not healthy within {within:?}; logs in {}",
            self.dir.path.display()
        )
    }
}

/// The keys under a prefix and their values: a copy of a signer's state in
/// etcd, as an operator's backup would hold it.
pub type KeyCopy = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

impl EtcdCluster {
    /// Runs `f` with a client of the cluster, on a thread of its own (the
    /// client owns a runtime, which must not be dropped inside a test's).
    fn with_client<T: Send>(
        &self,
        f: impl FnOnce(&lnpd_signer::etcd::Etcd) -> Result<T> + Send,
    ) -> Result<T> {
        let settings = lnpd_signer::etcd::EtcdSettings {
            endpoints: self.members.iter().map(|m| m.client.clone()).collect(),
            prefix: String::new(),
            tls: None,
            lease_ttl: Duration::from_secs(5),
        };
        std::thread::scope(|s| {
            s.spawn(move || f(&lnpd_signer::etcd::Etcd::new(&settings)?))
                .join()
                .map_err(|_| anyhow::anyhow!("etcd client thread panicked"))?
        })
    }

    /// One transaction.
    fn txn(
        &self,
        req: lnpd_signer::etcd::pb::TxnRequest,
    ) -> Result<lnpd_signer::etcd::pb::TxnResponse> {
        self.with_client(|etcd| {
            let e = etcd.clone();
            etcd.block(async move { e.txn("write", req).await })
                .context("etcd client stopped")?
                .map_err(anyhow::Error::from)
        })
    }

    /// Every key under `prefix/` but the leadership key, with its value.
    pub fn copy(&self, prefix: &str) -> Result<KeyCopy> {
        use lnpd_signer::etcd::pb;
        let key = format!("{prefix}/").into_bytes();
        let range_end = lnpd_signer::etcd::prefix_end(&key);
        let leader = format!("{prefix}/leader").into_bytes();
        let r = self.with_client(|etcd| {
            let e = etcd.clone();
            let req = pb::RangeRequest {
                key,
                range_end,
                ..Default::default()
            };
            etcd.block(async move { e.range("copy", req).await })
                .context("etcd client stopped")?
                .map_err(anyhow::Error::from)
        })?;
        Ok(r.kvs
            .into_iter()
            .filter(|kv| kv.key != leader)
            .map(|kv| (kv.key, kv.value))
            .collect())
    }

    /// Puts one key; returns the revision etcd gave it (its create
    /// revision when new).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<i64> {
        use lnpd_signer::etcd::pb;
        let (key, value) = (key.to_vec(), value.to_vec());
        let put = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key,
                value,
                ..Default::default()
            })),
        };
        self.txn(pb::TxnRequest {
            success: vec![put],
            ..Default::default()
        })
        .map(|r| r.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Puts `copy` back under `prefix/` (what restoring an old backup of
    /// etcd does to a signer's keys): keys it does not hold are deleted,
    /// the leadership key is left alone.
    pub fn put_back(&self, prefix: &str, copy: &KeyCopy) -> Result<()> {
        use lnpd_signer::etcd::pb;
        let now = self.copy(prefix)?;
        let mut ops: Vec<pb::RequestOp> = now
            .keys()
            .filter(|k| !copy.contains_key(*k))
            .map(|k| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    },
                )),
            })
            .collect();
        ops.extend(copy.iter().map(|(k, v)| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            })),
        }));
        self.txn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })?;
        Ok(())
    }
}

/// `GET /health` on a member: `"health":"true"` needs a quorum.
fn health(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
