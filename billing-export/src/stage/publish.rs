//! Stage 7, publish: the files of a run, written as the chunks are billed into a hidden
//! directory (`.run-NNNN.tmp`) that is renamed into place at the end, each file's size and
//! SHA-256 recorded for `manifest.json`.
//!
//! What grows with the run is streamed: `statement_lines.csv` and `.parquet`,
//! `reconciliation.csv`, the ESPI feeds and invoices (one file per customer) and the lines of
//! `ledger.json`. The bytes are those of writing everything at once: the Parquet file gets
//! its batches in multiples of the writer's mini-batch size, and the ledger is the
//! pretty-printed JSON of the whole [`Ledger`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use parquet::arrow::ArrowWriter;
use sha2::{Digest, Sha256};

use crate::error::BillingError;
use crate::exceptions::Exception;
use crate::statement::{self, Line};

/// A file of the run: path relative to the run directory, size, SHA-256 (hex).
pub(crate) type Entry = (String, usize, String);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn create(path: &Path) -> Result<File, BillingError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)
            .map_err(|e| BillingError::io(format!("creating {}", p.display()), e))?;
    }
    File::create(path).map_err(|e| BillingError::io(format!("writing {}", path.display()), e))
}

/// Writes `bytes` as `name` under `dir`: its manifest entry.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<Entry, BillingError> {
    let path = dir.join(name);
    write_at(&path, bytes)?;
    Ok(entry(name, bytes))
}

fn write_at(path: &Path, bytes: &[u8]) -> Result<(), BillingError> {
    create(path)?
        .write_all(bytes)
        .map_err(|e| BillingError::io(format!("writing {}", path.display()), e))
}

fn entry(name: &str, bytes: &[u8]) -> Entry {
    (name.to_string(), bytes.len(), hex(&Sha256::digest(bytes)))
}

/// The thread that creates and writes the per-customer files (feeds, invoices) that the
/// renderers hand it. Creating files in one directory from several threads contends on the
/// directory's lock, where the kernel spins; with one writer the other cores keep rendering.
/// After a failed write it keeps draining (so no renderer blocks) and reports that first error.
struct FileWriter {
    tx: SyncSender<(PathBuf, Vec<u8>)>,
    thread: JoinHandle<Result<(), BillingError>>,
}

impl FileWriter {
    fn spawn() -> Result<Self, BillingError> {
        // About 64 files in flight: 2 MB of gzip'd feeds, 40 MB of plain ones.
        let (tx, rx) = sync_channel::<(PathBuf, Vec<u8>)>(64);
        let thread = std::thread::Builder::new()
            .name("billing-files".into())
            .spawn(move || {
                let mut first = Ok(());
                for (path, bytes) in rx {
                    if first.is_ok() {
                        first = write_at(&path, &bytes);
                    }
                }
                first
            })
            .map_err(|e| BillingError::io("starting the file writer", e))?;
        Ok(FileWriter { tx, thread })
    }

    /// Waits until every file handed over is written.
    fn finish(self) -> Result<(), BillingError> {
        drop(self.tx);
        self.thread.join().unwrap_or_else(|_| {
            Err(BillingError::io(
                "writing the run's files",
                std::io::Error::other("the file writer panicked"),
            ))
        })
    }
}

/// A file written piece by piece, hashed as it goes.
pub(crate) struct Streamed {
    name: String,
    path: PathBuf,
    file: BufWriter<File>,
    hash: Sha256,
    len: usize,
}

impl Streamed {
    /// Creates `name` under `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<Self, BillingError> {
        let path = dir.join(name);
        let file = BufWriter::with_capacity(1 << 20, create(&path)?);
        Ok(Streamed {
            name: name.to_string(),
            path,
            file,
            hash: Sha256::new(),
            len: 0,
        })
    }

    /// Appends `bytes`.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), BillingError> {
        self.write_all(bytes)
            .map_err(|e| BillingError::io(format!("writing {}", self.path.display()), e))
    }

    /// Flushes the file: its manifest entry.
    pub fn finish(mut self) -> Result<Entry, BillingError> {
        self.file
            .flush()
            .map_err(|e| BillingError::io(format!("writing {}", self.path.display()), e))?;
        Ok((self.name, self.len, hex(&self.hash.finalize())))
    }
}

