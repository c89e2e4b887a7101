//! Scraping a Prometheus text endpoint (e.g. an edge web server's `http_requests_total`).
//!
//! HTTP: a hand-written `GET` over a tokio `TcpStream` (plain HTTP, Content-Length, chunked
//! or read-to-close bodies; 8 MiB and `timeout_ms` at most), to keep an HTTP stack out of
//! the agent.
//!
//! Kinds: `counter` samples become counters, `gauge` and `untyped` gauges; of histograms and
//! summaries only `_sum` and `_count` are kept (as counters; buckets and quantiles would
//! multiply channels and are not usage). NaN and ±Inf are skipped.
//!
//! Channel mapping: the metric name (after the optional `rename` table, which maps a metric
//! name to a channel base) lowercased, every character outside `[a-z0-9_.]` replaced by
//! `_`; then each label *value* appended as `.value` (sanitised the same way) in sorted
//! label-name order. `http_requests_total{method="GET",code="200"}` becomes
//! `http_requests_total.200.get`. `include` keeps only the listed metric names (for
//! histograms/summaries the family name). Names longer than 64 characters are skipped and
//! counted as source errors. Units: `_seconds` → `s`, `_bytes` → `B`, otherwise empty.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gridmeter_core::{decimal, Channel, Kind, Quality};
use rust_decimal::Decimal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{PollResult, Sample};
use crate::config::PrometheusSource;

const MAX_BODY: usize = 8 * 1024 * 1024;

/// `(host:port, path)` of an `http://` URL.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} must start with http:// (plain HTTP only)"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if hostport.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

/// Fetches `url` and returns the body.
pub async fn http_get(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let (hostport, path) = parse_url(url)?;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&hostport)
            .await
            .map_err(|e| format!("connect {hostport}: {e}"))?;
        let host = hostport.split(':').next().unwrap_or("");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain;version=0.0.4\r\nConnection: close\r\nUser-Agent: gridmeter-agent\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_BODY + 65536 {
                return Err(format!("response larger than {MAX_BODY} bytes"));
            }
            if let Some(body) = complete_body(&buf, false)? {
                return Ok(body);
            }
        }
        complete_body(&buf, true)?
            .ok_or_else(|| "connection closed before the response was complete".to_string())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("GET {url} timed out"))?
}

/// The body if `raw` holds a complete response (by Content-Length or chunked encoding);
/// `Ok(None)` if more bytes are needed. A response without either is complete at close
/// (`eof`).
pub fn complete_body(raw: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("HTTP status {status:?}"));
    }
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) if n > MAX_BODY => Err(format!("body of {n} bytes is too large")),
        Some(n) if body.len() >= n => Ok(Some(body[..n].to_vec())),
        Some(_) => Ok(None),
        // No length: the body ends when the server closes the connection.
        None if eof => Ok(Some(body.to_vec())),
        None => Ok(None),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size > MAX_BODY || out.len() + size > MAX_BODY {
            return Err("chunked body too large".into());
        }
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if body.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// One parsed sample of the text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromSample {
    /// The family name (from `# TYPE`, or the sample name).
    pub family: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub kind: Kind,
    pub value: Decimal,
}

/// Parses the text exposition format. Never panics; lines it cannot use are skipped.
pub fn parse_text(text: &str) -> Vec<PromSample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE") {
                if let (Some(n), Some(t)) = (parts.next(), parts.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
            }
            continue;
        }
        let Some((name, labels, rest)) = split_sample(line) else {
            continue;
        };
        let Some(value_text) = rest.split_whitespace().next() else {
            continue;
        };
        let Some(value) = parse_value(value_text) else {
            continue;
        };
        let (family, kind) = match types.get(name).map(String::as_str) {
            Some("counter") => (name.to_string(), Kind::Counter),
            Some("gauge") | Some("untyped") => (name.to_string(), Kind::Gauge),
            // Quantiles of a summary (the sample name equals the family name), or unknown types.
            Some(_) => continue,
            None => {
                let typed = |suffix: &str| {
                    let base = name.strip_suffix(suffix)?;
                    Some((base, types.get(base).map(String::as_str)?))
                };
                if let Some((base, "counter")) = typed("_total") {
                    (base.to_string(), Kind::Counter)
                } else if let Some((_, "histogram")) = typed("_bucket") {
                    continue;
                } else if let Some((base, "histogram" | "summary")) =
                    typed("_sum").or_else(|| typed("_count"))
                {
                    (base.to_string(), Kind::Counter)
                } else {
                    (name.to_string(), Kind::Gauge)
                }
            }
        };
        out.push(PromSample {
            family,
            name: name.to_string(),
            labels,
            kind,
            value,
        });
    }
    out
}

fn parse_value(text: &str) -> Option<Decimal> {
    match decimal::parse_exact(text) {
        Ok(d) => Some(d),
        Err(decimal::DecimalError::Scale(_)) => Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .ok()
            .map(|d| d.round_dp(9).normalize()),
        Err(_) => None,
    }
}

type Labels = Vec<(String, String)>;

