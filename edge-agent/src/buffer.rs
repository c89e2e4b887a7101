//! The SQLite buffer: where a reading gets its seq and waits until a collector confirms
//! that it landed (which of its readings are unsent, in flight or awaiting a confirmation
//! is tracked in memory by [`crate::delivery`]).
//!
//! # Durability
//! WAL mode. Transactions that *insert* readings run with `synchronous=FULL`: the seq counter
//! row is updated in the same transaction as the readings, and that transaction is fsync'd
//! before any of its readings can be handed to the forwarder. With `NORMAL` a power cut
//! could roll back a transaction whose readings were already published and acknowledged;
//! the counter would then hand out the same seqs again with different content, which the
//! collector would silently deduplicate away (a lost reading). Transactions that only
//! *delete* confirmed rows run with `synchronous=NORMAL`: losing one to a power cut only
//! re-sends readings the collector already has (harmless duplicates), and the next FULL
//! commit syncs the WAL anyway. Commits are batched (`commit_interval_ms`,
//! `commit_max_readings`), so the fsync cost is paid per batch, not per reading.
//!
//! # Backfill policy
//! Batches are taken oldest-first. While there is a backlog (more unsent readings than fit
//! in one batch), every `live_every`-th batch (default 4) is taken from the *newest* unsent
//! readings instead, so a days-long backfill after an outage still delivers live data within
//! seconds and uses 3/4 of the bandwidth for the backlog. `live_every = 0` is strictly
//! oldest-first. Within a batch readings are in seq order.
//!
//! # Disk budget
//! The budget counts *logical* bytes: per row [`ROW_OVERHEAD`] bytes (rowid, timestamp,
//! kind, quality and SQLite's record/index overhead, measured roughly) plus the bytes of the
//! channel name, unit and value text. It is exact to maintain (no `stat` of WAL files whose
//! size depends on checkpoints) and tracks the real file size within a small factor. When an
//! insert takes the buffer over `max_buffer_bytes`, the oldest rows not currently in flight
//! (rows awaiting a confirmation included) are deleted in the same transaction, and their
//! seqs are recorded as gap records (`buffer_full`), merging adjacent ranges. Gap records
//! travel in the `gaps` field of the next batches and are deleted only when a confirmation
//! covers them.
//!
//! # Taking batches without rescanning
//! A backfill can leave hundreds of thousands of rows awaiting their confirmation. Batches
//! are read only from the free stretches between taken seq ranges
//! ([`Delivery::next_free_up`]), with one indexed range query per stretch, and a
//! confirmation deletes whole seq ranges at once; neither costs time per awaiting row.
//!
//! # Corruption and the seq lease
//! Seqs are reserved in blocks of [`lease::BLOCK`] in a side file `<path>.seq` (see
//! [`crate::lease`]) *before* a transaction that hands them out commits, so the lease's
//! `end` is above every seq ever given out, whatever happens to the SQLite file.
//!
//! The buffer is *corrupt* when opening or reading it fails with `SQLITE_CORRUPT` /
//! `SQLITE_NOTADB`, or `PRAGMA quick_check` does not answer `ok` at open. Then the agent
//! renames it (and its `-wal`/`-shm`) to `<path>.corrupt-<UTC timestamp>`, logs an ERROR
//! naming that file, counts `gridmeter_agent_buffer_corruptions_total` and continues with
//! a fresh buffer. A buffer that is *lost* (a fresh, empty database while a lease exists:
//! the file was set aside, deleted or truncated to zero bytes) continues as follows:
//!
//! - the first new seq is the lease's `end` (never below any seq handed out before);
//! - a gap record `buffer_corrupt` is queued for `low ..= end - 1`, where `low` is the
//!   lease's low-water mark: the lowest seq that was unsent (a buffered reading or a
//!   pending gap record) when the lease was last written (at every open and every block
//!   renewal), so every reading that may have been lost is inside the range. It may also
//!   cover seqs that were delivered after that write or never handed out (the collector
//!   simply records them as lost from the agent's side; seqs it already has stay landed).
//! - Without a lease file (a buffer from before the lease existed that is then found
//!   corrupt) nothing bounds the old seqs: the agent starts at the current UTC time in
//!   microseconds (above any count of readings it could have produced) and sends no gap
//!   record; the ERROR says so.
//!
//! Corruption found while running (an insert, a batch read or an ack failing with
//! `SQLITE_CORRUPT`/`SQLITE_NOTADB`) is handled the same way, then the operation is
//! retried once on the fresh buffer.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use chrono::{DateTime, Utc};
use gridmeter_core::{Channel, Gap, GapReason, Kind, Quality, Reading};
use rusqlite::{params, Connection, OptionalExtension};
use rust_decimal::Decimal;

use crate::delivery::Delivery;
use crate::lease::{self, Lease};
use crate::sources::Sample;
use gridmeter_core::wire::confirm::Confirmation;

/// Fixed per-row part of the logical size.
pub const ROW_OVERHEAD: u64 = 48;

