//! Table schemas as the source catalog declares them, and their Avro types.

use std::fmt;

use serde_json::{json, Value as Json};

/// A source table: PostgreSQL `schema.table`, MySQL `database.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub namespace: String,
    pub name: String,
}

impl TableId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> TableId {
        TableId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table`; `None` without exactly one dot.
    pub fn parse(qualified: &str) -> Option<TableId> {
        let (ns, name) = qualified.split_once('.')?;
        if ns.is_empty() || name.is_empty() || name.contains('.') {
            return None;
        }
        Some(TableId::new(ns, name))
    }

    /// The topic carrying this table's changes: `<prefix>.<namespace>.<name>`.
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", self.namespace, self.name)
    }
}

/// A table's topic as it was named before topic names carried the source (`legacy_prefix`),
/// beside its name now (`prefix`, the source's). While the old one exists and the new one does
/// not, neither capture nor the router may start: capture would publish to the new topic while
/// the router's committed progress and the sink's positions point at the old one, and the old
/// one's unread tail would never be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyTopic {
    pub source: String,
    pub table: TableId,
    pub legacy_prefix: String,
    pub prefix: String,
}

impl LegacyTopic {
    pub fn old(&self) -> String {
        self.table.topic(&self.legacy_prefix)
    }

    pub fn new_name(&self) -> String {
        self.table.topic(&self.prefix)
    }

    /// The refusal, with both fixes, when `exists` says the old topic exists and the new does not.
    pub fn refusal(&self, exists: impl Fn(&str) -> bool) -> Option<String> {
        let (old, new) = (self.old(), self.new_name());
        (exists(&old) && !exists(&new)).then(|| {
            format!(
                "topic {old} exists, named as topics were before they carried the source \
                 name; source {source} would now publish {table} to {new}. To keep \
                 publishing where it did, set sources.{source}.topic_prefix = \"{legacy}\"; \
                 if {old} belongs to another source, set \
                 sources.{source}.topic_prefix = \"{prefix}\" to confirm the new name",
                source = self.source,
                table = self.table,
                legacy = self.legacy_prefix,
                prefix = self.prefix,
            )
        })
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
    }
}

/// The SQL type of a column, as far as Sluice needs to know it to choose an Avro type and to
/// write the value back into a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// A decimal with fixed precision and scale (`numeric(10,2)`).
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// A decimal without declared scale (`numeric`): carried as exact text.
    Numeric,
    Text,
    Bytes,
    Date,
    /// Time of day without time zone, microsecond precision.
    Time,
    /// MySQL/MariaDB `TIME`: elapsed time or a time of day, −838:59:59.999999 to
    /// 838:59:59.999999 in microseconds. Travels like `Time` (Debezium's `MicroTime`, which its
    /// MySQL connector also sends negative or past 24 h); PostgreSQL holds it as `interval`.
    TimeSpan,
    /// Timestamp without time zone, microsecond precision.
    Timestamp,
    /// Timestamp with time zone: an instant, carried in UTC.
    TimestampTz,
    Uuid,
    /// JSON text, kept exactly as written (PostgreSQL `json` keeps whitespace and key order).
    Json,
    /// JSON in PostgreSQL's normalized binary form (`jsonb`), carried as its text form.
    Jsonb,
    /// PostgreSQL `money`: a decimal with two fraction digits (capture reads it with
    /// `lc_monetary = C`), carried as Avro `decimal(19,2)`.
    Money,
    /// A time span as ISO 8601 duration text (`P1Y2M-3DT4H5M6.5S`): months, days and time stay
    /// apart, exactly as PostgreSQL keeps them (Avro's `duration` has only milliseconds).
    Interval,
    /// Time of day with its UTC offset, as text (`12:34:56.5+05:30`), offset kept.
    TimeTz,
    /// A label of the named enum type.
    Enum(String),
    /// A one-dimensional array whose elements (each nullable) have the inner type.
    Array(Box<SqlType>),
    /// Any other type, carried in its exact source text form; the name is the source's type
    /// name with its modifiers (`bit(8)`, `int4range`, `public.address`).
    Other(String),
}

impl SqlType {
    /// A stable, parseable name (`int16`, `decimal(10,2)`, `other:tsvector`), stored in each Avro
    /// field's `sluice.type` attribute so that consumers recover the exact SQL type.
    pub fn canonical(&self) -> String {
        match self {
            SqlType::Bool => "bool".into(),
            SqlType::Int16 => "int16".into(),
            SqlType::Int32 => "int32".into(),
            SqlType::Int64 => "int64".into(),
            SqlType::Float32 => "float32".into(),
            SqlType::Float64 => "float64".into(),
            SqlType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            SqlType::Numeric => "numeric".into(),
            SqlType::Text => "text".into(),
            SqlType::Bytes => "bytes".into(),
            SqlType::Date => "date".into(),
            SqlType::Time => "time".into(),
            SqlType::TimeSpan => "timespan".into(),
            SqlType::Timestamp => "timestamp".into(),
            SqlType::TimestampTz => "timestamptz".into(),
            SqlType::Uuid => "uuid".into(),
            SqlType::Json => "json".into(),
            SqlType::Jsonb => "jsonb".into(),
            SqlType::Money => "money".into(),
            SqlType::Interval => "interval".into(),
            SqlType::TimeTz => "timetz".into(),
            SqlType::Enum(name) => format!("enum:{name}"),
            SqlType::Array(elem) => format!("array:{}", elem.canonical()),
            SqlType::Other(name) => format!("other:{name}"),
        }
    }

    /// Whether values of this type are carried as their source text, [`crate::Datum::String`].
    pub fn is_text_form(&self) -> bool {
        matches!(
            self,
            SqlType::Numeric
                | SqlType::Text
                | SqlType::Json
                | SqlType::Jsonb
                | SqlType::Interval
                | SqlType::TimeTz
                | SqlType::Enum(_)
                | SqlType::Other(_)
        )
    }

    /// Parses [`SqlType::canonical`].
    pub fn parse(s: &str) -> Option<SqlType> {
        Some(match s {
            "bool" => SqlType::Bool,
            "int16" => SqlType::Int16,
            "int32" => SqlType::Int32,
            "int64" => SqlType::Int64,
            "float32" => SqlType::Float32,
            "float64" => SqlType::Float64,
            "numeric" => SqlType::Numeric,
            "text" => SqlType::Text,
            "bytes" => SqlType::Bytes,
            "date" => SqlType::Date,
            "time" => SqlType::Time,
            "timespan" => SqlType::TimeSpan,
            "timestamp" => SqlType::Timestamp,
            "timestamptz" => SqlType::TimestampTz,
            "uuid" => SqlType::Uuid,
            "json" => SqlType::Json,
            "jsonb" => SqlType::Jsonb,
            "money" => SqlType::Money,
            "interval" => SqlType::Interval,
            "timetz" => SqlType::TimeTz,
            other => {
                if let Some(name) = other.strip_prefix("other:") {
                    SqlType::Other(name.to_string())
                } else if let Some(name) = other.strip_prefix("enum:") {
                    SqlType::Enum(name.to_string())
                } else if let Some(elem) = other.strip_prefix("array:") {
                    match SqlType::parse(elem)? {
                        SqlType::Array(_) => return None,
                        elem => SqlType::Array(Box::new(elem)),
                    }
                } else {
                    let inner = other.strip_prefix("decimal(")?.strip_suffix(')')?;
                    let (p, s) = inner.split_once(',')?;
                    SqlType::Decimal {
                        precision: p.trim().parse().ok()?,
                        scale: s.trim().parse().ok()?,
                    }
                }
            }
        })
    }

    /// The Avro type of a non-null value of this SQL type, with Debezium's semantic names
    /// (`connect.name`) where Debezium has one, so Debezium consumers recognise the values.
    pub fn avro_type(&self) -> Json {
        match self {
            SqlType::Bool => json!("boolean"),
            SqlType::Int16 => json!({"type": "int", "connect.type": "int16"}),
            SqlType::Int32 => json!("int"),
            SqlType::Int64 => json!("long"),
            SqlType::Float32 => json!("float"),
            SqlType::Float64 => json!("double"),
            SqlType::Decimal { precision, scale } => json!({
                "type": "bytes",
                "logicalType": "decimal",
                "precision": precision,
                "scale": scale,
                "connect.name": "org.apache.kafka.connect.data.Decimal",
                "connect.parameters": {"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()},
            }),
            SqlType::Numeric => json!({"type": "string", "connect.name": "io.sluice.data.Numeric"}),
            SqlType::Text => json!("string"),
            SqlType::Bytes => json!("bytes"),
            SqlType::Date => {
                json!({"type": "int", "logicalType": "date", "connect.name": "io.debezium.time.Date"})
            }
            SqlType::Time | SqlType::TimeSpan => json!({
                "type": "long", "logicalType": "time-micros", "connect.name": "io.debezium.time.MicroTime"
            }),
            SqlType::Timestamp => json!({
                "type": "long", "logicalType": "timestamp-micros",
                "connect.name": "io.debezium.time.MicroTimestamp"
            }),
            SqlType::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
            SqlType::Uuid => json!({
                "type": "string", "logicalType": "uuid", "connect.name": "io.debezium.data.Uuid"
            }),
            SqlType::Json | SqlType::Jsonb => {
                json!({"type": "string", "connect.name": "io.debezium.data.Json"})
            }
            SqlType::Money => SqlType::Decimal {
                precision: 19,
                scale: 2,
            }
            .avro_type(),
            SqlType::Interval => {
                json!({"type": "string", "connect.name": "io.debezium.time.Interval"})
            }
            SqlType::TimeTz => {
                json!({"type": "string", "connect.name": "io.debezium.time.ZonedTime"})
            }
            SqlType::Enum(_) => json!({"type": "string", "connect.name": "io.debezium.data.Enum"}),
            SqlType::Array(elem) => json!({"type": "array", "items": ["null", elem.avro_type()]}),
            SqlType::Other(name) if name == "xml" => {
                json!({"type": "string", "connect.name": "io.debezium.data.Xml"})
            }
            SqlType::Other(_) => json!("string"),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column's name at the source, exactly.
    pub name: String,
    pub sql_type: SqlType,
    /// Part of the primary key (or replica identity).
    pub key: bool,
    /// The value rows that existed before this column was added read for it (PostgreSQL's
    /// `attmissingval`), as SQL text: those rows never travel as changes, so a sink that adds
    /// the column must fill them with this.
    pub missing: Option<String>,
}

/// A table's columns as declared by the source catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// Whether the table has a key: a sink can upsert and delete its rows one by one.
    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.key)
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.key)
    }

    /// The positions of the key columns.
    pub fn key_indices(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Makes `name` a valid Avro name: `[A-Za-z_][A-Za-z0-9_]*`, other characters replaced by `_`.
pub fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_type_names_parse_back() {
        for t in [
            SqlType::Bool,
            SqlType::Int16,
            SqlType::Int32,
            SqlType::Int64,
            SqlType::Float32,
            SqlType::Float64,
            SqlType::Decimal {
                precision: 12,
                scale: 3,
            },
            SqlType::Numeric,
            SqlType::Text,
            SqlType::Bytes,
            SqlType::Date,
            SqlType::Time,
            SqlType::Timestamp,
            SqlType::TimestampTz,
            SqlType::Uuid,
            SqlType::Json,
            SqlType::Jsonb,
            SqlType::Money,
            SqlType::Interval,
            SqlType::TimeTz,
            SqlType::Enum("public.mood".into()),
            SqlType::Array(Box::new(SqlType::Decimal {
                precision: 5,
                scale: 1,
            })),
            SqlType::Array(Box::new(SqlType::Other("bit(8)".into()))),
            SqlType::Other("tsvector".into()),
        ] {
            assert_eq!(SqlType::parse(&t.canonical()), Some(t));
        }
        assert_eq!(SqlType::parse("decimal(x,2)"), None);
        assert_eq!(SqlType::parse("varchar"), None);
        assert_eq!(SqlType::parse("array:array:int32"), None);
        assert_eq!(SqlType::parse("array:varchar"), None);
    }

    #[test]
    fn avro_names_are_sanitized() {
        assert_eq!(avro_name("order id"), "order_id");
        assert_eq!(avro_name("1st"), "_1st");
        assert_eq!(avro_name("ok_name9"), "ok_name9");
        assert_eq!(avro_name(""), "_");
    }

    #[test]
    fn table_ids_parse_and_name_topics() {
        let t = TableId::parse("public.orders").unwrap();
        assert_eq!(t.topic("sluice"), "sluice.public.orders");
        assert_eq!(TableId::parse("orders"), None);
        assert_eq!(TableId::parse("a.b.c"), None);
    }
}
