//! The write-ahead log: what makes an ack safe.
//!
//! A segment file `<wal_dir>/<segment:020>.wal` is a sequence of frames
//! `[len: u32 LE][crc32(body): u32 LE][body]`, body = `[received_at µs: i64 LE]
//! [topic len: u16 LE][topic][payload]`. Records are appended by group and the file is
//! fsync'd once per group before any message of the group is acked (group commit).
//!
//! After a crash the last frame may be torn (partly written, or written but not synced and
//! partly lost). [`read_segment`] stops at the first frame whose length runs past the end of
//! the file or whose CRC does not match, and [`recover_segment`] truncates the file there.
//! Nothing after that point was acked (acks follow the fsync), so the broker redelivers it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Frames larger than this are treated as corruption (the broker's packet limit is lower).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
const HEADER: usize = 8;

/// One received message as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// When the collector received it, µs since the epoch. Stored so that replay produces
    /// the same `received_at` (and thus byte-identical Parquet files).
    pub received_at_us: i64,
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Path of a segment file.
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.wal"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// fsyncs a directory so that created, renamed or removed entries are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends one frame for `rec` to `buf`.
pub fn encode_frame(rec: &WalRecord, buf: &mut Vec<u8>) {
    let topic = rec.topic.as_bytes();
    let topic_len = topic.len().min(u16::MAX as usize);
    let body_len = 8 + 2 + topic_len + rec.payload.len();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&rec.received_at_us.to_le_bytes());
    buf.extend_from_slice(&(topic_len as u16).to_le_bytes());
    buf.extend_from_slice(&topic[..topic_len]);
    buf.extend_from_slice(&rec.payload);
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// An open segment being appended to.
pub struct WalWriter {
    file: File,
    segment: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl WalWriter {
    /// Creates (or reopens for append, after recovery) segment `segment` in `dir`.
    pub fn open(dir: &Path, segment: u64) -> io::Result<WalWriter> {
        let path = segment_path(dir, segment);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        // The new directory entry must survive a power loss too.
        sync_dir(dir)?;
        Ok(WalWriter {
            file,
            segment,
            bytes,
            buf: Vec::new(),
        })
    }

    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Bytes in the segment so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends a group of records and fsyncs once. When this returns `Ok`, every record of
    /// the group is durable and may be acked.
    pub fn append_group<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a WalRecord>,
    ) -> io::Result<u64> {
        self.buf.clear();
        for r in records {
            encode_frame(r, &mut self.buf);
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        let n = self.buf.len() as u64;
        self.bytes += n;
        if self.buf.capacity() > 64 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(n)
    }
}

/// What reading a segment found.
#[derive(Debug)]
pub struct SegmentContents {
    pub records: Vec<WalRecord>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Bytes after the valid prefix (a torn tail).
    pub torn_bytes: u64,
}

/// Reads every valid frame of a segment, stopping at the first torn or corrupt one.
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let data = bytes::Bytes::from(data);
    let mut records = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= HEADER {
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if !(10..=MAX_FRAME_BYTES).contains(&len) || data.len() - pos - HEADER < len {
            break;
        }
        let body = &data[pos + HEADER..pos + HEADER + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let received_at_us = i64::from_le_bytes(body[0..8].try_into().unwrap_or([0; 8]));
        let topic_len = u16::from_le_bytes([body[8], body[9]]) as usize;
        if 10 + topic_len > len {
            break;
        }
        let topic = String::from_utf8_lossy(&body[10..10 + topic_len]).into_owned();
        let start = pos + HEADER + 10 + topic_len;
        let payload = data.slice(start..pos + HEADER + len);
        records.push(WalRecord {
            received_at_us,
            topic,
            payload,
        });
        pos += HEADER + len;
    }
    Ok(SegmentContents {
        records,
        valid_len: pos as u64,
        torn_bytes: (data.len() - pos) as u64,
    })
}

/// Reads a segment and truncates a torn tail (fsync'd), so appends continue after the last
/// good frame and a second recovery finds the same records.
pub fn recover_segment(path: &Path) -> io::Result<SegmentContents> {
    let contents = read_segment(path)?;
    if contents.torn_bytes > 0 {
        tracing::warn!(
            path = %path.display(),
            torn_bytes = contents.torn_bytes,
            "WAL segment has a torn tail (crash during a write); truncating it: those messages were never acked and will be redelivered"
        );
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(contents.valid_len)?;
        f.sync_all()?;
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> WalRecord {
        WalRecord {
            received_at_us: 1_700_000_000_000_000 + i,
            topic: format!("gridmeter/v1/d{i}/readings"),
            payload: bytes::Bytes::from(vec![i as u8; (i as usize * 37) % 300]),
        }
    }

    #[test]
    fn round_trip_and_torn_tail_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<_> = (0..20).map(rec).collect();
        let mut w = WalWriter::open(dir.path(), 7).unwrap();
        w.append_group(&recs[..10]).unwrap();
        w.append_group(&recs[10..]).unwrap();
        let full_len = w.len();
        drop(w);
        let path = segment_path(dir.path(), 7);
        assert_eq!(read_segment(&path).unwrap().records, recs);

        // Every possible torn tail: cut the file anywhere inside the last frame.
        let bytes = std::fs::read(&path).unwrap();
        let mut last = Vec::new();
        encode_frame(&recs[19], &mut last);
        let last_start = full_len as usize - last.len();
        for cut in last_start..full_len as usize {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let c = recover_segment(&path).unwrap();
            assert_eq!(c.records, recs[..19], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64);
        }
        // A flipped bit in the last frame is caught by the CRC.
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(recover_segment(&path).unwrap().records, recs[..19]);
        // Appending after recovery continues cleanly.
        let mut w = WalWriter::open(dir.path(), 7).unwrap();
        w.append_group(std::slice::from_ref(&recs[19])).unwrap();
        assert_eq!(read_segment(&path).unwrap().records, recs);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![7]);
    }
}