/// Logical size of one buffered reading (see the module docs).
pub fn row_bytes(channel: &str, unit: &str, value_text: &str) -> u64 {
    ROW_OVERHEAD + (channel.len() + unit.len() + value_text.len()) as u64
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("buffer: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("buffer {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl BufferError {
    fn is_corrupt(&self) -> bool {
        match self {
            BufferError::Open { source, .. } | BufferError::Sql(source) => is_corrupt(source),
            BufferError::Io { .. } => false,
        }
    }
}

/// `SQLITE_CORRUPT` or `SQLITE_NOTADB`: the file is not (any more) a usable database.
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What an insert did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted {
    /// The seqs given to the new readings (`first..=last`), if any.
    pub seqs: Option<(u64, u64)>,
    /// Readings dropped to stay within the budget.
    pub dropped: u64,
}

/// A batch taken for publishing. Its readings and gap records are in flight until
/// [`Buffer::published`] (the broker took it), [`Buffer::ack`] (delete without waiting for a
/// confirmation) or [`Buffer::release_inflight`] (the connection is gone).
#[derive(Debug, Clone)]
pub struct OutBatch {
    pub readings: Vec<Reading>,
    pub gaps: Vec<(i64, Gap)>,
    /// Taken from the newest readings (live data during a backfill).
    pub live: bool,
    bytes: u64,
}

impl OutBatch {
    /// The batch's seqs as ascending inclusive runs.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut seqs: Vec<u64> = self.readings.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        runs(&seqs)
    }

    /// Ids of the batch's gap records.
    pub fn gap_ids(&self) -> Vec<i64> {
        self.gaps.iter().map(|(id, _)| *id).collect()
    }
}

/// What a confirmation deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Readings deleted.
    pub readings: u64,
    /// Gap records deleted.
    pub gaps: u64,
    /// When the earliest confirmed reading was first published (for the confirmation
    /// latency).
    pub first_sent: Option<Instant>,
}

/// Counts for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rows: u64,
    pub bytes: u64,
    pub gaps_pending: u64,
    pub oldest_ts: Option<DateTime<Utc>>,
    /// Readings the broker took that the collector has not confirmed yet.
    pub unconfirmed: u64,
    /// When the oldest of those was first published.
    pub oldest_unconfirmed_sent: Option<Instant>,
}

pub struct Buffer {
    conn: Connection,
    path: PathBuf,
    lease: Lease,
    /// Corrupt buffer files set aside by this `Buffer` (at open and while running).
    corruptions: u64,
    next_seq: u64,
    rows: u64,
    bytes: u64,
    max_bytes: u64,
    /// In flight / awaiting confirmation (see [`crate::delivery`]).
    delivery: Delivery,
    /// Every row with seq <= cursor is in flight or awaiting (oldest-first progress).
    cursor: u64,
    taken: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    channel TEXT NOT NULL,
    kind INTEGER NOT NULL,
    unit TEXT NOT NULL,
    value TEXT NOT NULL,
    quality INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    reason TEXT NOT NULL
);
";

