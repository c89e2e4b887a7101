//! The seq lease: a small side file next to the buffer (`<buffer>.seq`) that reserves seqs
//! in blocks before any of them is handed out, so that losing the SQLite buffer (corrupt,
//! truncated, deleted) never makes the agent reuse a seq. A reused seq would carry new
//! content under a (device, seq) the collector already has, and deduplication would drop
//! it silently: a lost reading.
//!
//! Format (text, one `key=value` a line): `end` = every seq ever handed out is `< end`;
//! `low` = a lower bound of every seq that was unsent (or covered by an unsent gap record)
//! when the lease was last written. Written atomically: temp file, fsync, rename, fsync of
//! the directory.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Seqs reserved per lease write.
pub const BLOCK: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Every seq handed out so far is below this.
    pub end: u64,
    /// Lowest seq that may have been unsent when the lease was written.
    pub low: u64,
}

/// `<buffer>.seq`
pub fn path_for(buffer: &Path) -> PathBuf {
    let mut s = buffer.as_os_str().to_owned();
    s.push(".seq");
    PathBuf::from(s)
}

/// Reads the lease; `Ok(None)` if the file does not exist or cannot be parsed (logged).
pub fn read(path: &Path) -> std::io::Result<Option<Lease>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::error!("seq lease {} is not text; ignored", path.display());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut end = None;
    let mut low = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("end", v)) => end = v.trim().parse::<u64>().ok(),
            Some(("low", v)) => low = v.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    match (end, low) {
        (Some(end), Some(low)) => Ok(Some(Lease { end, low })),
        _ => {
            tracing::error!("seq lease {} is unreadable; ignored", path.display());
            Ok(None)
        }
    }
}

/// Writes the lease atomically and durably (temp + fsync + rename + fsync dir).
pub fn write(path: &Path, lease: Lease) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        write!(
            f,
            "# gridmeter-agent seq lease: every seq handed out is < end\nend={}\nlow={}\n",
            lease.end, lease.low
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// fsyncs the directory holding `path` (makes a rename durable).
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_for(&dir.path().join("b.sqlite"));
        assert_eq!(read(&p).unwrap(), None);
        let l = Lease {
            end: 20_001,
            low: 7,
        };
        write(&p, l).unwrap();
        assert_eq!(read(&p).unwrap(), Some(l));
        std::fs::write(&p, b"\xff\xfe garbage").unwrap();
        assert_eq!(read(&p).unwrap(), None);
    }
}
