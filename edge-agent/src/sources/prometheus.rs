//! Scraping a Prometheus text endpoint (e.g. an edge web server's `http_requests_total`).
//!
//! HTTP: a hand-written `GET` over a tokio `TcpStream` (plain HTTP, Content-Length, chunked
//! or read-to-close bodies; at most `max_scrape_bytes` (default 8 MiB) and `timeout_ms`), to
//! keep an HTTP stack out of the agent. A scrape with more than `max_samples` (default
//! 10 000) samples kept fails as a whole (as Prometheus' `sample_limit` does).
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
//! counted as source errors. Units: the `units` table (metric name → unit) first, then
//! `_seconds` → `s`, `_bytes` → `B`, otherwise `1` (a dimensionless count, e.g. requests).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gridmeter_core::text::excerpt;
use gridmeter_core::{decimal, Channel, Kind, Quality};
use rust_decimal::Decimal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use serde::Deserialize;

use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceError, SourceSpec};

/// A `type = "prometheus"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "super::default_interval")]
    pub interval_ms: u64,
    /// `http://host:port/path` (plain HTTP; scrape a local endpoint).
    pub url: String,
    /// Metric names to keep (family names as exposed, e.g. `http_requests_total`);
    /// empty keeps all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Metric name -> channel base name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Metric name (sample or family) -> unit, e.g. `http_requests_total = "requests"`.
    /// Without an entry: `s` for `_seconds`, `B` for `_bytes`, otherwise `1`.
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// A scrape with more samples than this (after `include`) fails as a whole.
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// A response body larger than this fails the scrape.
    #[serde(default = "default_max_scrape_bytes")]
    pub max_scrape_bytes: usize,
    #[serde(default = "super::default_timeout")]
    pub timeout_ms: u64,
}

fn default_max_samples() -> usize {
    MAX_SAMPLES
}
fn default_max_scrape_bytes() -> usize {
    MAX_BODY
}

impl SourceSpec for PrometheusSource {
    spec_common!("prometheus");

    fn validate(&self, at: &str, p: &mut Problems) {
        if let Err(e) = parse_url(&self.url) {
            p.push(format!("{at}.url"), e);
        }
        for (k, v) in &self.rename {
            if Channel::new(v.clone()).is_err() {
                p.push(
                    format!("{at}.rename.{k}"),
                    format!("{v:?} is not a valid channel name ([a-z0-9_.])"),
                );
            }
        }
        for (k, u) in &self.units {
            if let Err(e) = gridmeter_core::wire::check_unit(u) {
                p.push(format!("{at}.units.{k}"), e);
            }
        }
        if self.max_samples == 0 {
            p.push(format!("{at}.max_samples"), "must be > 0");
        }
        if self.max_scrape_bytes < 1024 {
            p.push(format!("{at}.max_scrape_bytes"), "must be at least 1024");
        }
    }

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        Box::new(PromPoller::new(self.clone()))
    }
}

impl Source for PromPoller {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        Box::pin(PromPoller::poll(self, ts, quality))
    }
}

/// The reason of a failed scrape, from its message.
fn scrape_error(message: String) -> SourceError {
    let reason = if message.contains("timed out") {
        Reason::Timeout
    } else if message.starts_with("connect ") {
        Reason::Connect
    } else if message.starts_with("HTTP status") {
        Reason::Exception
    } else {
        Reason::Io
    };
    SourceError::new(reason, message)
}

/// Default `max_scrape_bytes`.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Default `max_samples`.
pub const MAX_SAMPLES: usize = 10_000;
/// A response head longer than this is refused.
const MAX_HEAD: usize = 64 * 1024;

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

/// Fetches `url` and returns the body (at most [`MAX_BODY`] bytes).
pub async fn http_get(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    http_get_limited(url, timeout, MAX_BODY).await
}

/// Fetches `url` and returns the body (at most `max_body` bytes).
pub async fn http_get_limited(
    url: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<Vec<u8>, String> {
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
        // Checking for a complete response costs O(1) per read: the head is located once,
        // then only a plausible end (Content-Length reached, or a chunked body ending in
        // CRLF CRLF) is parsed.
        let mut framing: Option<Framing> = None;
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > max_body + MAX_HEAD {
                return Err(format!(
                    "response larger than {max_body} bytes (max_scrape_bytes)"
                ));
            }
            if framing.is_none() {
                framing = head_framing(&buf)?;
            }
            let maybe_done = match framing {
                None => false,
                Some(Framing::Length(head, n)) => buf.len() >= head + n,
                Some(Framing::Chunked) => buf.ends_with(b"\r\n\r\n"),
                Some(Framing::Close) => false,
            };
            if maybe_done {
                if let Some(body) = complete_body(&buf, false, max_body)? {
                    return Ok(body);
                }
            }
        }
        complete_body(&buf, true, max_body)?
            .ok_or_else(|| "connection closed before the response was complete".to_string())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("GET {url} timed out"))?
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// (head length including CRLF CRLF, Content-Length)
    Length(usize, usize),
    Chunked,
    Close,
}

