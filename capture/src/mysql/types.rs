//! MySQL/MariaDB columns → [`SqlType`], and their values → [`Datum`]: from the binlog's
//! table map (streaming) and from `information_schema` plus the text protocol (snapshot). Both
//! paths produce the same [`SqlType`] for the same column, so a table's Avro schema does not
//! change at the snapshot/stream boundary.

use std::collections::HashMap;

use super::rows::Cell;
use mysql_async::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value;
use sluice_schemas::{pgtext, Column, Datum, SqlType, TableId, TableSchema};

/// How text bytes of a column are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    /// MySQL's `latin1` is Windows-1252.
    Latin1,
    Binary,
    /// Anything else: decoded as UTF-8 where valid, else an error.
    Other,
}

impl Charset {
    /// From a `CHARACTER_SET_NAME`.
    pub fn from_name(name: &str) -> Charset {
        match name {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "binary" => Charset::Binary,
            _ => Charset::Other,
        }
    }
}

/// Collation id → character set, read once from `information_schema.COLLATIONS` (the binlog
/// names collations by id).
#[derive(Debug, Default, Clone)]
pub struct Collations(pub HashMap<u16, Charset>);

impl Collations {
    fn charset(&self, id: u16) -> Charset {
        match id {
            63 => Charset::Binary,
            _ => self.0.get(&id).copied().unwrap_or(Charset::Other),
        }
    }
}

/// One column as the binlog describes it.
#[derive(Debug, Clone)]
pub struct BinlogColumn {
    pub name: String,
    /// The real type (ENUM/SET resolved from `MYSQL_TYPE_STRING`).
    pub ty: ColumnType,
    pub meta: Vec<u8>,
    pub unsigned: bool,
    pub charset: Charset,
    /// ENUM labels or SET members, in order.
    pub values: Vec<String>,
}

/// Why a table map cannot be turned into a table schema.
#[derive(Debug, thiserror::Error)]
#[error("table map of {table}: {message}")]
pub struct TableMapError {
    pub table: String,
    pub message: String,
}

/// Reads a table map (with `binlog_row_metadata = FULL`) into columns and key indexes.
pub fn table_map_columns(
    tme: &TableMapEvent<'_>,
    collations: &Collations,
) -> Result<(Vec<BinlogColumn>, Vec<usize>), TableMapError> {
    let table = format!("{}.{}", tme.database_name(), tme.table_name());
    let err = |message: String| TableMapError {
        table: table.clone(),
        message,
    };
    let n = tme.columns_count() as usize;
    let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta())
        .map_err(|e| err(format!("unreadable optional metadata: {e}")))?;
    let names: Vec<String> = extractor
        .iter_column_name()
        .map(|r| r.map(|c| c.name().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("unreadable column names: {e}")))?;
    if names.len() != n {
        return Err(err(
            "no column names in the table map: set binlog_row_metadata = FULL on the server".into(),
        ));
    }
    let key: Vec<usize> = extractor
        .iter_primary_key()
        .map(|r| r.map(|i| i as usize))
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("unreadable primary key: {e}")))?;
    let mut signedness = extractor.iter_signedness();
    let mut charsets = extractor.iter_charset();
    let mut enum_set_charsets = extractor.iter_enum_and_set_charset();
    let mut enum_values = Vec::new();
    let mut set_values = Vec::new();
    for field in tme.iter_optional_meta() {
        match field.map_err(|e| err(format!("unreadable optional metadata: {e}")))? {
            OptionalMetadataField::EnumStrValue(v) => {
                for e in v.iter_values() {
                    let e = e.map_err(|e| err(format!("unreadable enum values: {e}")))?;
                    enum_values.push(e.values().iter().map(|s| s.value().into_owned()).collect());
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for s in v.iter_values() {
                    let s = s.map_err(|e| err(format!("unreadable set values: {e}")))?;
                    set_values.push(s.values().iter().map(|s| s.value().into_owned()).collect());
                }
            }
            _ => {}
        }
    }
    let (mut enums, mut sets) = (enum_values.into_iter(), set_values.into_iter());
    let mut columns = Vec::with_capacity(n);
    for (i, name) in names.into_iter().enumerate() {
        let raw = tme
            .get_raw_column_type(i)
            .ok()
            .flatten()
            .ok_or_else(|| err(format!("column {name}: unknown column type")))?;
        let ty = tme
            .get_column_type(i)
            .ok()
            .flatten()
            .ok_or_else(|| err(format!("column {name}: unknown column type")))?;
        let meta = tme.get_column_metadata(i).unwrap_or_default().to_vec();
        let unsigned = raw.is_numeric_type() && signedness.next().unwrap_or(false);
        let (charset, values) = if ty.is_enum_or_set_type() {
            let cs = enum_set_charsets.next().transpose().ok().flatten();
            let values = if ty.is_enum_type() {
                enums.next()
            } else {
                sets.next()
            };
            (
                cs.map_or(Charset::Utf8, |c| collations.charset(c)),
                values.unwrap_or_default(),
            )
        } else if raw.is_character_type() {
            let cs = charsets.next().transpose().ok().flatten();
            (
                cs.map_or(Charset::Other, |c| collations.charset(c)),
                Vec::new(),
            )
        } else {
            (Charset::Binary, Vec::new())
        };
        columns.push(BinlogColumn {
            name,
            ty,
            meta,
            unsigned,
            charset,
            values,
        });
    }
    Ok((columns, key))
}

