//! Host metrics read directly from procfs (Linux).
//!
//! procfs instead of `sysinfo`: the kernel already keeps the counters we want (sysinfo
//! reports CPU *usage percent*, which would have to be integrated back into seconds, an
//! approximation), and it keeps the agent small. Channels:
//! - `cpu_seconds` (counter, s): busy CPU time summed over all CPUs (`/proc/stat` user +
//!   nice + system + irq + softirq + steal), in USER_HZ = 100 ticks.
//! - `memory_used_bytes` (gauge, B): MemTotal − MemAvailable (`/proc/meminfo`).
//! - `net.rx_bytes`, `net.tx_bytes` (counters, B): summed over interfaces except `lo`
//!   (`/proc/net/dev`).
//! - `disk.read_bytes`, `disk.written_bytes` (counters, B): sectors × 512 summed over whole
//!   disks (`/proc/diskstats`; partitions, loop, ram and dm devices skipped to avoid
//!   counting the same I/O twice).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmeter_core::config::Problems;
use gridmeter_core::{Channel, Kind, Quality};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{BuildEnv, PollResult, Reason, Sample, Source, SourceError, SourceSpec};

/// A `type = "host"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSource {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "super::default_interval")]
    pub interval_ms: u64,
    /// Where procfs is mounted (tests point this at a fixture).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

impl SourceSpec for HostSource {
    spec_common!("host");

    fn validate(&self, _at: &str, _problems: &mut Problems) {}

    fn build(&self, _env: &BuildEnv) -> Box<dyn Source> {
        Box::new(HostPoller::new(self.clone()))
    }
}

impl Source for HostPoller {
    fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> BoxFuture<'_, PollResult> {
        Box::pin(HostPoller::poll(self, ts, quality))
    }
}

pub struct HostPoller {
    root: PathBuf,
}

/// Values read from procfs: (channel, kind, unit, value).
pub type HostValues = Vec<(&'static str, Kind, &'static str, Decimal)>;

impl HostPoller {
    pub fn new(cfg: HostSource) -> HostPoller {
        HostPoller {
            root: cfg.proc_root,
        }
    }

    pub async fn poll(&mut self, ts: DateTime<Utc>, quality: Quality) -> PollResult {
        let root = self.root.clone();
        let (values, problems) = tokio::task::spawn_blocking(move || read_all(&root))
            .await
            .map_err(|e| SourceError::new(Reason::Io, format!("host metrics task: {e}")))?;
        let samples = values
            .into_iter()
            .filter_map(|(c, kind, unit, value)| {
                Some(Sample {
                    ts,
                    channel: Channel::new(c).ok()?,
                    kind,
                    unit: unit.to_string(),
                    value,
                    quality,
                })
            })
            .collect::<Vec<_>>();
        if samples.is_empty() {
            return Err(SourceError::new(
                Reason::Io,
                format!("no host metric readable: {}", problems.join("; ")),
            ));
        }
        let problems = problems
            .into_iter()
            .map(|p| SourceError::new(Reason::Io, p))
            .collect();
        Ok((samples, problems))
    }
}

/// Reads every host metric; unreadable files become problems.
pub fn read_all(root: &std::path::Path) -> (HostValues, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let read = |name: &str| std::fs::read_to_string(root.join(name));
    match read("stat").map(|t| parse_stat(&t)) {
        Ok(Some(ticks)) => out.push((
            "cpu_seconds",
            Kind::Counter,
            "s",
            Decimal::new(ticks as i64, 2),
        )),
        Ok(None) => problems.push("stat: no cpu line".to_string()),
        Err(e) => problems.push(format!("stat: {e}")),
    }
    match read("meminfo").map(|t| parse_meminfo(&t)) {
        Ok(Some(b)) => out.push(("memory_used_bytes", Kind::Gauge, "B", Decimal::from(b))),
        Ok(None) => problems.push("meminfo: no MemTotal/MemAvailable".to_string()),
        Err(e) => problems.push(format!("meminfo: {e}")),
    }
    match read("net/dev").map(|t| parse_net_dev(&t)) {
        Ok((rx, tx)) => {
            out.push(("net.rx_bytes", Kind::Counter, "B", Decimal::from(rx)));
            out.push(("net.tx_bytes", Kind::Counter, "B", Decimal::from(tx)));
        }
        Err(e) => problems.push(format!("net/dev: {e}")),
    }
    match read("diskstats").map(|t| parse_diskstats(&t)) {
        Ok((r, w)) => {
            out.push(("disk.read_bytes", Kind::Counter, "B", Decimal::from(r)));
            out.push(("disk.written_bytes", Kind::Counter, "B", Decimal::from(w)));
        }
        Err(e) => problems.push(format!("diskstats: {e}")),
    }
    (out, problems)
}

/// Busy ticks of the aggregate `cpu` line.
pub fn parse_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(g(0) + g(1) + g(2) + g(5) + g(6) + g(7))
}

pub fn parse_meminfo(text: &str) -> Option<u64> {
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(kb("MemTotal:")?.saturating_sub(kb("MemAvailable:")?) * 1024)
}

pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        rx = rx.wrapping_add(f.first().copied().unwrap_or(0));
        tx = tx.wrapping_add(f.get(8).copied().unwrap_or(0));
    }
    (rx, tx)
}

fn is_whole_disk(name: &str) -> bool {
    if ["loop", "ram", "dm-", "zram", "sr", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return false;
    }
    if name.starts_with("nvme") || name.starts_with("mmcblk") {
        // nvme0n1 vs nvme0n1p1, mmcblk0 vs mmcblk0p1: a partition ends in <digit>p<digits>.
        return match name.rfind('p') {
            Some(i) if i > 0 => {
                let tail = &name[i + 1..];
                let before_digit = name.as_bytes()[i - 1].is_ascii_digit();
                !(before_digit && !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()))
            }
            _ => true,
        };
    }
    // sda vs sda1, vda vs vda1
    !name.ends_with(|c: char| c.is_ascii_digit())
}

pub fn parse_diskstats(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || !is_whole_disk(f[2]) {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        r = r.wrapping_add(n(5) * 512);
        w = w.wrapping_add(n(9) * 512);
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_fixtures() {
        assert_eq!(
            parse_stat("cpu  100 5 50 9000 20 3 2 1 0 0\ncpu0 1 1 1 1\n"),
            Some(161)
        );
        assert_eq!(
            parse_meminfo("MemTotal:       2000 kB\nMemFree: 10 kB\nMemAvailable:   500 kB\n"),
            Some(1500 * 1024)
        );
        let net = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  wlan0: 1 1 0 0 0 0 0 0 2 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), (1001, 2002));
        let disk = "   8       0 sda 10 0 100 0 5 0 200 0 0 0 0\n   8       1 sda1 10 0 100 0 5 0 200 0 0 0 0\n   7 0 loop0 1 0 8 0 0 0 0 0 0 0 0\n 259 0 nvme0n1 1 0 4 0 1 0 2 0 0 0 0\n 259 1 nvme0n1p1 1 0 4 0 1 0 2 0 0 0 0\n";
        assert_eq!(parse_diskstats(disk), (104 * 512, 202 * 512));
    }

    #[test]
    fn reads_this_host() {
        let (v, problems) = read_all(std::path::Path::new("/proc"));
        assert!(v.iter().any(|(c, ..)| *c == "cpu_seconds"), "{problems:?}");
        assert!(
            v.iter().any(|(c, ..)| *c == "memory_used_bytes"),
            "{problems:?}"
        );
    }
}