impl Buffer {
    /// Opens (or creates) the buffer at `path`. A corrupt file is set aside and replaced by
    /// a fresh buffer (see the module docs); a lost buffer continues above the seq lease.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Buffer, BufferError> {
        Buffer::open_counting(path, max_bytes, 0)
    }

    fn open_counting(
        path: &Path,
        max_bytes: u64,
        mut corruptions: u64,
    ) -> Result<Buffer, BufferError> {
        let lease_path = lease::path_for(path);
        let old_lease = lease::read(&lease_path).map_err(io_err(&lease_path))?;
        let conn = match Buffer::open_checked(path) {
            Ok(c) => c,
            Err(e) if e.is_corrupt() => {
                set_aside(path, &e)?;
                corruptions += 1;
                Buffer::open_checked(path)?
            }
            Err(e) => return Err(e),
        };
        Buffer::from_conn(conn, path, max_bytes, old_lease, corruptions)
    }

    /// Opens the SQLite file and checks it (`quick_check`), creating the schema.
    fn open_checked(path: &Path) -> Result<Connection, BufferError> {
        let open_err = |source| BufferError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!("buffer {}: journal_mode is {mode}, not WAL", path.display());
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(open_err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(open_err)?;
        if check != "ok" {
            return Err(open_err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("quick_check: {check}")),
            )));
        }
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(conn)
    }

    fn from_conn(
        conn: Connection,
        path: &Path,
        max_bytes: u64,
        old_lease: Option<Lease>,
        corruptions: u64,
    ) -> Result<Buffer, BufferError> {
        let meta: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .optional()?;
        // Defensive: never below anything already stored.
        let max_row: Option<i64> =
            conn.query_row("SELECT MAX(seq) FROM readings", [], |r| r.get(0))?;
        let max_gap: Option<i64> =
            conn.query_row("SELECT MAX(to_seq) FROM gaps", [], |r| r.get(0))?;
        let next_seq = [
            meta.unwrap_or(1),
            max_row.map_or(1, |m| m + 1),
            max_gap.map_or(1, |m| m + 1),
        ]
        .into_iter()
        .max()
        .unwrap_or(1)
        .max(1) as u64;
        let empty = meta.is_none() && max_row.is_none() && max_gap.is_none();
        let next_seq = match (empty, old_lease) {
            (true, Some(l)) if l.end > 1 => {
                // Lost buffer: continue above the lease and report what may be gone.
                let low = l.low.max(1);
                let gap = (low < l.end).then_some((low, l.end - 1));
                let tx = conn.unchecked_transaction()?;
                if let Some((a, b)) = gap {
                    tx.execute(
                        "INSERT INTO gaps (from_seq, to_seq, reason) VALUES (?1, ?2, 'buffer_corrupt')",
                        params![a as i64, b as i64],
                    )?;
                }
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)",
                    [l.end as i64],
                )?;
                tx.commit()?;
                tracing::error!(
                    "buffer {}: previous contents lost (corrupt, deleted or truncated); \
                     continuing with a fresh buffer from seq {} (seq lease); gap {} reported as buffer_corrupt",
                    path.display(),
                    l.end,
                    gap.map_or_else(|| "none".to_string(), |(a, b)| format!("{a}..={b}")),
                );
                l.end
            }
            (true, None) if corruptions > 0 => {
                let start = Utc::now().timestamp_micros().max(1) as u64;
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)",
                    [start as i64],
                )?;
                tracing::error!(
                    "buffer {}: corrupt and no seq lease to bound earlier seqs; continuing \
                     from seq {start} (UTC µs) so none is reused; no gap record can be sent",
                    path.display(),
                );
                start
            }
            _ => next_seq,
        };
        let mut buffer = Buffer {
            conn,
            path: path.to_path_buf(),
            lease: Lease {
                end: old_lease.map_or(next_seq, |l| l.end.max(next_seq)),
                low: next_seq,
            },
            corruptions,
            next_seq,
            rows: 0,
            bytes: 0,
            max_bytes,
            delivery: Delivery::default(),
            cursor: 0,
            taken: 0,
        };
        buffer.recount()?;
        let low = low_water(&buffer.conn, next_seq)?;
        buffer.write_lease(Lease {
            end: buffer.lease.end,
            low,
        })?;
        Ok(buffer)
    }

    fn write_lease(&mut self, l: Lease) -> Result<(), BufferError> {
        let p = lease::path_for(&self.path);
        lease::write(&p, l).map_err(io_err(&p))?;
        self.lease = l;
        Ok(())
    }

    /// Corrupt buffer files set aside so far (for `gridmeter_agent_buffer_corruptions_total`).
    pub fn corruptions(&self) -> u64 {
        self.corruptions
    }

    /// The seq lease as last written.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// Runs `op`; if it fails because the database is corrupt, sets the file aside, continues
    /// with a fresh buffer (see the module docs) and runs `op` once more.
    fn recovering<T>(
        &mut self,
        mut op: impl FnMut(&mut Buffer) -> Result<T, BufferError>,
    ) -> Result<T, BufferError> {
        match op(self) {
            Err(e) if e.is_corrupt() => {
                // Close the damaged connection before renaming its files.
                let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
                drop(old);
                set_aside(&self.path, &e)?;
                let fresh =
                    Buffer::open_counting(&self.path, self.max_bytes, self.corruptions + 1)?;
                *self = fresh;
                op(self)
            }
            r => r,
        }
    }

    /// The seq the next reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Stores readings in one transaction, assigning seqs and advancing the persisted
    /// counter in that same transaction; then enforces the disk budget.
    pub fn insert(&mut self, samples: &[Sample]) -> Result<Inserted, BufferError> {
        self.recovering(|b| b.insert_once(samples))
    }

    fn insert_once(&mut self, samples: &[Sample]) -> Result<Inserted, BufferError> {
        if samples.is_empty() {
            return Ok(Inserted::default());
        }
        self.conn.execute_batch("PRAGMA synchronous=FULL;")?;
        let tx = self.conn.transaction()?;
        let first = self.next_seq;
        let mut seq = first;
        let mut added = 0u64;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO readings (seq, ts_us, channel, kind, unit, value, quality) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut text = String::new();
            for s in samples {
                use std::fmt::Write;
                text.clear();
                let _ = write!(text, "{}", s.value);
                st.execute(params![
                    seq as i64,
                    s.ts.timestamp_micros(),
                    s.channel.as_str(),
                    s.kind.code(),
                    s.unit,
                    text,
                    s.quality.bits(),
                ])?;
                added += row_bytes(s.channel.as_str(), &s.unit, &text);
                seq += 1;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_seq', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [seq as i64],
        )?;
        let mut rows = self.rows + samples.len() as u64;
        let mut bytes = self.bytes + added;
        let mut dropped: Vec<u64> = Vec::new();
        if bytes > self.max_bytes {
            let mut after = 0i64;
            let mut sel = tx.prepare_cached(
                "SELECT seq, channel, unit, value FROM readings WHERE seq > ?1 ORDER BY seq LIMIT 1024",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM readings WHERE seq = ?1")?;
            'outer: while bytes > self.max_bytes {
                let page: Vec<(i64, u64)> = sel
                    .query_map([after], |r| {
                        let (c, u, v): (String, String, String) = (r.get(1)?, r.get(2)?, r.get(3)?);
                        Ok((r.get::<_, i64>(0)?, row_bytes(&c, &u, &v)))
                    })?
                    .collect::<Result<_, _>>()?;
                if page.is_empty() {
                    break;
                }
                for (s, b) in page {
                    after = s;
                    // In flight: its PUBACK may come any moment. Awaiting a confirmation
                    // counts against the budget like any other row.
                    if self.delivery.is_in_flight(s as u64) {
                        continue;
                    }
                    del.execute([s])?;
                    dropped.push(s as u64);
                    rows -= 1;
                    bytes -= b;
                    if bytes <= self.max_bytes {
                        break 'outer;
                    }
                }
            }
        }
        if seq > self.lease.end {
            // Reserve the next block before any of these seqs can be handed out.
            let l = Lease {
                end: seq + lease::BLOCK,
                low: low_water(&tx, first)?,
            };
            let p = lease::path_for(&self.path);
            lease::write(&p, l).map_err(io_err(&p))?;
            self.lease = l;
        }
        let mut new_gap_ids = Vec::new();
        for (from, to) in runs(&dropped) {
            let mergeable: Option<i64> = {
                let mut st = tx.prepare_cached(
                    "SELECT id FROM gaps WHERE to_seq = ?1 AND reason = 'buffer_full'",
                )?;
                let ids: Vec<i64> = st
                    .query_map([from as i64 - 1], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                ids.into_iter().find(|id| !self.delivery.is_gap_taken(*id))
            };
            match mergeable {
                Some(id) => {
                    tx.execute(
                        "UPDATE gaps SET to_seq = ?1 WHERE id = ?2",
                        params![to as i64, id],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO gaps (from_seq, to_seq, reason) VALUES (?1, ?2, 'buffer_full')",
                        params![from as i64, to as i64],
                    )?;
                    new_gap_ids.push(tx.last_insert_rowid());
                }
            }
        }
        tx.commit()?;
        for (a, b) in runs(&dropped) {
            self.delivery.forget(a, b);
        }
        self.next_seq = seq;
        self.rows = rows;
        self.bytes = bytes;
        Ok(Inserted {
            seqs: Some((first, seq - 1)),
            dropped: dropped.len() as u64,
        })
    }

    /// Takes the next batch to publish (see the module docs for the policy), or `None`
    /// if nothing is waiting. Rows that cannot be decoded are removed and reported as a
    /// `buffer_corrupt` gap.
    pub fn next_batch(
        &mut self,
        max_readings: usize,
        live_every: u32,
    ) -> Result<Option<OutBatch>, BufferError> {
        self.recovering(|b| b.next_batch_once(max_readings, live_every))
    }

    fn next_batch_once(
        &mut self,
        max_readings: usize,
        live_every: u32,
    ) -> Result<Option<OutBatch>, BufferError> {
        let taken = self.delivery.in_flight_count() + self.delivery.awaiting_count();
        let available = self.rows.saturating_sub(taken);
        let live = live_every > 0
            && available > max_readings as u64
            && self.taken % u64::from(live_every) == u64::from(live_every) - 1;
        let mut rows: Vec<RawRow> = Vec::new();
        if available > 0 {
            if live {
                self.free_rows_down(max_readings, &mut rows)?;
                rows.reverse();
            } else {
                self.free_rows_up(max_readings, &mut rows)?;
            }
        }
        let mut readings = Vec::with_capacity(rows.len());
        let mut bytes = 0u64;
        let mut corrupt = Vec::new();
        for raw in rows {
            match raw.decode() {
                Some(r) => {
                    bytes += raw.bytes();
                    readings.push(r);
                }
                None => corrupt.push(raw.seq),
            }
        }
        if !corrupt.is_empty() {
            self.drop_corrupt(&corrupt)?;
        }
        let gaps: Vec<(i64, Gap)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT id, from_seq, to_seq, reason FROM gaps ORDER BY from_seq LIMIT 1000",
            )?;
            let all: Vec<(i64, i64, i64, String)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            all.into_iter()
                .filter(|(id, ..)| !self.delivery.is_gap_taken(*id))
                // No more per message than a collector records (the rest go next time).
                .take(gridmeter_core::wire::MAX_GAP_RECORDS)
                .filter_map(|(id, f, t, reason)| {
                    Some((
                        id,
                        Gap {
                            from_seq: u64::try_from(f).ok()?,
                            to_seq: u64::try_from(t).ok()?,
                            reason: GapReason::from_name(&reason)?,
                        },
                    ))
                })
                .collect()
        };
        if readings.is_empty() && gaps.is_empty() {
            return Ok(None);
        }
        self.taken += 1;
        let batch = OutBatch {
            readings,
            gaps,
            live,
            bytes,
        };
        self.delivery.take(&batch.runs(), &batch.gap_ids());
        Ok(Some(batch))
    }

    /// Oldest-first: the lowest `max` rows neither in flight nor awaiting, reading only the
    /// free stretches between taken ranges (a backlog waiting for its confirmation is never
    /// scanned again). Advances the cursor past what it took.
    fn free_rows_up(&mut self, max: usize, out: &mut Vec<RawRow>) -> Result<(), BufferError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, ts_us, channel, kind, unit, value, quality FROM readings \
             WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?;
        // Invariant: every row <= cursor is taken. The rows between `from` and a free
        // stretch's `lo` are taken too, so the cursor may move over them.
        let mut from = self.cursor.saturating_add(1);
        while out.len() < max {
            let Some((lo, hi)) = self.delivery.next_free_up(from) else {
                break;
            };
            self.cursor = self.cursor.max(lo - 1);
            let want = max - out.len();
            let page: Vec<RawRow> = st
                .query_map(
                    params![lo as i64, hi.min(i64::MAX as u64) as i64, want as i64],
                    RawRow::from_row,
                )?
                .collect::<Result<_, _>>()?;
            let got = page.len();
            if let Some(last) = page.last() {
                self.cursor = last.seq;
            }
            out.extend(page);
            if got == want || hi == u64::MAX || hi.saturating_add(1) >= self.next_seq {
                break;
            }
            // Every row of [lo, hi] is taken now; go on after the next taken range.
            self.cursor = hi;
            from = hi + 1;
        }
        Ok(())
    }

    /// Newest-first (live data during a backfill): the highest `max` free rows above the
    /// cursor, in descending seq order.
    fn free_rows_down(&mut self, max: usize, out: &mut Vec<RawRow>) -> Result<(), BufferError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, ts_us, channel, kind, unit, value, quality FROM readings \
             WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let floor = self.cursor.saturating_add(1);
        let mut to = self.next_seq.saturating_sub(1);
        while out.len() < max && to >= floor {
            let Some((lo, hi)) = self.delivery.next_free_down(to) else {
                break;
            };
            let lo = lo.max(floor);
            if lo > hi {
                break;
            }
            let want = max - out.len();
            let page: Vec<RawRow> = st
                .query_map(params![lo as i64, hi as i64, want as i64], RawRow::from_row)?
                .collect::<Result<_, _>>()?;
            let got = page.len();
            out.extend(page);
            if got < want && lo > floor {
                to = lo - 1;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn drop_corrupt(&mut self, seqs: &[u64]) -> Result<(), BufferError> {
        tracing::error!(
            "buffer: {} undecodable rows removed and reported as a gap",
            seqs.len()
        );
        let tx = self.conn.transaction()?;
        for s in seqs {
            tx.execute("DELETE FROM readings WHERE seq = ?1", [*s as i64])?;
        }
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        for (from, to) in runs(&sorted) {
            tx.execute(
                "INSERT INTO gaps (from_seq, to_seq, reason) VALUES (?1, ?2, 'buffer_corrupt')",
                params![from as i64, to as i64],
            )?;
        }
        tx.commit()?;
        for (from, to) in runs(&sorted) {
            self.delivery.forget(from, to);
        }
        self.recount()
    }

    /// The broker took `batch` and nothing further is expected (`require_confirmation =
    /// false`): delete its readings and gap records.
    pub fn ack(&mut self, batch: &OutBatch) -> Result<(), BufferError> {
        self.recovering(|b| b.ack_once(batch))
    }

    fn ack_once(&mut self, batch: &OutBatch) -> Result<(), BufferError> {
        self.conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let tx = self.conn.transaction()?;
        let mut deleted = 0u64;
        {
            let mut st = tx.prepare_cached("DELETE FROM readings WHERE seq = ?1")?;
            for r in &batch.readings {
                deleted += st.execute([r.seq as i64])? as u64;
            }
            let mut st = tx.prepare_cached("DELETE FROM gaps WHERE id = ?1")?;
            for (id, _) in &batch.gaps {
                st.execute([id])?;
            }
        }
        tx.commit()?;
        for (a, b) in batch.runs() {
            self.delivery.forget(a, b);
        }
        for (id, _) in &batch.gaps {
            self.delivery.forget_gap(*id);
        }
        self.rows = self.rows.saturating_sub(deleted);
        if deleted == batch.readings.len() as u64 {
            self.bytes = self.bytes.saturating_sub(batch.bytes);
        } else {
            self.recount()?;
        }
        Ok(())
    }

    fn recount(&mut self) -> Result<(), BufferError> {
        let (rows, bytes): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(?1 + length(CAST(channel AS BLOB)) + length(CAST(unit AS BLOB)) + length(CAST(value AS BLOB))), 0) FROM readings",
            [ROW_OVERHEAD as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.rows = rows as u64;
        self.bytes = bytes as u64;
        Ok(())
    }

    /// The broker took `runs`/`gap_ids` (or refused them, to be retried): they now await
    /// their confirmation. Returns the most resends any of them has had.
    pub fn published(&mut self, runs: &[(u64, u64)], gap_ids: &[i64], now: Instant) -> u32 {
        self.delivery.published(runs, gap_ids, now)
    }

    /// Their confirmation is overdue: what of `runs`/`gap_ids` still awaits it is unsent
    /// again, to be resent oldest first. Returns the number of readings released.
    pub fn resend(&mut self, runs: &[(u64, u64)], gap_ids: &[i64]) -> u64 {
        let (n, lowest) = self.delivery.resend(runs, gap_ids);
        if let Some(l) = lowest {
            self.cursor = self.cursor.min(l.saturating_sub(1));
        }
        n
    }

    /// Whether anything of `runs`/`gap_ids` still awaits its confirmation.
    pub fn awaiting(&self, runs: &[(u64, u64)], gap_ids: &[i64]) -> bool {
        self.delivery.any_awaiting(runs, gap_ids)
    }

    /// The collector confirmed `c` durable: delete the readings and the gap records it
    /// covers, whatever their state (a confirmation may overtake a resend).
    pub fn confirm(&mut self, c: &Confirmation) -> Result<Confirmed, BufferError> {
        self.recovering(|b| b.confirm_once(c))
    }

    fn confirm_once(&mut self, c: &Confirmation) -> Result<Confirmed, BufferError> {
        self.conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let tx = self.conn.transaction()?;
        let mut done = Confirmed::default();
        let mut freed = 0u64;
        {
            let mut st = tx.prepare_cached(
                "DELETE FROM readings WHERE seq >= ?1 AND seq <= ?2 RETURNING \
                 ?3 + length(CAST(channel AS BLOB)) + length(CAST(unit AS BLOB)) + length(CAST(value AS BLOB))",
            )?;
            for &(a, b) in c.seqs.ranges() {
                let hi = b.min(i64::MAX as u64) as i64;
                let mut rows = st.query(params![
                    a.min(i64::MAX as u64) as i64,
                    hi,
                    ROW_OVERHEAD as i64
                ])?;
                while let Some(r) = rows.next()? {
                    done.readings += 1;
                    freed += r.get::<_, i64>(0)? as u64;
                }
            }
        }
        let mut gone_gaps = Vec::new();
        if !c.gaps.is_empty() {
            let all: Vec<(i64, i64, i64)> = {
                let mut st = tx.prepare_cached("SELECT id, from_seq, to_seq FROM gaps")?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                rows
            };
            let mut del = tx.prepare_cached("DELETE FROM gaps WHERE id = ?1")?;
            for (id, f, t) in all {
                let (Ok(f), Ok(t)) = (u64::try_from(f), u64::try_from(t)) else {
                    continue;
                };
                if c.gaps.covers(f, t) {
                    del.execute([id])?;
                    gone_gaps.push(id);
                }
            }
        }
        tx.commit()?;
        for &(a, b) in c.seqs.ranges() {
            if let Some(t) = self.delivery.forget(a, b) {
                done.first_sent = Some(done.first_sent.map_or(t, |d: Instant| d.min(t)));
            }
        }
        for id in &gone_gaps {
            self.delivery.forget_gap(*id);
        }
        done.gaps = gone_gaps.len() as u64;
        self.rows = self.rows.saturating_sub(done.readings);
        self.bytes = self.bytes.saturating_sub(freed);
        Ok(done)
    }

    /// The connection is gone: everything in flight is unsent again and will be re-read from
    /// SQLite and sent, oldest first. Readings awaiting a confirmation keep waiting.
    pub fn release_inflight(&mut self) {
        self.delivery.release_in_flight();
        self.cursor = 0;
    }

    /// Readings currently in flight (published, no PUBACK yet).
    pub fn inflight_len(&self) -> usize {
        self.delivery.in_flight_count() as usize
    }

    /// Every reading and gap record is unsent again (tests and tools: what would be sent
    /// after a restart).
    pub fn release_all(&mut self) {
        self.delivery = Delivery::default();
        self.cursor = 0;
    }

    pub fn stats(&self) -> Result<Stats, BufferError> {
        let gaps: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM gaps", [], |r| r.get(0))?;
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT ts_us FROM readings ORDER BY seq LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(Stats {
            rows: self.rows,
            bytes: self.bytes,
            gaps_pending: gaps as u64,
            oldest_ts: oldest.and_then(DateTime::from_timestamp_micros),
            unconfirmed: self.delivery.awaiting_count(),
            oldest_unconfirmed_sent: self.delivery.oldest_awaiting(),
        })
    }
}

/// Lowest seq still unsent: a buffered reading or a pending gap record (`default` if none).
fn low_water(conn: &Connection, default: u64) -> Result<u64, BufferError> {
    let (r, g): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT MIN(seq) FROM readings), (SELECT MIN(from_seq) FROM gaps)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok([r, g]
        .into_iter()
        .flatten()
        .map(|v| v.max(1) as u64)
        .fold(default, u64::min))
}