/// A column's `information_schema.COLUMN_DEFAULT` as the SQL text of a constant (what rows
/// that predate an `ADD COLUMN … DEFAULT` read, which the binlog never carries), or `None` for
/// no default, NULL, or an expression (`current_timestamp()`).
pub fn default_literal(column_default: Option<&str>) -> Option<String> {
    let d = column_default?.trim();
    if d.eq_ignore_ascii_case("NULL") {
        return None;
    }
    if let Some(inner) = d.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Some(inner.replace("''", "'"));
    }
    d.parse::<f64>().is_ok().then(|| d.to_string())
}

/// What the catalog adds to a table map about one column: its `DATA_TYPE` (MariaDB's UUID
/// and INET types look like `BINARY(16)` in the binlog) and its default (see
/// [`default_literal`]).
#[derive(Debug, Clone, Default)]
pub struct CatalogColumn {
    pub data_type: String,
    pub default: Option<String>,
}

/// Types the binlog cannot tell apart from binary strings.
fn refine(sql_type: SqlType, data_type: &str) -> SqlType {
    match (data_type, sql_type) {
        ("uuid", SqlType::Bytes) => SqlType::Uuid,
        ("inet6" | "inet4", SqlType::Bytes) => SqlType::Other("inet".into()),
        (_, t) => t,
    }
}

/// The schema of a table as a table map describes it, with what the catalog adds by column name.
pub fn table_schema(
    id: TableId,
    columns: &[BinlogColumn],
    key: &[usize],
    catalog: &HashMap<String, CatalogColumn>,
) -> TableSchema {
    TableSchema {
        id,
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let extra = catalog.get(&c.name);
                Column {
                    name: c.name.clone(),
                    sql_type: match extra {
                        Some(x) => refine(binlog_sql_type(c), &x.data_type),
                        None => binlog_sql_type(c),
                    },
                    key: key.contains(&i),
                    missing: extra.and_then(|x| x.default.clone()),
                }
            })
            .collect(),
    }
}

