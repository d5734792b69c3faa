//! Changes held back until their transaction commits — a MySQL/MariaDB XA transaction between
//! `XA START` and `XA COMMIT`, a PostgreSQL transaction the server streams while it is still in
//! progress — in memory up to a budget shared by all of a source's open transactions, and past
//! it in a file, so a huge or long-open transaction cannot exhaust capture's memory.
//!
//! What is held is a [`Spill`]: MySQL holds encoded changes (`(codec, ChangeEvent)`),
//! PostgreSQL the stream's raw messages ([`RawMessage`]). A [`Held`] keeps its items in order: the first ones in memory while the budget allows,
//! every one after the first that does not fit in an unnamed temporary file (gone when it is
//! dropped, or when the process dies). Reading it back ([`Held::drain`]) yields them in the
//! order they were pushed. Nothing here is durable: a restart reads the transaction again from
//! the source, because checkpoints never pass an open transaction.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_schemas::event::{ChangeEvent, Datum, Op, Position, SourceInfo, TxInfo};
use sluice_schemas::table::TableSchema;
use sluice_schemas::EnvelopeCodec;

use crate::metrics as m;
use crate::CaptureError;

/// `[sources.<name>.spill]`: where held changes go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpillConfig {
    /// Memory for the changes of a source's open transactions, all of them together, in MiB;
    /// past it a transaction's further changes go to a file. Default 32 (in local mode capture
    /// shares its process with the routers: 32 keeps a 5M-row transaction under 150 MB for
    /// both together; 64 did not).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Directory of the spill files. Default: the system's temporary directory (`TMPDIR`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

fn default_memory_mb() -> u64 {
    32
}

impl Default for SpillConfig {
    fn default() -> SpillConfig {
        SpillConfig {
            memory_mb: default_memory_mb(),
            dir: None,
        }
    }
}

/// The memory budget of one source's held changes, shared by its [`Held`]s.
#[derive(Clone)]
pub struct Budget(Arc<BudgetInner>);

struct BudgetInner {
    source: String,
    limit: u64,
    used: AtomicU64,
    dir: PathBuf,
}

impl Budget {
    pub fn new(source: &str, config: &SpillConfig) -> Budget {
        Budget::of_bytes(
            source,
            config.memory_mb.saturating_mul(1024 * 1024),
            config.dir.clone().unwrap_or_else(std::env::temp_dir),
        )
    }

    fn of_bytes(source: &str, limit: u64, dir: PathBuf) -> Budget {
        Budget(Arc::new(BudgetInner {
            source: source.to_string(),
            limit,
            used: AtomicU64::new(0),
            dir,
        }))
    }

    /// Takes `bytes` if they fit.
    fn take(&self, bytes: u64) -> bool {
        let inner = &self.0;
        let taken = inner
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= inner.limit).then_some(used + bytes)
            })
            .is_ok();
        if taken {
            self.report();
        }
        taken
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.0.used.fetch_sub(bytes, Ordering::Relaxed);
            self.report();
        }
    }

    fn report(&self) {
        metrics::gauge!(m::HELD_BYTES, "source" => self.0.source.clone())
            .set(self.0.used.load(Ordering::Relaxed) as f64);
    }
}

/// What a [`Held`] can hold: its size in memory, and how it is written to and read from a
/// spill file (with side tables of what the file's records refer to, kept in memory).
pub trait Spill: Sized {
    /// What records refer to instead of carrying it (shared codecs and tables).
    type Side: Default;
    /// About what the item takes in memory.
    fn estimate(&self) -> u64;
    fn encode(self, side: &mut Self::Side) -> std::io::Result<Vec<u8>>;
    fn decode(bytes: &[u8], side: &Self::Side) -> std::io::Result<Self>;
}

/// The changes of one open transaction, in order.
pub struct Held<T: Spill = (Arc<EnvelopeCodec>, ChangeEvent)> {
    budget: Budget,
    memory: Vec<T>,
    /// What `memory` holds of the budget.
    memory_bytes: u64,
    /// Everything pushed after the first change that did not fit in memory.
    file: Option<SpillFile<T>>,
}

struct SpillFile<T: Spill> {
    writer: BufWriter<File>,
    side: T::Side,
    records: usize,
}

/// A spilled change: the event without its table, which is kept beside the file.
#[derive(Serialize, Deserialize)]
struct Record {
    codec: u32,
    table: u32,
    op: Op,
    before: Option<Vec<Datum>>,
    after: Option<Vec<Datum>>,
    source: SourceInfo,
    transaction: Option<TxInfo>,
    position: Position,
}