impl Write for Streamed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Rows handed to the Parquet writer at a time: a multiple of its mini-batch size (1024), so
/// the pages come out as from one batch of everything.
const PARQUET_BATCH: usize = 64 * 1024;

/// `statement_lines.csv` and `statement_lines.parquet`, line by line.
pub(crate) struct StatementWriter {
    run: String,
    csv: Streamed,
    parquet: ArrowWriter<Streamed>,
    pending: Vec<Line>,
    /// Lines written.
    pub lines: usize,
}

impl StatementWriter {
    /// Creates both files under `dir` for run `run`.
    pub fn create(dir: &Path, run: &str) -> Result<Self, BillingError> {
        let mut csv = Streamed::create(dir, "statement_lines.csv")?;
        csv.put(statement::csv_header().as_bytes())?;
        let pq = Streamed::create(dir, "statement_lines.parquet")?;
        let parquet =
            ArrowWriter::try_new(pq, statement::schema(), Some(statement::parquet_props()))
                .map_err(|e| BillingError::output("statement parquet", e))?;
        Ok(StatementWriter {
            run: run.to_string(),
            csv,
            parquet,
            pending: Vec::new(),
            lines: 0,
        })
    }

    /// Appends `lines`.
    pub fn put(&mut self, lines: &[Line]) -> Result<(), BillingError> {
        let mut text = String::new();
        statement::csv_rows(&self.run, lines, &mut text);
        self.csv.put(text.as_bytes())?;
        self.pending.extend_from_slice(lines);
        self.lines += lines.len();
        while self.pending.len() >= PARQUET_BATCH {
            let rest = self.pending.split_off(PARQUET_BATCH);
            let batch = statement::batch(&self.run, &self.pending)?;
            self.parquet
                .write(&batch)
                .map_err(|e| BillingError::output("statement parquet", e))?;
            self.pending = rest;
        }
        Ok(())
    }

    /// Writes what is pending and closes both files.
    pub fn finish(mut self) -> Result<[Entry; 2], BillingError> {
        if !self.pending.is_empty() || self.lines == 0 {
            let batch = statement::batch(&self.run, &self.pending)?;
            self.parquet
                .write(&batch)
                .map_err(|e| BillingError::output("statement parquet", e))?;
        }
        let pq = self
            .parquet
            .into_inner()
            .map_err(|e| BillingError::output("statement parquet", e))?;
        Ok([self.csv.finish()?, pq.finish()?])
    }
}

/// `ledger.json`, line by line: exactly `serde_json::to_vec_pretty` of the whole [`Ledger`].
pub(crate) struct LedgerWriter {
    out: Streamed,
    lines: usize,
}

/// `value` pretty-printed and indented by `indent` spaces after each line break (JSON strings
/// hold no raw line breaks, so every break is structure).
fn pretty_at(value: &impl serde::Serialize, indent: usize) -> Result<String, BillingError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| BillingError::output("ledger", e))?;
    Ok(text.replace('\n', &format!("\n{}", " ".repeat(indent))))
}

impl LedgerWriter {
    /// Starts `ledger.json` of `period`/`run` under `dir`.
    pub fn create(dir: &Path, period: &str, run: &str) -> Result<Self, BillingError> {
        let mut out = Streamed::create(dir, "ledger.json")?;
        let head = format!(
            "{{\n  \"period\": {},\n  \"run\": {},\n  \"lines\": [",
            pretty_at(&period, 2)?,
            pretty_at(&run, 2)?
        );
        out.put(head.as_bytes())?;
        Ok(LedgerWriter { out, lines: 0 })
    }

    /// Appends lines.
    pub fn put(&mut self, lines: &[Line]) -> Result<(), BillingError> {
        let mut text = String::new();
        for l in lines {
            text.push_str(if self.lines == 0 { "\n    " } else { ",\n    " });
            text.push_str(&pretty_at(l, 4)?);
            self.lines += 1;
        }
        self.out.put(text.as_bytes())
    }