/// MariaDB stores a UUID's five groups in reverse order when it is an RFC 4122 UUID of
/// version 1–5 (time-ordered storage), else as written.
fn uuid_text(b: &[u8]) -> Result<String, String> {
    let b: [u8; 16] = b
        .try_into()
        .map_err(|_| format!("a UUID has 16 bytes, not {}", b.len()))?;
    let hex = |s: &[u8]| s.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Stored groups: [12 hex][4][4][4][8] → written 8-4-4-4-12.
    let swapped = [
        hex(&b[12..16]),
        hex(&b[10..12]),
        hex(&b[8..10]),
        hex(&b[6..8]),
        hex(&b[0..6]),
    ];
    let version = b[8] >> 4;
    let variant = b[6] >> 6;
    if variant == 0b10 && (1..=5).contains(&version) {
        return Ok(swapped.join("-"));
    }
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    ))
}

fn quoted_list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The [`SqlType`] of a binlog column.
pub fn binlog_sql_type(c: &BinlogColumn) -> SqlType {
    use ColumnType::*;
    match c.ty {
        MYSQL_TYPE_TINY => SqlType::Int16,
        MYSQL_TYPE_SHORT if c.unsigned => SqlType::Int32,
        MYSQL_TYPE_SHORT => SqlType::Int16,
        MYSQL_TYPE_INT24 => SqlType::Int32,
        MYSQL_TYPE_LONG if c.unsigned => SqlType::Int64,
        MYSQL_TYPE_LONG => SqlType::Int32,
        // BIGINT UNSIGNED reaches 18446744073709551615: exact as decimal(20,0).
        MYSQL_TYPE_LONGLONG if c.unsigned => SqlType::Decimal {
            precision: 20,
            scale: 0,
        },
        MYSQL_TYPE_LONGLONG => SqlType::Int64,
        MYSQL_TYPE_FLOAT => SqlType::Float32,
        MYSQL_TYPE_DOUBLE => SqlType::Float64,
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => SqlType::Decimal {
            precision: u32::from(c.meta.first().copied().unwrap_or(10)),
            scale: u32::from(c.meta.get(1).copied().unwrap_or(0)),
        },
        MYSQL_TYPE_YEAR => SqlType::Int32,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => SqlType::Date,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => SqlType::TimeSpan,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => SqlType::Timestamp,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => SqlType::TimestampTz,
        MYSQL_TYPE_JSON => SqlType::Json,
        MYSQL_TYPE_ENUM => SqlType::Enum(format!("enum({})", quoted_list(&c.values))),
        MYSQL_TYPE_SET => SqlType::Other(format!("set({})", quoted_list(&c.values))),
        MYSQL_TYPE_BIT => {
            let bits = usize::from(c.meta.get(1).copied().unwrap_or(0)) * 8
                + usize::from(c.meta.first().copied().unwrap_or(1));
            SqlType::Other(format!("bit({bits})"))
        }
        MYSQL_TYPE_GEOMETRY => SqlType::Bytes,
        _ if c.charset == Charset::Binary => SqlType::Bytes,
        _ => SqlType::Text,
    }
}

/// The [`SqlType`] of a column from `information_schema.COLUMNS`
/// (`DATA_TYPE`, `COLUMN_TYPE`, `CHARACTER_SET_NAME`, `NUMERIC_PRECISION`, `NUMERIC_SCALE`).
pub fn schema_sql_type(
    data_type: &str,
    column_type: &str,
    charset: Option<&str>,
    precision: Option<u64>,
    scale: Option<u64>,
) -> SqlType {
    let unsigned = column_type.contains("unsigned");
    let inner = || {
        column_type
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(inner, _)| inner.to_string())
            .unwrap_or_default()
    };
    match data_type {
        "tinyint" => SqlType::Int16,
        "smallint" if unsigned => SqlType::Int32,
        "smallint" => SqlType::Int16,
        "mediumint" => SqlType::Int32,
        "int" | "integer" if unsigned => SqlType::Int64,
        "int" | "integer" => SqlType::Int32,
        "bigint" if unsigned => SqlType::Decimal {
            precision: 20,
            scale: 0,
        },
        "bigint" => SqlType::Int64,
        "float" => SqlType::Float32,
        "double" | "real" => SqlType::Float64,
        "decimal" | "numeric" => SqlType::Decimal {
            precision: precision.unwrap_or(10) as u32,
            scale: scale.unwrap_or(0) as u32,
        },
        "year" => SqlType::Int32,
        "date" => SqlType::Date,
        "time" => SqlType::TimeSpan,
        "datetime" => SqlType::Timestamp,
        "timestamp" => SqlType::TimestampTz,
        "json" => SqlType::Json,
        "uuid" => SqlType::Uuid,
        "inet6" | "inet4" => SqlType::Other("inet".into()),
        "enum" => SqlType::Enum(format!("enum({})", inner())),
        "set" => SqlType::Other(format!("set({})", inner())),
        "bit" => SqlType::Other(format!("bit({})", inner())),
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => SqlType::Bytes,
        _ if charset.is_none() || charset == Some("binary") => SqlType::Bytes,
        _ => SqlType::Text,
    }
}