/// Renames a corrupt buffer (and its `-wal`/`-shm`) to `<path>.corrupt-<UTC timestamp>`
/// and logs where it went.
fn set_aside(path: &Path, why: &BufferError) -> Result<(), BufferError> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut dest = path.as_os_str().to_owned();
    dest.push(format!(".corrupt-{stamp}"));
    let dest = PathBuf::from(dest);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = dest.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(Path::new(&from))(e)),
        }
    }
    lease::sync_dir(path).map_err(io_err(path))?;
    tracing::error!(
        "buffer {} is corrupt ({why}); moved to {} (with its -wal/-shm); continuing with a fresh buffer",
        path.display(),
        dest.display()
    );
    Ok(())
}

/// Consecutive runs of sorted seqs as `(from, to)` ranges.
fn runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in sorted {
        match out.last_mut() {
            Some((_, to)) if *to + 1 == s => *to = s,
            _ => out.push((s, s)),
        }
    }
    out
}

struct RawRow {
    seq: u64,
    ts_us: i64,
    channel: String,
    kind: u8,
    unit: String,
    value: String,
    quality: u16,
}

impl RawRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            seq: r.get::<_, i64>(0)? as u64,
            ts_us: r.get(1)?,
            channel: r.get(2)?,
            kind: r.get(3)?,
            unit: r.get(4)?,
            value: r.get(5)?,
            quality: r.get(6)?,
        })
    }
    fn bytes(&self) -> u64 {
        row_bytes(&self.channel, &self.unit, &self.value)
    }
    fn decode(&self) -> Option<Reading> {
        Some(Reading {
            seq: self.seq,
            ts: DateTime::from_timestamp_micros(self.ts_us)?,
            channel: Channel::new(self.channel.clone()).ok()?,
            kind: Kind::from_code(self.kind)?,
            unit: self.unit.as_str().into(),
            value: Decimal::from_str(&self.value).ok()?,
            quality: Quality::from_bits(self.quality)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmeter_core::DeviceId;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn confirmation(seqs: &[(u64, u64)], gaps: &[(u64, u64)]) -> Confirmation {
        let mut c = Confirmation::new(DeviceId::new("m").unwrap());
        for &(a, b) in seqs {
            c.seqs.push_range(a, b);
        }
        for &(a, b) in gaps {
            c.gaps.push_range(a, b);
        }
        c
    }

    fn seqs_of(b: &OutBatch) -> Vec<u64> {
        b.readings.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn only_a_confirmation_deletes_and_overdue_batches_come_back_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(&dir.path().join("b.sqlite"), 1 << 30).unwrap();
        b.insert(&samples(0, 10)).unwrap();
        let x = b.next_batch(4, 0).unwrap().unwrap();
        let y = b.next_batch(4, 0).unwrap().unwrap();
        assert_eq!(seqs_of(&y), vec![5, 6, 7, 8]);
        let now = Instant::now();
        b.published(&x.runs(), &x.gap_ids(), now);
        b.published(&y.runs(), &y.gap_ids(), now);
        assert_eq!(b.stats().unwrap().unconfirmed, 8);
        assert_eq!(
            b.stats().unwrap().rows,
            10,
            "PUBACKed readings stay buffered"
        );
        // A reconnect releases what is in flight only: awaiting batches are not re-read.
        b.release_inflight();
        assert_eq!(seqs_of(&b.next_batch(10, 0).unwrap().unwrap()), vec![9, 10]);
        // Part of the first batch and all of the second are confirmed.
        let done = b.confirm(&confirmation(&[(1, 2), (5, 8)], &[])).unwrap();
        assert_eq!(done.readings, 6);
        let st = b.stats().unwrap();
        assert_eq!((st.rows, st.unconfirmed), (4, 2));
        let recounted = Buffer::open(&dir.path().join("b.sqlite"), 1 << 30).unwrap();
        assert_eq!(
            st.bytes,
            recounted.stats().unwrap().bytes,
            "byte count kept exact"
        );
        drop(recounted);
        // The rest of the first batch is overdue: it comes back before anything newer.
        assert_eq!(b.resend(&x.runs(), &x.gap_ids()), 2);
        b.release_inflight();
        assert_eq!(
            seqs_of(&b.next_batch(10, 0).unwrap().unwrap()),
            vec![3, 4, 9, 10]
        );
        // A confirmation may overtake a resend: it deletes rows in flight too.
        assert_eq!(
            b.confirm(&confirmation(&[(1, 100)], &[])).unwrap().readings,
            4
        );
        assert!(b.next_batch(10, 0).unwrap().is_none());
        assert_eq!(b.stats().unwrap().rows, 0);
    }

    #[test]
    fn gap_records_are_deleted_by_a_confirmation_covering_their_range() {
        let dir = tempfile::tempdir().unwrap();
        let one = row_bytes("energy_import", "Wh", "1.5");
        let mut b = Buffer::open(&dir.path().join("b.sqlite"), one * 4 + 5).unwrap();
        b.insert(&samples(1, 10)).unwrap();
        let x = b.next_batch(100, 0).unwrap().unwrap();
        assert_eq!(x.gaps.len(), 1);
        let g = x.gaps[0].1;
        b.published(&x.runs(), &x.gap_ids(), Instant::now());
        // A confirmation of the readings alone leaves the gap record pending.
        b.confirm(&confirmation(&x.runs(), &[])).unwrap();
        assert_eq!(b.stats().unwrap().gaps_pending, 1);
        let done = b
            .confirm(&confirmation(&[], &[(g.from_seq, g.to_seq)]))
            .unwrap();
        assert_eq!(done.gaps, 1);
        assert_eq!(b.stats().unwrap().gaps_pending, 0);
    }

    #[test]
    fn awaiting_rows_count_against_the_budget_and_in_flight_rows_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let one = row_bytes("energy_import", "Wh", "1.5");
        let mut b = Buffer::open(&dir.path().join("b.sqlite"), one * 6 + 5).unwrap();
        b.insert(&samples(1, 6)).unwrap();
        let awaiting = b.next_batch(2, 0).unwrap().unwrap(); // 1, 2: awaiting
        b.published(&awaiting.runs(), &[], Instant::now());
        let flying = b.next_batch(2, 0).unwrap().unwrap(); // 3, 4: in flight
        assert_eq!(seqs_of(&flying), vec![3, 4]);
        // Three more: the budget drops the oldest rows that are not in flight: 1, 2, then 5.
        assert_eq!(b.insert(&samples(10, 3)).unwrap().dropped, 3);
        let st = b.stats().unwrap();
        assert_eq!((st.rows, st.unconfirmed), (6, 0));
        b.release_inflight();
        let next = b.next_batch(100, 0).unwrap().unwrap();
        assert_eq!(seqs_of(&next), vec![3, 4, 6, 7, 8, 9]);
        let lost: Vec<(u64, u64)> = next
            .gaps
            .iter()
            .map(|(_, g)| (g.from_seq, g.to_seq))
            .collect();
        assert_eq!(lost, vec![(1, 2), (5, 5)]);
    }

    fn sample(i: u64) -> Sample {
        Sample {
            ts: DateTime::from_timestamp(1_790_000_000 + i as i64, 0).unwrap(),
            channel: Channel::new("energy_import").unwrap(),
            kind: Kind::Counter,
            unit: "Wh".into(),
            value: Decimal::new(i as i64 * 15, 1),
            quality: Quality::GOOD,
        }
    }

    fn samples(from: u64, n: u64) -> Vec<Sample> {
        (from..from + n).map(sample).collect()
    }

    #[test]
    fn seqs_survive_reopen_and_ack_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let mut b = Buffer::open(&path, 1 << 30).unwrap();
        assert_eq!(b.insert(&samples(0, 10)).unwrap().seqs, Some((1, 10)));
        let batch = b.next_batch(4, 0).unwrap().unwrap();
        assert_eq!(
            batch.readings.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(batch.readings[1].value, Decimal::new(15, 1));
        b.ack(&batch).unwrap();
        // Everything acked is gone; a reopen continues the counter.
        let b2 = b.next_batch(100, 0).unwrap().unwrap();
        b.ack(&b2).unwrap();
        assert_eq!(b.stats().unwrap().rows, 0);
        assert_eq!(b.stats().unwrap().bytes, 0);
        drop(b);
        let mut b = Buffer::open(&path, 1 << 30).unwrap();
        assert_eq!(b.insert(&samples(0, 1)).unwrap().seqs, Some((11, 11)));
    }

    #[test]
    fn release_resends_unacked_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(&dir.path().join("b.sqlite"), 1 << 30).unwrap();
        b.insert(&samples(0, 6)).unwrap();
        let a = b.next_batch(2, 0).unwrap().unwrap();
        let c = b.next_batch(2, 0).unwrap().unwrap();
        assert_eq!(c.readings[0].seq, 3);
        b.ack(&c).unwrap();
        b.release_inflight();
        let again = b.next_batch(10, 0).unwrap().unwrap();
        let seqs: Vec<u64> = again.readings.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 5, 6]);
        assert_eq!(a.readings.len(), 2);
    }

    #[test]
    fn live_batches_interleave_during_backfill() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(&dir.path().join("b.sqlite"), 1 << 30).unwrap();
        b.insert(&samples(0, 100)).unwrap();
        let firsts: Vec<(u64, bool)> = (0..4)
            .map(|_| {
                let x = b.next_batch(10, 2).unwrap().unwrap();
                (x.readings[0].seq, x.live)
            })
            .collect();
        assert_eq!(
            firsts,
            vec![(1, false), (91, true), (11, false), (81, true)]
        );
        // No seq is ever taken twice while in flight.
        let mut seen = HashSet::new();
        while let Some(x) = b.next_batch(10, 2).unwrap() {
            for r in &x.readings {
                assert!(seen.insert(r.seq));
            }
        }
        assert_eq!(seen.len(), 60);
    }

    #[test]
    fn budget_drops_oldest_and_records_merged_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let one = row_bytes("energy_import", "Wh", "1.5");
        let mut b = Buffer::open(&dir.path().join("b.sqlite"), one * 10 + 5).unwrap();
        let mut dropped = 0;
        for i in 0..5 {
            dropped += b.insert(&samples(i * 4 + 1, 4)).unwrap().dropped;
        }
        let st = b.stats().unwrap();
        assert!(st.bytes <= one * 10 + 5, "{st:?}");
        assert_eq!(dropped, 20 - st.rows);
        let batch = b.next_batch(100, 0).unwrap().unwrap();
        assert_eq!(batch.gaps.len(), 1, "{:?}", batch.gaps);
        let g = batch.gaps[0].1;
        assert_eq!(
            (g.from_seq, g.to_seq, g.reason),
            (1, dropped, GapReason::BufferFull)
        );
        assert_eq!(batch.readings[0].seq, dropped + 1);
        b.ack(&batch).unwrap();
        assert_eq!(b.stats().unwrap().gaps_pending, 0);
    }

    fn remove_db(path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }

    fn pending_gaps(b: &mut Buffer) -> Vec<(u64, u64, GapReason)> {
        b.release_inflight();
        let batch = b.next_batch(1, 0).unwrap().unwrap();
        b.release_inflight();
        batch
            .gaps
            .iter()
            .map(|(_, g)| (g.from_seq, g.to_seq, g.reason))
            .collect()
    }

    #[test]
    fn lease_survives_a_deleted_database_and_bounds_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let mut b = Buffer::open(&path, 1 << 30).unwrap();
        assert_eq!(b.insert(&samples(0, 10)).unwrap().seqs, Some((1, 10)));
        assert_eq!(b.lease().end, 11 + lease::BLOCK);
        let x = b.next_batch(4, 0).unwrap().unwrap();
        b.ack(&x).unwrap();
        drop(b);
        // Reopening records the low-water mark (5: seqs 1..4 were acknowledged).
        let b = Buffer::open(&path, 1 << 30).unwrap();
        assert_eq!(b.next_seq(), 11, "a healthy reopen continues the counter");
        assert_eq!(
            b.lease(),
            Lease {
                end: 11 + lease::BLOCK,
                low: 5
            }
        );
        drop(b);
        remove_db(&path);
        let mut b = Buffer::open(&path, 1 << 30).unwrap();
        let start = 11 + lease::BLOCK;
        assert_eq!(b.next_seq(), start);
        assert_eq!(b.corruptions(), 0, "a deleted file is not set aside");
        assert_eq!(
            pending_gaps(&mut b),
            vec![(5, start - 1, GapReason::BufferCorrupt)]
        );
        assert_eq!(b.insert(&samples(0, 1)).unwrap().seqs, Some((start, start)));
        // Deleting the database again (and again) still never goes back.
        let mut seen = start;
        for _ in 0..3 {
            drop(b);
            remove_db(&path);
            b = Buffer::open(&path, 1 << 30).unwrap();
            let (f, _) = b.insert(&samples(0, 1)).unwrap().seqs.unwrap();
            assert!(f > seen, "seq {f} not above {seen}");
            seen = f;
        }
    }

    #[test]
    fn lease_renews_in_blocks_before_handing_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let mut b = Buffer::open(&path, u64::MAX).unwrap();
        let n = lease::BLOCK + 5;
        let (_, last) = b.insert(&samples(0, n)).unwrap().seqs.unwrap();
        assert_eq!(last, n);
        let on_disk = lease::read(&lease::path_for(&path)).unwrap().unwrap();
        assert!(on_disk.end > last, "{on_disk:?}");
        assert_eq!(on_disk, b.lease());
    }

    #[test]
    fn garbage_and_truncated_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let mut b = Buffer::open(&path, 1 << 30).unwrap();
        b.insert(&samples(0, 2000)).unwrap();
        drop(b);
        let good = std::fs::read(&path).unwrap();
        let mut top = 2000;
        for (i, damage) in ["garbage", "truncated", "tiny"].into_iter().enumerate() {
            match damage {
                "garbage" => std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap(),
                "truncated" => std::fs::write(&path, &good[..good.len() / 2]).unwrap(),
                _ => std::fs::write(&path, &good[..50]).unwrap(),
            }
            let mut b = Buffer::open(&path, 1 << 30).unwrap();
            assert_eq!(b.corruptions(), 1, "{damage}");
            let aside = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("b.sqlite.corrupt-")
                        && !name.ends_with("-wal")
                        && !name.ends_with("-shm")
                })
                .count();
            assert_eq!(aside, i + 1, "{damage}");
            let gaps = pending_gaps(&mut b);
            assert_eq!(gaps.len(), 1, "{damage}: {gaps:?}");
            assert_eq!(gaps[0].2, GapReason::BufferCorrupt);
            assert!(gaps[0].0 <= top && gaps[0].1 >= top, "{damage}: {gaps:?}");
            let (f, t) = b.insert(&samples(0, 3)).unwrap().seqs.unwrap();
            assert!(f > top, "{damage}: seq {f} reused (top was {top})");
            assert_eq!(gaps[0].1, f - 1);
            top = t;
            drop(b);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn seq_never_reused(ops in proptest::collection::vec((1u64..20, any::<bool>(), any::<bool>()), 1..12)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.sqlite");
            let mut all = HashSet::new();
            let mut b = Buffer::open(&path, 2000).unwrap();
            for (n, ack, reopen) in ops {
                let ins = b.insert(&samples(0, n)).unwrap();
                let (f, t) = ins.seqs.unwrap();
                for s in f..=t {
                    prop_assert!(all.insert(s), "seq {} reused", s);
                }
                if ack {
                    if let Some(x) = b.next_batch(7, 3).unwrap() {
                        b.ack(&x).unwrap();
                    }
                }
                if reopen {
                    drop(b);
                    b = Buffer::open(&path, 2000).unwrap();
                }
            }
        }
    }
}
