//! The change-event model shared by capture and router.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::table::TableSchema;
use std::sync::Arc;

/// The kind of change, with Debezium's one-letter codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A row was inserted (`c`).
    Create,
    /// A row was updated (`u`).
    Update,
    /// A row was deleted (`d`).
    Delete,
    /// A row was read by a snapshot (`r`).
    Read,
    /// The table was truncated (`t`).
    Truncate,
}

impl Op {
    /// Debezium's code for this operation.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }

    /// Parses Debezium's code.
    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            _ => return None,
        })
    }
}

/// A unique, totally ordered position of an event in its source's log.
///
/// The bytes compare in source order: every source encodes its position in fixed-width
/// big-endian fields (PostgreSQL: commit LSN, then the event's index in its transaction), so
/// byte order is log order. The router stores the highest applied position per topic-partition
/// and skips anything at or below it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position(pub Vec<u8>);

/// The Kafka header that carries an event's [`Position`] as lower-case hex.
pub const POSITION_HEADER: &str = "sluice.position";

/// The Kafka header of a table-wide change (a truncate) published to every partition of its
/// topic: the number of partitions, in decimal. The sink applies the change once every
/// partition has reached it.
pub const BARRIER_HEADER: &str = "sluice.barrier";

impl Position {
    /// The MySQL/MariaDB position: binlog file sequence number, the position of the rows event
    /// in that file, then the row's index within the event.
    pub fn mysql(file_seq: u32, pos: u64, row: u64) -> Position {
        let mut bytes = Vec::with_capacity(20);
        bytes.extend_from_slice(&file_seq.to_be_bytes());
        bytes.extend_from_slice(&pos.to_be_bytes());
        bytes.extend_from_slice(&row.to_be_bytes());
        Position(bytes)
    }

    /// The PostgreSQL position: the transaction's commit LSN, then the event's index within it.
    pub fn postgres(commit_lsn: u64, index: u64) -> Position {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&commit_lsn.to_be_bytes());
        bytes.extend_from_slice(&index.to_be_bytes());
        Position(bytes)
    }

    /// Lower-case hex, as carried in the [`POSITION_HEADER`].
    pub fn to_hex(&self) -> String {
        let mut out = vec![0; self.0.len() * 2];
        self.write_hex(&mut out);
        String::from_utf8(out).expect("hex digits are ASCII")
    }

    /// Writes the hex form into the start of `out` and returns it; `None` when `out` is
    /// shorter than twice the position. For capture, which sends one per event.
    pub fn write_hex<'b>(&self, out: &'b mut [u8]) -> Option<&'b [u8]> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let out = out.get_mut(..self.0.len() * 2)?;
        for (pair, b) in out.chunks_exact_mut(2).zip(&self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        Some(out)
    }

    /// Parses a [`POSITION_HEADER`] value (UTF-8 hex); `None` when it is not one.
    pub fn from_header(value: &[u8]) -> Option<Position> {
        Position::from_hex(std::str::from_utf8(value).ok()?)
    }

    /// Parses the hex form; `None` when it is not even-length hex.
    pub fn from_hex(hex: &str) -> Option<Position> {
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Position)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({})", self.to_hex())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One column value, typed as it travels in Avro.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// Text, JSON, unconstrained numerics and any type carried in its text form.
    String(String),
    Bytes(Vec<u8>),
    /// A fixed-scale decimal as its exact decimal text (`-12.340`).
    Decimal(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since midnight.
    TimeMicros(i64),
    /// Microseconds since 1970-01-01T00:00:00 (UTC for `timestamptz`).
    TimestampMicros(i64),
    Uuid(String),
    /// A one-dimensional array, elements in order (each may be [`Datum::Null`]).
    Array(Vec<Datum>),
    /// The value did not change and the source did not send it (PostgreSQL unchanged TOAST).
    /// Sinks must leave the column as it is.
    Unchanged,
}