/// Windows-1252's 0x80–0x9F (MySQL's `latin1`); other bytes map to the same code point.
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

fn decode_text(bytes: Vec<u8>, charset: Charset) -> Result<String, String> {
    match charset {
        // ASCII is the same in both: the bytes are the string, with no copy.
        Charset::Latin1 if bytes.is_ascii() => {
            Ok(String::from_utf8(bytes).expect("ASCII is UTF-8"))
        }
        Charset::Latin1 => Ok(bytes
            .iter()
            .map(|&b| match b {
                0x80..=0x9F => CP1252_HIGH[usize::from(b - 0x80)],
                _ => char::from(b),
            })
            .collect()),
        _ => String::from_utf8(bytes)
            .map_err(|_| "text is not valid UTF-8 (unsupported character set)".to_string()),
    }
}

/// `seconds[.fraction]` (what mysql_common makes of a TIMESTAMP) as seconds and microseconds,
/// without allocating: it is on every TIMESTAMP value's path.
fn epoch_seconds_text(text: &[u8]) -> Option<(i64, i64)> {
    let (secs, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &[][..]),
    };
    // Twelve digits of seconds are far past any TIMESTAMP, and cannot overflow.
    if secs.is_empty()
        || secs.len() > 12
        || frac.len() > 6
        || !secs.iter().chain(frac).all(u8::is_ascii_digit)
    {
        return None;
    }
    let digits = |d: &[u8]| d.iter().fold(0i64, |n, b| n * 10 + i64::from(b - b'0'));
    let micros = digits(frac) * 10i64.pow(6 - frac.len() as u32);
    Some((digits(secs), micros))
}

fn bits_text(bytes: &[u8], bits: usize) -> String {
    let all: String = bytes.iter().map(|b| format!("{b:08b}")).collect();
    all[all.len().saturating_sub(bits)..].to_string()
}

fn set_text(bytes: &[u8], members: &[String]) -> String {
    let mut mask: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        mask |= u64::from(*b) << (8 * i);
    }
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn micros_of_day(h: u8, m: u8, s: u8, us: u32) -> i64 {
    ((i64::from(h) * 60 + i64::from(m)) * 60 + i64::from(s)) * 1_000_000 + i64::from(us)
}

/// The declared length of a fixed-length `BINARY(n)`/`CHAR(n)` column, from its table-map
/// metadata (same encoding as the server's `Field_string`).
fn fixed_length(c: &BinlogColumn) -> Option<usize> {
    if c.ty != ColumnType::MYSQL_TYPE_STRING {
        return None;
    }
    let (b0, b1) = (usize::from(*c.meta.first()?), usize::from(*c.meta.get(1)?));
    Some(if b0 & 0x30 != 0x30 {
        b1 | (((b0 & 0x30) ^ 0x30) << 4)
    } else {
        b1
    })
}