impl<T: Spill> Held<T> {
    pub fn new(budget: &Budget) -> Held<T> {
        Held {
            budget: budget.clone(),
            memory: Vec::new(),
            memory_bytes: 0,
            file: None,
        }
    }

    /// How many changes it holds.
    pub fn len(&self) -> usize {
        self.memory.len() + self.file.as_ref().map_or(0, |f| f.records)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether changes went to a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Adds a change after the ones held.
    pub fn push(&mut self, item: T) -> Result<(), CaptureError> {
        if self.file.is_none() {
            let bytes = item.estimate();
            if self.budget.take(bytes) {
                self.memory_bytes += bytes;
                self.memory.push(item);
                return Ok(());
            }
            let dir = &self.budget.0.dir;
            let file = tempfile::tempfile_in(dir).map_err(|e| spill_error(dir, &e))?;
            tracing::info!(
                source = %self.budget.0.source,
                dir = %dir.display(),
                held = self.memory.len(),
                "an open transaction's changes pass spill.memory_mb; the rest of it goes to a file"
            );
            self.file = Some(SpillFile {
                writer: BufWriter::with_capacity(256 * 1024, file),
                side: T::Side::default(),
                records: 0,
            });
        }
        let file = self.file.as_mut().expect("set above");
        let written = file
            .write(item)
            .map_err(|e| spill_error(&self.budget.0.dir, &e))?;
        metrics::counter!(m::SPILLED_BYTES_TOTAL, "source" => self.budget.0.source.clone())
            .increment(written);
        Ok(())
    }

    /// The changes in the order they were pushed; the memory they held is released when the
    /// iterator is dropped.
    pub fn drain(mut self) -> Result<Drain<T>, CaptureError> {
        let dir = self.budget.0.dir.clone();
        let file = match self.file.take() {
            None => None,
            Some(f) => Some(f.reader().map_err(|e| spill_error(&dir, &e))?),
        };
        Ok(Drain {
            budget: self.budget.clone(),
            memory_bytes: std::mem::take(&mut self.memory_bytes),
            memory: std::mem::take(&mut self.memory).into_iter(),
            file,
            dir,
        })
    }
}

impl<T: Spill> Drop for Held<T> {
    fn drop(&mut self) {
        self.budget.release(self.memory_bytes);
    }
}

fn spill_error(dir: &Path, e: &std::io::Error) -> CaptureError {
    CaptureError::Definite(format!(
        "spill file in {}: {e} (held changes of open transactions go there past \
         spill.memory_mb; free space there, or set spill.dir or spill.memory_mb of the source)",
        dir.display()
    ))
}

impl<T: Spill> SpillFile<T> {
    /// Appends one item; returns the bytes written.
    fn write(&mut self, item: T) -> std::io::Result<u64> {
        let bytes = item.encode(&mut self.side)?;
        self.writer.write_all(&(bytes.len() as u32).to_le_bytes())?;
        self.writer.write_all(&bytes)?;
        self.records += 1;
        Ok(4 + bytes.len() as u64)
    }

    fn reader(self) -> std::io::Result<SpillReader<T>> {
        let mut file = self
            .writer
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpillReader {
            reader: BufReader::with_capacity(256 * 1024, file),
            side: self.side,
            left: self.records,
            buf: Vec::new(),
        })
    }
}

/// A MySQL change: its codec and the event, spilled without the codec and table (kept beside
/// the file, named by index).
impl Spill for (Arc<EnvelopeCodec>, ChangeEvent) {
    type Side = (Vec<Arc<EnvelopeCodec>>, Vec<Arc<TableSchema>>);

    fn estimate(&self) -> u64 {
        estimate(&self.1)
    }

    fn encode(self, (codecs, tables): &mut Self::Side) -> std::io::Result<Vec<u8>> {
        let (codec, event) = self;
        let record = Record {
            codec: index_of(codecs, codec),
            table: index_of(tables, event.row.table),
            op: event.row.op,
            before: event.row.before,
            after: event.row.after,
            source: event.source,
            transaction: event.transaction,
            position: event.position,
        };
        postcard::to_stdvec(&record).map_err(std::io::Error::other)
    }

    fn decode(bytes: &[u8], (codecs, tables): &Self::Side) -> std::io::Result<Self> {
        let record: Record = postcard::from_bytes(bytes).map_err(std::io::Error::other)?;
        let missing = || std::io::Error::other("spill record names no known codec");
        let codec = codecs.get(record.codec as usize).ok_or_else(missing)?;
        let table = tables.get(record.table as usize).ok_or_else(missing)?;
        Ok((
            codec.clone(),
            ChangeEvent {
                row: sluice_schemas::RowChange {
                    table: table.clone(),
                    op: record.op,
                    before: record.before,
                    after: record.after,
                },
                source: record.source,
                transaction: record.transaction,
                position: record.position,
            },
        ))
    }
}

