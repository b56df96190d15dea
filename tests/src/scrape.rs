//! Reading a daemon's metrics endpoint as Prometheus would: plain HTTP GET
//! of `/metrics` or `/healthz`, and the text format parsed into samples.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `GET path` from `addr`: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status: u16 = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {raw:?}"))?;
    let Some((_, body)) = raw.split_once("\r\n\r\n") else {
        bail!("no HTTP body in {raw:?}")
    };
    Ok((status, body.to_string()))
}

/// One sample of the text format: name, labels, value.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The metric's name (with `_bucket`, `_sum` or `_count` for histograms).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// Whether this is `name` with (at least) the labels `with`.
    pub fn is(&self, name: &str, with: &[(&str, &str)]) -> bool {
        self.name == name
            && with
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Parses a `/metrics` body (comments skipped).
pub fn parse(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",") {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                }
                (n.to_string(), labels)
            }
            None => (head.to_string(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of `name`'s values over every sample with (at least) the
/// labels `with` (0 when none).
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.is(name, with))
        .map(|s| s.value)
        .sum()
}

/// The value of `name` with (at least) the labels `with`, if present.
pub fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.is(name, with)).map(|s| s.value)
}

/// Scrapes `addr`'s `/metrics`.
pub fn scrape(addr: &str) -> Result<Vec<Sample>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    Ok(parse(&body))
}