/// Converts a binlog value of a column of type `ty`.
/// A TIMESTAMP as seconds and microseconds since the epoch; MySQL's zero timestamp is no
/// instant.
fn timestamp_datum(secs: i64, micros: i64) -> Result<Datum, String> {
    if secs == 0 && micros == 0 {
        return Err("zero timestamp 0000-00-00 00:00:00 has no instant".into());
    }
    Ok(Datum::TimestampMicros(secs * 1_000_000 + micros))
}

/// A DECIMAL's text, checked against the column's scale.
fn decimal_datum(text: String, scale: u32) -> Result<Datum, String> {
    sluice_schemas::decimal::check(&text, scale).map_err(|e| e.to_string())?;
    Ok(Datum::Decimal(text))
}

pub fn binlog_datum(
    c: &BinlogColumn,
    ty: &SqlType,
    value: Option<Cell<'_>>,
) -> Result<Datum, String> {
    let value = match (value, ty) {
        (None, _) => return Ok(Datum::Null),
        (Some(Cell::Timestamp(secs, micros)), SqlType::TimestampTz) => {
            return timestamp_datum(secs, micros)
        }
        (Some(Cell::Decimal(text)), SqlType::Decimal { scale, .. }) => {
            return decimal_datum(text, *scale)
        }
        (Some(cell), _) => cell.into_binlog(),
    };
    let value = match value {
        BinlogValue::Value(v) => v,
        json @ BinlogValue::Jsonb(_) => {
            return match Value::try_from(json) {
                Ok(Value::Bytes(b)) => decode_text(b, Charset::Utf8).map(Datum::String),
                Ok(other) => Err(format!("JSON decoded to {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        BinlogValue::JsonDiff(_) => {
            return Err("partial JSON updates need binlog_row_value_options = ''".into())
        }
    };
    // The binlog drops the trailing zero bytes of BINARY(n) values: put them back.
    let value = match (value, fixed_length(c)) {
        (Value::Bytes(mut b), Some(n)) if c.charset == Charset::Binary && b.len() < n => {
            b.resize(n, 0);
            Value::Bytes(b)
        }
        (v, _) => v,
    };
    Ok(match (ty, value) {
        (_, Value::NULL) => Datum::Null,
        // mysql_common 0.37 reads a signed MEDIUMINT without sign extension (-8388608 arrives
        // as 8388608): extend it here.
        (SqlType::Int32, Value::Int(i))
            if c.ty == ColumnType::MYSQL_TYPE_INT24 && !c.unsigned && i >= 0x80_0000 =>
        {
            Datum::Int((i - 0x100_0000) as i32)
        }
        (SqlType::Int16 | SqlType::Int32, Value::Int(i)) => {
            Datum::Int(i32::try_from(i).map_err(|_| format!("{i} out of range"))?)
        }
        (SqlType::Int16 | SqlType::Int32, Value::UInt(u)) => {
            Datum::Int(i32::try_from(u).map_err(|_| format!("{u} out of range"))?)
        }
        (SqlType::Int32, Value::Bytes(year)) => {
            // YEAR arrives as its digits; mysql_common reads the stored 0 (year 0000) as 1900,
            // which is not a YEAR value (1901–2155 and 0000).
            let text = String::from_utf8_lossy(&year);
            match text.parse().map_err(|_| format!("year `{text}`"))? {
                1900 => Datum::Int(0),
                y => Datum::Int(y),
            }
        }
        (SqlType::Int64, Value::Int(i)) => Datum::Long(i),
        (SqlType::Int64, Value::UInt(u)) => {
            Datum::Long(i64::try_from(u).map_err(|_| format!("{u} out of range"))?)
        }
        (SqlType::Decimal { .. }, Value::UInt(u)) => Datum::Decimal(u.to_string()),
        (SqlType::Decimal { .. }, Value::Int(i)) => Datum::Decimal(i.to_string()),
        (SqlType::Decimal { scale, .. }, Value::Bytes(b)) => {
            let text = String::from_utf8(b)
                .map_err(|e| format!("decimal `{}`", String::from_utf8_lossy(e.as_bytes())))?;
            decimal_datum(text, *scale)?
        }
        (SqlType::Float32, Value::Float(f)) => Datum::Float(f),
        (SqlType::Float64, Value::Double(f)) => Datum::Double(f),
        (SqlType::Float64, Value::Float(f)) => Datum::Double(f64::from(f)),
        (SqlType::Date, Value::Date(y, m, d, ..)) => {
            if m == 0 || d == 0 {
                return Err(format!(
                    "zero date {y:04}-{m:02}-{d:02} has no calendar day"
                ));
            }
            Datum::Date(
                i32::try_from(pgtext::days_from_civil(
                    i64::from(y),
                    u32::from(m),
                    u32::from(d),
                ))
                .map_err(|_| "date out of range".to_string())?,
            )
        }
        (SqlType::Timestamp, Value::Date(y, mo, d, h, mi, s, us)) => {
            if mo == 0 || d == 0 {
                return Err(format!(
                    "zero date {y:04}-{mo:02}-{d:02} has no calendar day"
                ));
            }
            let days = pgtext::days_from_civil(i64::from(y), u32::from(mo), u32::from(d));
            Datum::TimestampMicros(days * 86_400_000_000 + micros_of_day(h, mi, s, us))
        }
        (SqlType::TimestampTz, Value::Bytes(b)) => {
            // TIMESTAMP arrives as seconds since the epoch, with `.micros` when fractional.
            let (secs, micros) = epoch_seconds_text(&b)
                .ok_or_else(|| format!("timestamp `{}`", String::from_utf8_lossy(&b)))?;
            timestamp_datum(secs, micros)?
        }
        (SqlType::TimestampTz, Value::Int(secs)) => timestamp_datum(secs, 0)?,
        (SqlType::TimeSpan, Value::Time(neg, days, h, m, s, us)) => {
            let t = i64::from(days) * 86_400_000_000 + micros_of_day(h, m, s, us);
            Datum::TimeMicros(if neg { -t } else { t })
        }
        (SqlType::Enum(_), Value::Int(i)) => {
            // 1-based label index; 0 is MySQL's '' for invalid values.
            let label = usize::try_from(i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| c.values.get(i));
            Datum::String(label.cloned().unwrap_or_default())
        }
        (SqlType::Other(name), Value::Bytes(b)) if name.starts_with("set(") => {
            Datum::String(set_text(&b, &c.values))
        }
        (SqlType::Other(name), Value::Bytes(b)) if name.starts_with("bit(") => {
            let bits = name[4..name.len() - 1].parse().unwrap_or(b.len() * 8);
            Datum::String(bits_text(&b, bits))
        }
        (SqlType::Bytes, Value::Bytes(b)) => Datum::Bytes(b),
        (SqlType::Uuid, Value::Bytes(b)) => Datum::Uuid(uuid_text(&b)?),
        (SqlType::Other(name), Value::Bytes(b)) if name == "inet" => match b.len() {
            16 => Datum::String(
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b.as_slice()).expect("16 bytes"))
                    .to_string(),
            ),
            4 => Datum::String(
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b.as_slice()).expect("4 bytes"))
                    .to_string(),
            ),
            n => return Err(format!("an INET value has 4 or 16 bytes, not {n}")),
        },
        (SqlType::Text | SqlType::Json, Value::Bytes(b)) => {
            Datum::String(decode_text(b, c.charset)?)
        }
        (ty, v) => return Err(format!("{v:?} does not fit {}", ty.canonical())),
    })
}