/// One pgoutput message of a transaction the server streams while it is in progress, as
/// received: the (sub)transaction it belongs to, where in the WAL it was sent from, and its
/// bytes (decoded again when the transaction commits).
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    pub subxid: u32,
    pub lsn: u64,
    pub data: bytes::Bytes,
}

impl Spill for RawMessage {
    type Side = ();

    fn estimate(&self) -> u64 {
        (size_of::<RawMessage>() + self.data.len()) as u64
    }

    fn encode(self, (): &mut ()) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(12 + self.data.len());
        out.extend_from_slice(&self.subxid.to_le_bytes());
        out.extend_from_slice(&self.lsn.to_le_bytes());
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    fn decode(bytes: &[u8], (): &()) -> std::io::Result<Self> {
        let short = || std::io::Error::other("spilled message shorter than its header");
        let subxid = u32::from_le_bytes(
            bytes
                .get(..4)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?,
        );
        let lsn = u64::from_le_bytes(
            bytes
                .get(4..12)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?,
        );
        Ok(RawMessage {
            subxid,
            lsn,
            data: bytes::Bytes::copy_from_slice(&bytes[12..]),
        })
    }
}

/// The index of `item` in `items` (by identity), adding it when new.
fn index_of<T>(items: &mut Vec<Arc<T>>, item: Arc<T>) -> u32 {
    match items.iter().rposition(|i| Arc::ptr_eq(i, &item)) {
        Some(i) => i as u32,
        None => {
            items.push(item);
            (items.len() - 1) as u32
        }
    }
}

struct SpillReader<T: Spill> {
    reader: BufReader<File>,
    side: T::Side,
    left: usize,
    buf: Vec<u8>,
}

impl<T: Spill> SpillReader<T> {
    fn next_item(&mut self) -> std::io::Result<T> {
        let mut len = [0; 4];
        self.reader.read_exact(&mut len)?;
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        self.reader.read_exact(&mut self.buf)?;
        T::decode(&self.buf, &self.side)
    }
}

/// What [`Held::drain`] yields: the changes in memory, then those in the file.
pub struct Drain<T: Spill> {
    budget: Budget,
    memory_bytes: u64,
    memory: std::vec::IntoIter<T>,
    file: Option<SpillReader<T>>,
    dir: PathBuf,
}

impl<T: Spill> Iterator for Drain<T> {
    type Item = Result<T, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(change) = self.memory.next() {
            return Some(Ok(change));
        }
        let file = self.file.as_mut()?;
        if file.left == 0 {
            return None;
        }
        file.left -= 1;
        Some(file.next_item().map_err(|e| spill_error(&self.dir, &e)))
    }
}

impl<T: Spill> Drop for Drain<T> {
    fn drop(&mut self) {
        self.budget.release(self.memory_bytes);
    }
}