/// Now, in microseconds since the Unix epoch.
pub fn unix_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// Where an event came from, for the envelope's `source` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The logical source name from the config (`pg_main`).
    pub name: Arc<str>,
    /// The database the change was read from.
    pub db: Arc<str>,
    /// Commit timestamp at the source, in microseconds since the epoch (the envelope's
    /// `source.ts_ms`, `ts_us` and `ts_ns` all derive from it).
    pub ts_us: i64,
    /// Whether the event was read by a snapshot.
    pub snapshot: bool,
    /// The transaction id at the source, when it has one.
    pub tx_id: Option<i64>,
    /// PostgreSQL: the LSN of the change.
    pub lsn: Option<i64>,
    /// PostgreSQL: Debezium's `sequence` (`["<commit lsn>","<lsn>"]`).
    pub sequence: Option<String>,
    /// MySQL/MariaDB: where in the binlog the event was read.
    pub binlog: Option<BinlogSource>,
}

/// The MySQL connector's `source` fields (Debezium's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinlogSource {
    /// `server_id` of the server that wrote the event.
    pub server_id: i64,
    /// The transaction's GTID (MariaDB `domain-server-seq`), when the server has GTIDs.
    pub gtid: Option<Arc<str>>,
    /// Binlog file and the position of the event in it.
    pub file: Arc<str>,
    pub pos: i64,
    /// Index of the row within its rows event.
    pub row: i32,
}

/// The transaction an event belongs to, for the envelope's `transaction` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxInfo {
    /// Shared by every event of the transaction.
    pub id: Arc<str>,
    /// 1-based order of the event within its transaction.
    pub total_order: i64,
    /// 1-based order of the event among the transaction's events for the same table.
    pub data_collection_order: i64,
}

/// One row change: the table, what happened, and the row images. Every stage carries it:
/// capture's [`ChangeEvent`], the decoder's [`crate::avro::DecodedEvent`], the sink's
/// `SinkChange`, each adding what that stage knows (through `Deref`, `event.op` reads the row's).
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub table: Arc<TableSchema>,
    pub op: Op,
    /// Row image before the change, column by column in `table.columns` order, when known.
    /// Deletes need at least the key columns.
    pub before: Option<Vec<Datum>>,
    /// Row image after the change, in `table.columns` order; `None` for deletes and truncates.
    /// Columns the source did not send are [`Datum::Unchanged`].
    pub after: Option<Vec<Datum>>,
}

/// Gives a stage's change type the fields of the [`RowChange`] it carries in `row`.
#[macro_export]
macro_rules! carries_row_change {
    ($ty:ty) => {
        impl std::ops::Deref for $ty {
            type Target = $crate::event::RowChange;
            fn deref(&self) -> &$crate::event::RowChange {
                &self.row
            }
        }

        impl std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut $crate::event::RowChange {
                &mut self.row
            }
        }
    };
}

/// One row change, as capture produces it.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub row: RowChange,
    pub source: SourceInfo,
    pub transaction: Option<TxInfo>,
    pub position: Position,
}

carries_row_change!(ChangeEvent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_positions_order_by_commit_lsn_then_index() {
        let a = Position::postgres(0x10, 5);
        let b = Position::postgres(0x10, 6);
        let c = Position::postgres(0x11, 0);
        assert!(a < b && b < c);
        assert!(Position::postgres(0x1_0000_0000, 0) > Position::postgres(0xFFFF_FFFF, 9));
    }

    #[test]
    fn mysql_positions_order_by_file_then_offset_then_row() {
        assert!(Position::mysql(1, 900, 7) < Position::mysql(2, 4, 0));
        assert!(Position::mysql(2, 4, 1) < Position::mysql(2, 5, 0));
        assert!(Position::mysql(2, 0x1_0000, 0) > Position::mysql(2, 0xFFFF, 9));
    }

    #[test]
    fn position_hex_round_trips() {
        let p = Position::postgres(0xDEAD_BEEF, 42);
        assert_eq!(p.to_hex(), "00000000deadbeef000000000000002a");
        assert_eq!(Position::from_hex(&p.to_hex()), Some(p.clone()));
        let mut buf = [0; 64];
        assert_eq!(p.write_hex(&mut buf), Some(p.to_hex().as_bytes()));
        assert_eq!(p.write_hex(&mut [0; 31]), None);
        assert_eq!(
            Position::from_header(p.to_hex().as_bytes()),
            Some(p.clone())
        );
        assert_eq!(Position::from_header(&[0xff, 0xfe]), None);
        assert_eq!(Position::from_hex("abc"), None);
        assert_eq!(Position::from_hex("zz"), None);
    }

    #[test]
    fn op_codes_round_trip() {
        for op in [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate] {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code("x"), None);
    }
}