/// Converts a text-protocol value (snapshot `SELECT`, connection charset utf8mb4) of type `ty`.
/// BIT, SET and binary columns are selected as hex or numbers by the snapshot query, so this
/// sees their converted form.
pub fn text_datum(ty: &SqlType, value: Value) -> Result<Datum, String> {
    let bytes = match value {
        Value::NULL => return Ok(Datum::Null),
        Value::Bytes(b) => b,
        other => return Err(format!("unexpected {other:?} in a text result")),
    };
    if *ty == SqlType::Bytes {
        return Ok(Datum::Bytes(bytes));
    }
    let text = String::from_utf8(bytes).map_err(|_| "text is not valid UTF-8".to_string())?;
    Ok(match ty {
        SqlType::Int16 | SqlType::Int32 => Datum::Int(
            text.parse()
                .map_err(|_| format!("`{text}` is not an int"))?,
        ),
        SqlType::Int64 => Datum::Long(
            text.parse()
                .map_err(|_| format!("`{text}` is not an int"))?,
        ),
        SqlType::Decimal { scale, .. } => {
            sluice_schemas::decimal::check(&text, *scale).map_err(|e| e.to_string())?;
            Datum::Decimal(text)
        }
        SqlType::Float32 => Datum::Float(
            text.parse()
                .map_err(|_| format!("`{text}` is not a float"))?,
        ),
        SqlType::Float64 => Datum::Double(
            text.parse()
                .map_err(|_| format!("`{text}` is not a double"))?,
        ),
        SqlType::Date | SqlType::Timestamp => {
            if text.starts_with("0000-00-00") || text.contains("-00") {
                return Err(format!("zero date `{text}` has no calendar day"));
            }
            pgtext::parse(ty, &text).map_err(|e| e.to_string())?
        }
        SqlType::TimestampTz => {
            if text.starts_with("0000-00-00") {
                return Err(format!("zero timestamp `{text}` has no instant"));
            }
            // Selected in UTC (the snapshot session's time_zone is '+00:00').
            pgtext::parse(&SqlType::Timestamp, &text).map_err(|e| e.to_string())?
        }
        SqlType::Uuid => Datum::Uuid(text),
        SqlType::TimeSpan => {
            let (neg, body) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            let (hms, frac) = body.split_once('.').unwrap_or((body, ""));
            let mut parts = hms.split(':').map(str::parse::<i64>);
            let (Some(Ok(h)), Some(Ok(m)), Some(Ok(s))) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("`{text}` is not a time"));
            };
            let us: i64 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<6}")[..6]
                    .parse()
                    .map_err(|_| format!("`{text}` is not a time"))?
            };
            let t = ((h * 60 + m) * 60 + s) * 1_000_000 + us;
            Datum::TimeMicros(if neg { -t } else { t })
        }
        _ => Datum::String(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_text_is_read_to_the_microsecond() {
        assert_eq!(epoch_seconds_text(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            epoch_seconds_text(b"1700000000.5"),
            Some((1_700_000_000, 500_000))
        );
        assert_eq!(
            epoch_seconds_text(b"1700000000.000042"),
            Some((1_700_000_000, 42))
        );
        assert_eq!(epoch_seconds_text(b"0"), Some((0, 0)));
        // An empty fraction is no fraction, as before.
        assert_eq!(epoch_seconds_text(b"1."), Some((1, 0)));
        for bad in [&b""[..], b".5", b"17x", b"1.1234567", b"-1"] {
            assert_eq!(
                epoch_seconds_text(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn col(ty: ColumnType, unsigned: bool) -> BinlogColumn {
        BinlogColumn {
            name: "c".into(),
            ty,
            meta: vec![],
            unsigned,
            charset: Charset::Utf8,
            values: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn binlog_and_information_schema_agree_on_types() {
        use ColumnType::*;
        let cases = [
            (col(MYSQL_TYPE_TINY, true), "tinyint", "tinyint(3) unsigned"),
            (
                col(MYSQL_TYPE_SHORT, true),
                "smallint",
                "smallint(5) unsigned",
            ),
            (col(MYSQL_TYPE_SHORT, false), "smallint", "smallint(6)"),
            (col(MYSQL_TYPE_LONG, true), "int", "int(10) unsigned"),
            (col(MYSQL_TYPE_LONG, false), "int", "int(11)"),
            (
                col(MYSQL_TYPE_LONGLONG, true),
                "bigint",
                "bigint(20) unsigned",
            ),
            (col(MYSQL_TYPE_LONGLONG, false), "bigint", "bigint(20)"),
            (col(MYSQL_TYPE_DATETIME2, false), "datetime", "datetime(6)"),
            (
                col(MYSQL_TYPE_TIMESTAMP2, false),
                "timestamp",
                "timestamp(6)",
            ),
            (col(MYSQL_TYPE_ENUM, false), "enum", "enum('a','b','c')"),
            (col(MYSQL_TYPE_SET, false), "set", "set('a','b','c')"),
        ];
        for (c, data_type, column_type) in cases {
            assert_eq!(
                binlog_sql_type(&c),
                schema_sql_type(data_type, column_type, None, None, None),
                "{column_type}"
            );
        }
    }

    #[test]
    fn unsigned_maxima_and_sets_and_bits_convert_exactly() {
        use ColumnType::*;
        let big = col(MYSQL_TYPE_LONGLONG, true);
        let ty = binlog_sql_type(&big);
        assert_eq!(
            binlog_datum(
                &big,
                &ty,
                Some(Cell::Binlog(BinlogValue::Value(Value::UInt(u64::MAX))))
            )
            .unwrap(),
            Datum::Decimal("18446744073709551615".into())
        );
        let set = col(MYSQL_TYPE_SET, false);
        let ty = binlog_sql_type(&set);
        assert_eq!(
            binlog_datum(
                &set,
                &ty,
                Some(Cell::Binlog(BinlogValue::Value(Value::Bytes(vec![0b101]))))
            )
            .unwrap(),
            Datum::String("a,c".into())
        );
        let e = col(MYSQL_TYPE_ENUM, false);
        let ty = binlog_sql_type(&e);
        assert_eq!(
            binlog_datum(
                &e,
                &ty,
                Some(Cell::Binlog(BinlogValue::Value(Value::Int(2))))
            )
            .unwrap(),
            Datum::String("b".into())
        );
        assert_eq!(bits_text(&[0b0000_0101], 3), "101");
        assert_eq!(bits_text(&[0x01, 0x00], 10), "0100000000");
    }

    #[test]
    fn column_defaults_become_sql_constants() {
        assert_eq!(default_literal(Some("0")), Some("0".into()));
        assert_eq!(default_literal(Some("'it''s'")), Some("it's".into()));
        assert_eq!(default_literal(Some("NULL")), None);
        assert_eq!(default_literal(Some("current_timestamp()")), None);
        assert_eq!(default_literal(None), None);
    }

    #[test]
    fn latin1_is_windows_1252() {
        assert_eq!(
            decode_text(vec![0x80, b'a', 0xE9], Charset::Latin1).unwrap(),
            "€aé"
        );
        assert_eq!(
            decode_text(b"plain".to_vec(), Charset::Latin1).unwrap(),
            "plain"
        );
        assert!(decode_text(vec![0xFF], Charset::Utf8).is_err());
    }

    #[test]
    fn zero_dates_are_errors_not_garbage() {
        let d = col(ColumnType::MYSQL_TYPE_DATE, false);
        let e = binlog_datum(
            &d,
            &SqlType::Date,
            Some(Cell::Binlog(BinlogValue::Value(Value::Date(
                0, 0, 0, 0, 0, 0, 0,
            )))),
        )
        .unwrap_err();
        assert!(e.contains("zero date"), "{e}");
        assert!(text_datum(&SqlType::Date, Value::Bytes(b"0000-00-00".to_vec())).is_err());
    }
}