/// About what a change takes in memory: the event, its images' values and their text.
fn estimate(event: &ChangeEvent) -> u64 {
    fn datum(d: &Datum) -> usize {
        size_of::<Datum>()
            + match d {
                Datum::String(s) | Datum::Decimal(s) | Datum::Uuid(s) => s.len(),
                Datum::Bytes(b) => b.len(),
                Datum::Array(items) => items.iter().map(datum).sum(),
                _ => 0,
            }
    }
    let image = |i: &Option<Vec<Datum>>| i.as_ref().map_or(0, |r| r.iter().map(datum).sum());
    (size_of::<ChangeEvent>()
        + size_of::<(Arc<EnvelopeCodec>, ChangeEvent)>()
        + image(&event.before)
        + image(&event.after)
        + event.position.0.len()
        + event.source.sequence.as_ref().map_or(0, String::len)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_schemas::avro::Connector;
    use sluice_schemas::table::{Column, SqlType, TableId};

    fn codec(name: &str) -> Arc<EnvelopeCodec> {
        let table = TableSchema {
            id: TableId::new("shop", name),
            columns: vec![Column {
                name: "id".into(),
                sql_type: SqlType::Int64,
                key: true,
                missing: None,
            }],
        };
        Arc::new(EnvelopeCodec::new("t", "src", Connector::Mysql, Arc::new(table)).unwrap())
    }

    /// A change with one value of each kind, told apart by `n`.
    fn event(codec: &EnvelopeCodec, n: i64) -> ChangeEvent {
        let row = vec![
            Datum::Long(n),
            Datum::Null,
            Datum::Bool(n % 2 == 0),
            Datum::Int(n as i32),
            Datum::Float(0.1 + n as f32),
            Datum::Double(-1.0e-300 * n as f64),
            Datum::String(format!("héllo {n}")),
            Datum::Bytes(vec![0, 255, n as u8]),
            Datum::Decimal(format!("-{n}.10")),
            Datum::Date(-3),
            Datum::TimeMicros(86_399_999_999),
            Datum::TimestampMicros(i64::MIN + n),
            Datum::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Datum::Array(vec![Datum::Int(1), Datum::Null, Datum::Array(vec![])]),
            Datum::Unchanged,
        ];
        ChangeEvent {
            row: sluice_schemas::RowChange {
                table: codec.table.clone(),
                op: if n % 3 == 0 { Op::Delete } else { Op::Update },
                before: Some(row.clone()),
                after: (n % 3 != 0).then_some(row),
            },
            source: SourceInfo {
                name: "src".into(),
                db: "shop".into(),
                ts_us: n * 1000,
                snapshot: false,
                tx_id: Some(n),
                lsn: None,
                sequence: Some(format!("[\"{n}\"]")),
                binlog: Some(sluice_schemas::event::BinlogSource {
                    server_id: 7,
                    gtid: Some("0-1-9".into()),
                    file: "bin.000001".into(),
                    pos: n,
                    row: 2,
                }),
            },
            transaction: Some(TxInfo {
                id: "0-1-9".into(),
                total_order: n,
                data_collection_order: n,
            }),
            position: Position::mysql(1, n as u64, 0),
        }
    }

    fn same(a: &ChangeEvent, b: &ChangeEvent) -> bool {
        Arc::ptr_eq(&a.table, &b.table)
            && a.op == b.op
            && a.before == b.before
            && a.after == b.after
            && a.source == b.source
            && a.transaction == b.transaction
            && a.position == b.position
    }

    #[test]
    fn changes_past_the_budget_go_to_a_file_and_come_back_in_order_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        // A budget of three changes.
        let (orders, lines) = (codec("orders"), codec("lines"));
        let probe = estimate(&event(&orders, 1));
        let budget = Budget::of_bytes("src", probe * 3, dir.path().to_path_buf());
        let mut held: Held = Held::new(&budget);
        let expected: Vec<_> = (1..=50)
            .map(|n| {
                let codec = if n % 2 == 0 { &orders } else { &lines };
                (codec.clone(), event(codec, n))
            })
            .collect();
        for (codec, event) in &expected {
            held.push((codec.clone(), event.clone())).unwrap();
        }
        assert!(held.spilled());
        assert_eq!(held.len(), 50);
        let used = budget.0.used.load(Ordering::Relaxed);
        assert!(used > 0 && used <= probe * 3, "{used} of {}", probe * 3);

        let got: Vec<_> = held.drain().unwrap().map(Result::unwrap).collect();
        assert_eq!(got.len(), expected.len());
        for ((ec, ee), (gc, ge)) in expected.iter().zip(&got) {
            assert!(Arc::ptr_eq(ec, gc) && same(ee, ge), "{ee:?}\n{ge:?}");
        }
        drop(got);
        assert_eq!(budget.0.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn streamed_messages_past_the_budget_come_back_from_the_file_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget::of_bytes("src", 200, dir.path().to_path_buf());
        let mut held: Held<RawMessage> = Held::new(&budget);
        let expected: Vec<RawMessage> = (0..40u32)
            .map(|n| RawMessage {
                subxid: 700 + n % 3,
                lsn: 0x1_0000_0000 + u64::from(n),
                data: bytes::Bytes::from(vec![b'I'; n as usize]),
            })
            .collect();
        for m in &expected {
            held.push(m.clone()).unwrap();
        }
        assert!(held.spilled());
        let got: Vec<RawMessage> = held.drain().unwrap().map(Result::unwrap).collect();
        assert_eq!(got, expected);
        assert_eq!(budget.0.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_budget_is_shared_and_given_back_when_a_transaction_is_dropped() {
        let budget = Budget::new("src", &SpillConfig::default());
        let orders = codec("orders");
        let mut a: Held = Held::new(&budget);
        let mut b: Held = Held::new(&budget);
        a.push((orders.clone(), event(&orders, 1))).unwrap();
        b.push((orders.clone(), event(&orders, 2))).unwrap();
        let one = estimate(&event(&orders, 1));
        assert!(!a.spilled() && !b.spilled());
        assert!(budget.0.used.load(Ordering::Relaxed) >= 2 * one - 8);
        drop(a);
        drop(b);
        assert_eq!(budget.0.used.load(Ordering::Relaxed), 0);
    }
}