/// `name{labels} rest` -> (name, labels, rest).
fn split_sample(line: &str) -> Option<(&str, Labels, &str)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut labels = Vec::new();
        let mut chars = inner.char_indices().peekable();
        loop {
            // skip spaces and commas
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                return Some((name, labels, &inner[start + 1..]));
            }
            let mut key_end = start;
            let mut key_closed = false;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    key_closed = true;
                    break;
                }
            }
            if !key_closed {
                return None;
            }
            let key = inner.get(start..key_end)?.trim().to_string();
            match chars.next() {
                Some((_, '"')) => {}
                _ => return None,
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => return None,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => value.push(other),
                }
            }
            if !closed {
                return None;
            }
            labels.push((key, value));
        }
    } else {
        Some((name, Vec::new(), rest))
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The channel of a sample (see the module docs), or `None` if it is too long.
pub fn channel_for(s: &PromSample, rename: &BTreeMap<String, String>) -> Option<Channel> {
    let mut labels = s.labels.clone();
    labels.sort();
    let base = rename
        .get(&s.name)
        .cloned()
        .unwrap_or_else(|| sanitize(&s.name));
    let mut name = base;
    for (_, v) in &labels {
        name.push('.');
        name.push_str(&sanitize(v));
    }
    Channel::new(name).ok()
}

fn unit_for(name: &str) -> &'static str {
    if name.contains("_seconds") {
        "s"
    } else if name.contains("_bytes") {
        "B"
    } else {
        ""
    }
}

pub struct PromPoller {
    cfg: PrometheusSource,
}

impl PromPoller {
    pub fn new(cfg: PrometheusSource) -> PromPoller {
        PromPoller { cfg }
    }

    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        let body = http_get(&self.cfg.url, Duration::from_millis(self.cfg.timeout_ms)).await?;
        let text = String::from_utf8_lossy(&body);
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for s in parse_text(&text) {
            if !self.cfg.include.is_empty()
                && !self
                    .cfg
                    .include
                    .iter()
                    .any(|i| *i == s.family || *i == s.name)
            {
                continue;
            }
            match channel_for(&s, &self.cfg.rename) {
                Some(channel) => samples.push(Sample {
                    ts,
                    channel,
                    kind: s.kind,
                    unit: unit_for(&s.name).to_string(),
                    value: s.value,
                    quality,
                }),
                None => problems.push(format!("{}: no valid channel name (too long?)", s.name)),
            }
        }
        Ok((samples, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEXT: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="GET",code="200"} 1027 1395066363000
http_requests_total{code="500",method="POST"} 3
# TYPE temp gauge
temp{room="a\"b"} 21.5
# TYPE lat_seconds histogram
lat_seconds_bucket{le="0.1"} 5
lat_seconds_sum 1.25
lat_seconds_count 7
# TYPE q summary
q{quantile="0.5"} 0.2
q_sum 3
q_count 4
up 1
weird NaN
big 1.5e3
"#;

    #[test]
    fn parses_and_maps() {
        let s = parse_text(TEXT);
        let rename = BTreeMap::from([("up".to_string(), "target_up".to_string())]);
        let got: Vec<(String, Kind, String)> = s
            .iter()
            .map(|x| {
                (
                    channel_for(x, &rename).unwrap().to_string(),
                    x.kind,
                    x.value.to_string(),
                )
            })
            .collect();
        let want = vec![
            ("http_requests_total.200.get", Kind::Counter, "1027"),
            ("http_requests_total.500.post", Kind::Counter, "3"),
            ("temp.a_b", Kind::Gauge, "21.5"),
            ("lat_seconds_sum", Kind::Counter, "1.25"),
            ("lat_seconds_count", Kind::Counter, "7"),
            ("q_sum", Kind::Counter, "3"),
            ("q_count", Kind::Counter, "4"),
            ("target_up", Kind::Gauge, "1"),
            ("big", Kind::Gauge, "1500"),
        ];
        let want: Vec<(String, Kind, String)> = want
            .into_iter()
            .map(|(a, b, c)| (a.to_string(), b, c.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn http_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(complete_body(r, false).unwrap(), Some(b"abc".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert_eq!(complete_body(r, false).unwrap(), None);
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(complete_body(r, false).unwrap(), Some(b"abcde".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab";
        assert_eq!(complete_body(r, false).unwrap(), None);
        assert!(complete_body(b"HTTP/1.1 404 Not Found\r\n\r\n", false).is_err());
        assert_eq!(
            parse_url("http://127.0.0.1:9100/metrics").unwrap(),
            ("127.0.0.1:9100".to_string(), "/metrics".to_string())
        );
        assert!(parse_url("https://x").is_err());
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            for x in parse_text(&s) {
                let _ = channel_for(&x, &BTreeMap::new());
            }
        }

        #[test]
        fn structured_input_never_panics(lines in proptest::collection::vec(
            "(# TYPE [a-z_]{1,8} (counter|gauge|histogram|summary|untyped))|([a-z_]{1,8}(\\{([a-z]{1,3}=\"[^\"]{0,5}\",?){0,3}\\})? [-+0-9.eE]{1,8}( [0-9]{1,5})?)",
            0..20))
        {
            let text = lines.join("\n");
            let _ = parse_text(&text);
        }

        #[test]
        fn http_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = complete_body(&raw, false);
            let mut with_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            with_head.extend(raw);
            let _ = complete_body(&with_head, false);
        }
    }
}