    /// Ends the file with the held customers and the invoice numbers.
    pub fn finish(
        mut self,
        held: &[Exception],
        invoices: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Entry, BillingError> {
        let tail = format!(
            "{}],\n  \"held\": {},\n  \"invoices\": {}\n}}",
            if self.lines == 0 { "" } else { "\n  " },
            pretty_at(&held, 2)?,
            pretty_at(invoices, 2)?
        );
        self.out.put(tail.as_bytes())?;
        self.out.finish()
    }
}

/// A CSV file written chunk by chunk: the header, then rows.
pub(crate) struct CsvWriter {
    out: Streamed,
    /// Rows written.
    pub rows: usize,
}

impl CsvWriter {
    /// Creates `name` under `dir` with `header` (CRLF added).
    pub fn create(dir: &Path, name: &str, header: &str) -> Result<Self, BillingError> {
        let mut out = Streamed::create(dir, name)?;
        out.put(format!("{header}\r\n").as_bytes())?;
        Ok(CsvWriter { out, rows: 0 })
    }

    /// Appends `text` holding `rows` records.
    pub fn put(&mut self, text: &str, rows: usize) -> Result<(), BillingError> {
        self.rows += rows;
        self.out.put(text.as_bytes())
    }

    /// Closes the file.
    pub fn finish(self) -> Result<Entry, BillingError> {
        self.out.finish()
    }
}

/// The run's hidden directory and the manifest of what is in it.
pub(crate) struct RunDir {
    pub dir: PathBuf,
    manifest: Vec<Entry>,
    files: Option<FileWriter>,
}

impl RunDir {
    /// Creates `dir` (removing what an interrupted run left there: never published).
    pub fn create(dir: PathBuf) -> Result<Self, BillingError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BillingError::io(format!("removing {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| BillingError::io(format!("creating {}", dir.display()), e))?;
        Ok(RunDir {
            dir,
            manifest: Vec::new(),
            files: Some(FileWriter::spawn()?),
        })
    }

    /// Hands `bytes` to the file writer as `name` (from any thread): its manifest entry, to
    /// [`record`](Self::record). The file is on disk once [`finish`](Self::finish) returns.
    pub fn write(&self, name: &str, bytes: Vec<u8>) -> Result<Entry, BillingError> {
        let e = entry(name, &bytes);
        let sent = self
            .files
            .as_ref()
            .map(|w| w.tx.send((self.dir.join(name), bytes)));
        match sent {
            Some(Ok(())) => Ok(e),
            _ => Err(BillingError::io(
                format!("writing {}", self.dir.join(name).display()),
                std::io::Error::other("the file writer has stopped"),
            )),
        }
    }

    /// Waits for the file writer: every file handed to [`write`](Self::write) is on disk, or
    /// the first error writing one.
    fn flush(&mut self) -> Result<(), BillingError> {
        self.files.take().map_or(Ok(()), FileWriter::finish)
    }

    /// Writes a whole file.
    pub fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), BillingError> {
        let e = write_file(&self.dir, name, bytes)?;
        self.manifest.push(e);
        Ok(())
    }

    /// Records files written elsewhere (streamed, or by other threads).
    pub fn record(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.manifest.extend(entries);
    }

    /// Waits for the file writer, then writes `manifest.json` (files sorted by path).
    pub fn finish(&mut self, period: &str, run: &str) -> Result<(), BillingError> {
        self.flush()?;
        self.manifest.sort();
        let files: Vec<serde_json::Value> = self
            .manifest
            .iter()
            .map(|(p, n, h)| serde_json::json!({ "path": p, "bytes": n, "sha256": h }))
            .collect();
        let m = serde_json::json!({ "period": period, "run": run, "files": files });
        let m = serde_json::to_vec_pretty(&m).map_err(|e| BillingError::output("manifest", e))?;
        write_file(&self.dir, "manifest.json", &m).map(|_| ())
    }