/// The framing, once the head is complete; an error for a head over [`MAX_HEAD`].
fn head_framing(raw: &[u8]) -> Result<Option<Framing>, String> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        if raw.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let mut framing = Framing::Close;
    for l in head.split("\r\n").skip(1) {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim() {
                "content-length" => {
                    if let Ok(n) = v.trim().parse() {
                        framing = Framing::Length(head_end + 4, n);
                    }
                }
                "transfer-encoding" if v.contains("chunked") => return Ok(Some(Framing::Chunked)),
                _ => {}
            }
        }
    }
    Ok(Some(framing))
}

/// The body if `raw` holds a complete response (by Content-Length or chunked encoding);
/// `Ok(None)` if more bytes are needed. A response without either is complete at close
/// (`eof`). A body over `max_body` bytes is an error.
pub fn complete_body(raw: &[u8], eof: bool, max_body: usize) -> Result<Option<Vec<u8>>, String> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("HTTP status {}", excerpt(status)));
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
        return dechunk(body, max_body);
    }
    match length {
        Some(n) if n > max_body => Err(format!(
            "body of {n} bytes is larger than {max_body} (max_scrape_bytes)"
        )),
        Some(n) if body.len() >= n => Ok(Some(body[..n].to_vec())),
        Some(_) => Ok(None),
        // No length: the body ends when the server closes the connection.
        None if eof && body.len() > max_body => Err(format!(
            "body larger than {max_body} bytes (max_scrape_bytes)"
        )),
        None if eof => Ok(Some(body.to_vec())),
        None => Ok(None),
    }
}

fn dechunk(mut body: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {}", excerpt(size_text)))?;
        if size > max_body || out.len() + size > max_body {
            return Err(format!(
                "chunked body larger than {max_body} bytes (max_scrape_bytes)"
            ));
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
    TextSamples::new(text).collect()
}

/// The samples of a text exposition, one at a time (a scrape stops at its sample cap
/// without building the rest).
pub struct TextSamples<'a> {
    lines: std::str::Lines<'a>,
    types: BTreeMap<String, String>,
}

impl<'a> TextSamples<'a> {
    pub fn new(text: &'a str) -> Self {
        TextSamples {
            lines: text.lines(),
            types: BTreeMap::new(),
        }
    }
}

impl Iterator for TextSamples<'_> {
    type Item = PromSample;

    fn next(&mut self) -> Option<PromSample> {
        let types = &mut self.types;
        for line in self.lines.by_ref() {
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
            return Some(PromSample {
                family,
                name: name.to_string(),
                labels,
                kind,
                value,
            });
        }
        None
    }
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

/// The unit of a sample: the `units` table by sample or family name, else `s` for
/// `_seconds`, `B` for `_bytes`, else `1`.
pub fn unit_for(s: &PromSample, units: &BTreeMap<String, String>) -> String {
    if let Some(u) = units.get(&s.name).or_else(|| units.get(&s.family)) {
        return u.clone();
    }
    if s.name.contains("_seconds") {
        "s".into()
    } else if s.name.contains("_bytes") {
        "B".into()
    } else {
        "1".into()
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
        let body = http_get_limited(
            &self.cfg.url,
            Duration::from_millis(self.cfg.timeout_ms),
            self.cfg.max_scrape_bytes,
        )
        .await
        .map_err(scrape_error)?;
        let text = String::from_utf8_lossy(&body);
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for s in TextSamples::new(&text) {
            if !self.cfg.include.is_empty()
                && !self
                    .cfg
                    .include
                    .iter()
                    .any(|i| *i == s.family || *i == s.name)
            {
                continue;
            }
            if samples.len() + problems.len() >= self.cfg.max_samples {
                return Err(SourceError::new(
                    Reason::Decode,
                    format!(
                        "scrape of {} has more than {} samples (max_samples); none kept",
                        self.cfg.url, self.cfg.max_samples
                    ),
                ));
            }
            match channel_for(&s, &self.cfg.rename) {
                Some(channel) => samples.push(Sample {
                    ts,
                    channel,
                    kind: s.kind,
                    unit: unit_for(&s, &self.cfg.units),
                    value: s.value,
                    quality,
                }),
                None => problems.push(SourceError::new(
                    Reason::Decode,
                    format!("{}: no valid channel name (too long?)", excerpt(&s.name)),
                )),
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
        assert_eq!(
            complete_body(r, false, MAX_BODY).unwrap(),
            Some(b"abc".to_vec())
        );
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert_eq!(complete_body(r, false, MAX_BODY).unwrap(), None);
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            complete_body(r, false, MAX_BODY).unwrap(),
            Some(b"abcde".to_vec())
        );
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab";
        assert_eq!(complete_body(r, false, MAX_BODY).unwrap(), None);
        assert!(complete_body(b"HTTP/1.1 404 Not Found\r\n\r\n", false, MAX_BODY).is_err());
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
            let _ = complete_body(&raw, false, MAX_BODY);
            let mut with_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            with_head.extend(raw);
            let _ = complete_body(&with_head, false, MAX_BODY);
        }
    }
}