    /// Removes the directory (nothing to publish).
    pub fn discard(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("discarded run: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The deflate level of gzip'd feeds. A month of 15-minute data (≈ 600 kB of XML) takes
/// 0.64 ms at level 2 against 1.69 ms at the default level 6, for 32 kB instead of 28 kB:
/// at 100,000 customers that is about 100 s of CPU for 15 % more bytes.
const GZIP_LEVEL: u32 = 2;

/// A Green Button feed as published: `espi/<customer>.xml`, or gzip-compressed (fixed header:
/// no name, no time stamp; deflate level [`GZIP_LEVEL`]) as `espi/<customer>.xml.gz`.
pub(crate) fn espi_file(
    customer: &str,
    xml: Vec<u8>,
    gzip: bool,
) -> Result<(String, Vec<u8>), BillingError> {
    if !gzip {
        return Ok((format!("espi/{customer}.xml"), xml));
    }
    let mut gz = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(xml.len() / 8),
        flate2::Compression::new(GZIP_LEVEL),
    );
    gz.write_all(&xml)
        .map_err(|e| BillingError::output("green button feed", e))?;
    let bytes = gz
        .finish()
        .map_err(|e| BillingError::output("green button feed", e))?;
    Ok((format!("espi/{customer}.xml.gz"), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::ledger::Ledger;
    use crate::statement::LineType;
    use chrono::{DateTime, Utc};
    use rust_decimal::Decimal;
    use std::collections::BTreeMap;
    use std::io::Read;

    fn line(i: usize) -> Line {
        let t = DateTime::<Utc>::from_timestamp(1_790_805_600, 0).unwrap();
        Line {
            line_type: if i.is_multiple_of(7) {
                LineType::Adjustment
            } else {
                LineType::Charge
            },
            customer_id: format!("C{:05}", i / 4),
            site_id: format!("S{:05}", i / 4),
            device_id: if i % 4 == 3 {
                String::new()
            } else {
                format!("m{:05}", i / 4)
            },
            channel: "energy_import".into(),
            component: ["energy", "energy", "standing_charge", "tax"][i % 4].into(),
            band: ["peak", "offpeak", "2026-10", "0.19"][i % 4].into(),
            period: "2026-10".into(),
            period_start: t,
            period_end: t,
            quantity: Decimal::new(i as i64 * 1234567, 6),
            unit: "kWh".into(),
            rate: Decimal::new(3512, 4),
            amount: Decimal::new(i as i64 * 37 - 5000, 2),
            currency: "EUR".into(),
            minor_units: 2,
            tax_rate: Decimal::new(19, 2),
            usage_quantity: Decimal::new(i as i64, 0),
            usage_unit: "Wh \"quoted\", =x".into(),
            quality: Decimal::new(i as i64 % 10000, 4),
            edited_share: Decimal::new((i as i64 * 7) % 10000, 4),
            revision: (i % 3) as i64,
            previous_revision: i.is_multiple_of(5).then_some(1),
            peak_at: i.is_multiple_of(6).then_some(t),
            peak_at_local: String::new(),
        }
    }

    fn read(dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join(name)).unwrap()
    }

    #[test]
    fn streamed_statements_are_the_bytes_of_one_batch() {
        // More than one Parquet batch, in pieces of odd sizes.
        let lines: Vec<Line> = (0..PARQUET_BATCH + 3_001).map(line).collect();
        for pieces in [1usize, 997, 30_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = StatementWriter::create(dir.path(), "run-0001").unwrap();
            for part in lines.chunks(pieces) {
                w.put(part).unwrap();
            }
            let [csv, pq] = w.finish().unwrap();
            let want_csv = statement::to_csv("run-0001", &lines);
            let want_pq = statement::to_parquet("run-0001", &lines).unwrap();
            assert!(read(dir.path(), "statement_lines.csv") == want_csv.as_bytes());
            assert!(
                read(dir.path(), "statement_lines.parquet") == want_pq,
                "pieces {pieces}"
            );
            assert_eq!(csv.1, want_csv.len());
            assert_eq!(pq.1, want_pq.len());
            assert_eq!(pq.2, hex(&Sha256::digest(&want_pq)));
        }
        // No lines at all: the header and an empty Parquet file, as before.
        let dir = tempfile::tempdir().unwrap();
        StatementWriter::create(dir.path(), "r")
            .unwrap()
            .finish()
            .unwrap();
        assert!(
            read(dir.path(), "statement_lines.parquet") == statement::to_parquet("r", &[]).unwrap()
        );
    }

    #[test]
    fn streamed_ledger_is_the_pretty_json_of_the_whole() {
        let held = vec![Exception {
            customer_id: "C1".into(),
            site_id: String::new(),
            device_id: "d\n\"x\"".into(),
            channel: "c".into(),
            reason: "line\nbreak".into(),
        }];
        let mut invoices = BTreeMap::new();
        invoices.insert(
            "C1".to_string(),
            vec!["INV-1".to_string(), "INV-2".to_string()],
        );
        for (n, held, invoices) in [
            (0, vec![], BTreeMap::new()),
            (1, held.clone(), invoices.clone()),
            (9, held, invoices),
        ] {
            let lines: Vec<Line> = (0..n).map(line).collect();
            let dir = tempfile::tempdir().unwrap();
            let mut w = LedgerWriter::create(dir.path(), "2026-10", "run-0002").unwrap();
            for part in lines.chunks(4) {
                w.put(part).unwrap();
            }
            w.finish(&held, &invoices).unwrap();
            let whole = Ledger {
                period: "2026-10".into(),
                run: "run-0002".into(),
                lines,
                held,
                invoices,
            };
            let want = serde_json::to_vec_pretty(&whole).unwrap();
            assert_eq!(
                String::from_utf8(read(dir.path(), "ledger.json")).unwrap(),
                String::from_utf8(want).unwrap(),
                "{n} lines"
            );
        }
    }

    #[test]
    fn gzip_feeds_are_reproducible_and_hold_the_xml() {
        let xml = b"<feed>".repeat(10_000);
        let (name, a) = espi_file("C1", xml.clone(), true).unwrap();
        let (_, b) = espi_file("C1", xml.clone(), true).unwrap();
        assert_eq!(name, "espi/C1.xml.gz");
        assert_eq!(a, b);
        assert!(a.len() < xml.len() / 20);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, xml);
        assert_eq!(
            espi_file("C1", xml.clone(), false).unwrap(),
            ("espi/C1.xml".to_string(), xml)
        );
    }

    #[test]
    fn handed_over_files_are_on_disk_at_finish_and_listed_in_the_manifest() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path().join(".run-0001.tmp")).unwrap();
        let entries: Vec<Entry> = (0..200)
            .map(|i| {
                run.write(&format!("invoices/C{i:03}.json"), vec![b'x'; i])
                    .unwrap()
            })
            .collect();
        run.record(entries);
        run.finish("2026-10", "run-0001").unwrap();
        for i in [0, 7, 199] {
            assert_eq!(
                read(&run.dir, &format!("invoices/C{i:03}.json")),
                vec![b'x'; i]
            );
        }
        let m: serde_json::Value =
            serde_json::from_slice(&read(&run.dir, "manifest.json")).unwrap();
        assert_eq!(m["files"].as_array().unwrap().len(), 200);
        assert_eq!(m["files"][7]["bytes"], 7);
    }

    #[test]
    fn a_failed_write_fails_the_run_and_later_files_do_not_block() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path().join(".run-0001.tmp")).unwrap();
        run.write("espi", b"a file where a directory must be".to_vec())
            .unwrap();
        // More files than the channel holds, all behind the failing one.
        for i in 0..500 {
            run.write(&format!("espi/C{i}.xml.gz"), vec![0; 10])
                .unwrap();
        }
        let err = run.finish("2026-10", "run-0001").unwrap_err().to_string();
        assert!(err.contains("espi"), "{err}");
        assert!(!run.dir.join("manifest.json").exists());
    }
}
