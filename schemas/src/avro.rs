//! The Debezium-compatible Avro envelope: schema generation, a fast binary encoder for capture,
//! Avro single-object framing, and decoding back into rows for the router.
//!
//! Layout of an event value (Debezium's envelope, plus one Sluice field that Debezium
//! consumers ignore):
//!
//! ```text
//! Envelope { before: [null, Value], after: [null, Value], source: Source, op: string,
//!            ts_ms: [null, long], transaction: [null, block],
//!            sluice_unchanged: array<string> }   // columns whose value was not sent
//! ```
//!
//! Each field of `Value` carries `sluice.type` (the canonical [`SqlType`]), `sluice.key` and,
//! when the Avro name had to be sanitized, `sluice.column` (the exact source column name), so the
//! schema alone describes the table.

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::Arc;

use apache_avro::rabin::Rabin;
use apache_avro::schema::{RecordSchema, Schema};
#[cfg(test)]
use apache_avro::types::Value as AvroValue;
use serde_json::{json, Value as Json};

use crate::avro_read::{Cursor, Node};
use crate::decimal::text_to_unscaled;
#[cfg(test)]
use crate::decimal::unscaled_to_text;
use crate::event::{ChangeEvent, Datum, Op, RowChange};
use crate::table::{avro_name, Column, SqlType, TableId, TableSchema};

/// First two bytes of an Avro single-object encoded message.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// The Sluice version written into `source.version`.
pub const SLUICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors encoding or decoding Avro.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("invalid Avro schema for {subject}: {source}")]
    Schema {
        subject: String,
        #[source]
        source: apache_avro::Error,
    },
    #[error("column {column} of {table}: {message}")]
    Value {
        table: String,
        column: String,
        message: String,
    },
    #[error(
        "message is not Avro single-object encoded (expected C3 01 and an 8-byte fingerprint)"
    )]
    NotSingleObject,
    #[error("undecodable Avro datum: {0}")]
    Datum(#[source] apache_avro::Error),
    #[error("Avro datum does not have the Sluice envelope shape: {0}")]
    Shape(String),
}

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, little-endian as in
/// single-object encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchemaFingerprint(pub [u8; 8]);

impl SchemaFingerprint {
    pub fn of(schema: &Schema) -> SchemaFingerprint {
        let fp = schema.fingerprint::<Rabin>();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&fp.bytes[..8]);
        SchemaFingerprint(bytes)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<SchemaFingerprint> {
        let bytes = crate::event::Position::from_hex(hex)?.0;
        Some(SchemaFingerprint(bytes.try_into().ok()?))
    }
}

/// Prepends the single-object header to an encoded datum.
pub fn frame(fingerprint: SchemaFingerprint, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + datum.len());
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint.0);
    out.extend_from_slice(datum);
    out
}

/// Splits a single-object encoded message into its fingerprint and datum.
pub fn unframe(message: &[u8]) -> Result<(SchemaFingerprint, &[u8]), AvroError> {
    if message.len() < 10 || message[..2] != SINGLE_OBJECT_MAGIC {
        return Err(AvroError::NotSingleObject);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&message[2..10]);
    Ok((SchemaFingerprint(fp), &message[10..]))
}

/// The connector whose `source` block the envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    Postgres,
    Mysql,
}

impl Connector {
    pub fn name(self) -> &'static str {
        match self {
            Connector::Postgres => "postgresql",
            Connector::Mysql => "mysql",
        }
    }

    /// The `source` block's schema, as `schemas/avro/` defines it (the contract file is the
    /// single source of truth).
    pub fn source_schema(self) -> Json {
        let text = match self {
            Connector::Postgres => {
                include_str!("../avro/io.debezium.connector.postgresql.Source.avsc")
            }
            Connector::Mysql => include_str!("../avro/io.debezium.connector.mysql.Source.avsc"),
        };
        serde_json::from_str(text).expect("the source .avsc in schemas/avro is valid JSON")
    }
}

/// Debezium's `transaction` block (`event.block`), as `schemas/avro/event.block.avsc` defines it.
pub fn transaction_block_schema() -> Json {
    serde_json::from_str(include_str!("../avro/event.block.avsc"))
        .expect("schemas/avro/event.block.avsc is valid JSON")
}

/// The Avro field names of a table's columns: sanitized and made unique.
pub fn field_names(columns: &[Column]) -> Vec<String> {
    let mut seen = HashSet::new();
    columns
        .iter()
        .map(|c| {
            let base = avro_name(&c.name);
            let mut name = base.clone();
            let mut n = 2;
            while !seen.insert(name.clone()) {
                name = format!("{base}_{n}");
                n += 1;
            }
            name
        })
        .collect()
}

fn column_field(column: &Column, field_name: &str) -> Json {
    let ty = column.sql_type.avro_type();
    let mut field = if column.key {
        json!({"name": field_name, "type": ty})
    } else {
        json!({"name": field_name, "type": ["null", ty], "default": null})
    };
    let obj = field.as_object_mut().expect("field is an object");
    obj.insert("sluice.type".into(), json!(column.sql_type.canonical()));
    if column.key {
        obj.insert("sluice.key".into(), json!(true));
    }
    if field_name != column.name {
        obj.insert("sluice.column".into(), json!(column.name));
    }
    if let Some(missing) = &column.missing {
        obj.insert("sluice.missing".into(), json!(missing));
    }
    field
}

/// The Avro namespace of a table's records: `<prefix>.<namespace>.<table>`, sanitized.
fn record_namespace(prefix: &str, id: &TableId) -> String {
    [prefix, &id.namespace, &id.name]
        .iter()
        .flat_map(|part| part.split('.'))
        .map(avro_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// Key and value schemas of one table version, with the fast encoder capture uses.
#[derive(Debug)]
pub struct EnvelopeCodec {
    pub table: Arc<TableSchema>,
    pub connector: Connector,
    pub key_schema_json: String,
    pub value_schema_json: String,
    pub key_fingerprint: SchemaFingerprint,
    pub value_fingerprint: SchemaFingerprint,
    /// Source name written into `source.name`.
    source_name: String,
}

impl EnvelopeCodec {
    /// Builds the schemas of `table` for topics named with `prefix`.
    pub fn new(
        prefix: &str,
        source_name: &str,
        connector: Connector,
        table: Arc<TableSchema>,
    ) -> Result<EnvelopeCodec, AvroError> {
        let ns = record_namespace(prefix, &table.id);
        let names = field_names(&table.columns);
        let value_fields: Vec<Json> = table
            .columns
            .iter()
            .zip(&names)
            .map(|(c, n)| column_field(c, n))
            .collect();
        let key_fields: Vec<Json> = table
            .columns
            .iter()
            .zip(&names)
            .filter(|(c, _)| c.key)
            .map(|(c, n)| column_field(c, n))
            .collect();
        let key = json!({
            "type": "record", "name": "Key", "namespace": ns, "fields": key_fields,
            "connect.name": format!("{ns}.Key"),
        });
        let value_record = json!({
            "type": "record", "name": "Value", "namespace": ns, "fields": value_fields,
            "connect.name": format!("{ns}.Value"),
        });
        let envelope = json!({
            "type": "record",
            "name": "Envelope",
            "namespace": ns,
            "fields": [
                {"name": "before", "type": ["null", value_record], "default": null},
                {"name": "after", "type": ["null", "Value"], "default": null},
                {"name": "source", "type": connector.source_schema()},
                {"name": "op", "type": "string"},
                {"name": "ts_ms", "type": ["null", "long"], "default": null},
                {"name": "ts_us", "type": ["null", "long"], "default": null},
                {"name": "ts_ns", "type": ["null", "long"], "default": null},
                {"name": "transaction", "type": ["null", transaction_block_schema()], "default": null},
                {"name": "sluice_unchanged", "type": {"type": "array", "items": "string"}, "default": []}
            ],
            "connect.name": format!("{ns}.Envelope"),
        });
        let key_schema_json = key.to_string();
        let value_schema_json = envelope.to_string();
        let parse = |json: &str, subject: &str| {
            Schema::parse_str(json).map_err(|source| AvroError::Schema {
                subject: subject.to_string(),
                source,
            })
        };
        let key_schema = parse(&key_schema_json, &format!("{}-key", table.id))?;
        let value_schema = parse(&value_schema_json, &format!("{}-value", table.id))?;
        Ok(EnvelopeCodec {
            key_fingerprint: SchemaFingerprint::of(&key_schema),
            value_fingerprint: SchemaFingerprint::of(&value_schema),
            key_schema_json,
            value_schema_json,
            table,
            connector,
            source_name: source_name.to_string(),
        })
    }

    /// The single-object framing of keys and values: magic and schema fingerprint.
    pub fn single_object_headers(&self) -> (Vec<u8>, Vec<u8>) {
        let header = |fp: SchemaFingerprint| {
            let mut h = SINGLE_OBJECT_MAGIC.to_vec();
            h.extend_from_slice(&fp.0);
            h
        };
        (header(self.key_fingerprint), header(self.value_fingerprint))
    }

    /// Encodes the key record of `event` (its key columns) after `header` (the framing: see
    /// [`EnvelopeCodec::single_object_headers`], or Confluent's).
    pub fn encode_key(
        &self,
        event: &ChangeEvent,
        header: &[u8],
    ) -> Result<Option<Vec<u8>>, AvroError> {
        let Some(image) = event.after.as_ref().or(event.before.as_ref()) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(header);
        for (column, datum) in self.table.columns.iter().zip(image) {
            if column.key {
                self.write_datum(&mut out, column, datum, &mut Vec::new())?;
            }
        }
        Ok(Some(out))
    }

    /// Encodes `event` as the envelope after `header` (the framing); `now_us` is when capture
    /// processed it (the envelope's `ts_ms`/`ts_us`/`ts_ns`), µs since the epoch.
    pub fn encode_value(
        &self,
        event: &ChangeEvent,
        now_us: i64,
        header: &[u8],
    ) -> Result<Vec<u8>, AvroError> {
        // Room for a typical envelope (a 200-byte row plus the source and transaction blocks
        // is about 400), so it is not grown and copied on the way.
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(header);
        let mut unchanged: Vec<&str> = Vec::new();
        for image in [&event.before, &event.after] {
            match image {
                None => write_long(&mut out, 0),
                Some(row) => {
                    write_long(&mut out, 1);
                    if row.len() != self.table.columns.len() {
                        return Err(AvroError::Shape(format!(
                            "row of {} has {} values for {} columns",
                            self.table.id,
                            row.len(),
                            self.table.columns.len()
                        )));
                    }
                    // Unchanged markers only count in the after-image.
                    let mut sink = Vec::new();
                    let marks = if std::ptr::eq(image, &event.after) {
                        &mut unchanged
                    } else {
                        &mut sink
                    };
                    for (column, datum) in self.table.columns.iter().zip(row) {
                        self.write_datum(&mut out, column, datum, marks)?;
                    }
                }
            }
        }
        // source
        let s = &event.source;
        write_str(&mut out, SLUICE_VERSION);
        write_str(&mut out, self.connector.name());
        write_str(&mut out, &self.source_name);
        write_long(&mut out, s.ts_us.div_euclid(1000));
        write_long(&mut out, 0); // snapshot: string branch
        write_str(&mut out, if s.snapshot { "true" } else { "false" });
        write_str(&mut out, &s.db);
        write_opt_str(&mut out, s.sequence.as_deref());
        write_opt_long(&mut out, Some(s.ts_us));
        write_opt_long(&mut out, s.ts_us.checked_mul(1000));
        match self.connector {
            Connector::Postgres => {
                write_str(&mut out, &self.table.id.namespace);
                write_str(&mut out, &self.table.id.name);
                write_opt_long(&mut out, s.tx_id);
                write_opt_long(&mut out, s.lsn);
                write_opt_long(&mut out, None); // xmin
            }
            Connector::Mysql => {
                let b = s.binlog.as_ref().ok_or_else(|| {
                    AvroError::Shape(format!(
                        "a MySQL event of {} has no binlog position",
                        self.table.id
                    ))
                })?;
                write_opt_str(&mut out, Some(&self.table.id.name));
                write_long(&mut out, b.server_id);
                write_opt_str(&mut out, b.gtid.as_deref());
                write_str(&mut out, &b.file);
                write_long(&mut out, b.pos);
                write_long(&mut out, i64::from(b.row));
                write_opt_long(&mut out, None); // thread
                write_opt_str(&mut out, None); // query
            }
        }
        write_str(&mut out, event.op.code());
        write_opt_long(&mut out, Some(now_us.div_euclid(1000)));
        write_opt_long(&mut out, Some(now_us));
        write_opt_long(&mut out, now_us.checked_mul(1000));
        match &event.transaction {
            None => write_long(&mut out, 0),
            Some(tx) => {
                write_long(&mut out, 1);
                write_str(&mut out, &tx.id);
                write_long(&mut out, tx.total_order);
                write_long(&mut out, tx.data_collection_order);
            }
        }
        if !unchanged.is_empty() {
            write_long(&mut out, unchanged.len() as i64);
            for name in unchanged {
                write_str(&mut out, name);
            }
        }
        write_long(&mut out, 0);
        Ok(out)
    }

    fn write_datum<'a>(
        &self,
        out: &mut Vec<u8>,
        column: &'a Column,
        datum: &Datum,
        unchanged: &mut Vec<&'a str>,
    ) -> Result<(), AvroError> {
        let err = |message: String| AvroError::Value {
            table: self.table.id.to_string(),
            column: column.name.clone(),
            message,
        };
        match datum {
            Datum::Null | Datum::Unchanged if column.key => {
                return Err(err("a key column cannot be null or unchanged".into()))
            }
            Datum::Null => {
                write_long(out, 0);
                return Ok(());
            }
            Datum::Unchanged => {
                unchanged.push(&column.name);
                write_long(out, 0);
                return Ok(());
            }
            _ if !column.key => write_long(out, 1),
            _ => {}
        }
        write_value(out, &column.sql_type, datum).map_err(err)
    }
}

/// Writes a non-null value of type `ty` (no union index).
fn write_value(out: &mut Vec<u8>, ty: &SqlType, datum: &Datum) -> Result<(), String> {
    match (ty, datum) {
        (SqlType::Bool, Datum::Bool(b)) => out.push(u8::from(*b)),
        (SqlType::Int16 | SqlType::Int32, Datum::Int(i)) => write_long(out, i64::from(*i)),
        (SqlType::Int64, Datum::Long(i)) => write_long(out, *i),
        (SqlType::Float32, Datum::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (SqlType::Float64, Datum::Double(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (SqlType::Decimal { scale, .. }, Datum::Decimal(text)) => {
            write_bytes(out, &text_to_unscaled(text, *scale).map_err(|e| e.0)?);
        }
        (SqlType::Money, Datum::Decimal(text)) => {
            write_bytes(out, &text_to_unscaled(text, 2).map_err(|e| e.0)?);
        }
        (ty, Datum::String(s)) if ty.is_text_form() => write_str(out, s),
        (SqlType::Uuid, Datum::Uuid(s)) => write_str(out, s),
        (SqlType::Bytes, Datum::Bytes(b)) => write_bytes(out, b),
        (SqlType::Date, Datum::Date(d)) => write_long(out, i64::from(*d)),
        (SqlType::Time | SqlType::TimeSpan, Datum::TimeMicros(t)) => write_long(out, *t),
        (SqlType::Timestamp | SqlType::TimestampTz, Datum::TimestampMicros(t)) => {
            write_long(out, *t);
        }
        (SqlType::Array(elem), Datum::Array(items)) => {
            // One block with all items, then the empty block that ends the array.
            if !items.is_empty() {
                write_long(out, items.len() as i64);
                for item in items {
                    match item {
                        Datum::Null => write_long(out, 0),
                        item => {
                            write_long(out, 1);
                            write_value(out, elem, item)?;
                        }
                    }
                }
            }
            write_long(out, 0);
        }
        (ty, d) => return Err(format!("value {d:?} does not fit type {}", ty.canonical())),
    }
    Ok(())
}

pub(crate) fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => write_long(out, 0),
        Some(s) => {
            write_long(out, 1);
            write_str(out, s);
        }
    }
}

fn write_opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => write_long(out, 0),
        Some(v) => {
            write_long(out, 1);
            write_long(out, v);
        }
    }
}

/// One decoded change event, as the router needs it: the row change (of
/// [`EnvelopeDecoder::table`]) and its commit time at the source.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub row: RowChange,
    /// Commit time at the source, milliseconds since the epoch.
    pub source_ts_ms: i64,
}

crate::carries_row_change!(DecodedEvent);

/// Decodes envelopes written with one value schema.
#[derive(Debug)]
pub struct EnvelopeDecoder {
    /// For the reference decoder in tests.
    #[cfg(test)]
    schema: Schema,
    /// The schema's fields, compiled for reading ([`crate::avro_read`]).
    fields: Vec<(Field, Node)>,
    pub table: Arc<TableSchema>,
}

/// What a top-level envelope field is to the decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Op,
    Before,
    After,
    Source,
    Unchanged,
    Other,
}

impl EnvelopeDecoder {
    /// Parses an envelope value schema and recovers the table it describes.
    pub fn from_schema_json(json: &str) -> Result<EnvelopeDecoder, AvroError> {
        let schema = Schema::parse_str(json).map_err(|source| AvroError::Schema {
            subject: "envelope".into(),
            source,
        })?;
        let shape = |m: &str| AvroError::Shape(m.to_string());
        let Schema::Record(RecordSchema { fields, .. }) = &schema else {
            return Err(shape("the value schema is not a record"));
        };
        // The row record is defined inline in `before`; `after` refers to it by name.
        let before = fields
            .iter()
            .find(|f| f.name == "before")
            .ok_or_else(|| shape("no `before` field"))?;
        let Schema::Union(u) = &before.schema else {
            return Err(shape("`before` is not a union"));
        };
        let Some(Schema::Record(value)) =
            u.variants().iter().find(|v| matches!(v, Schema::Record(_)))
        else {
            return Err(shape("`before` has no record branch"));
        };
        if !fields
            .iter()
            .any(|f| f.name == "source" && matches!(f.schema, Schema::Record(_)))
        {
            return Err(shape("no `source` record"));
        }
        let mut columns = Vec::with_capacity(value.fields.len());
        for f in &value.fields {
            let attr = |k: &str| f.custom_attributes.get(k);
            let sql_type = attr("sluice.type")
                .and_then(|v| v.as_str())
                .and_then(SqlType::parse)
                .ok_or_else(|| {
                    AvroError::Shape(format!("field `{}` has no valid sluice.type", f.name))
                })?;
            columns.push(Column {
                name: attr("sluice.column")
                    .and_then(|v| v.as_str())
                    .unwrap_or(&f.name)
                    .to_string(),
                sql_type,
                key: attr("sluice.key")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
                missing: attr("sluice.missing")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            });
        }
        // The table id is the record namespace's last two parts.
        let ns = value.name.namespace.clone().unwrap_or_default();
        let mut parts = ns.rsplit('.');
        let name = parts.next().unwrap_or_default().to_string();
        let namespace = parts.next().unwrap_or_default().to_string();
        let Node::Record(compiled) = Node::compile(&schema).map_err(AvroError::Shape)? else {
            return Err(shape("the value schema is not a record"));
        };
        let fields = compiled
            .into_iter()
            .map(|(name, node)| {
                let field = match name.as_str() {
                    "op" => Field::Op,
                    "before" => Field::Before,
                    "after" => Field::After,
                    "source" => Field::Source,
                    "sluice_unchanged" => Field::Unchanged,
                    _ => Field::Other,
                };
                (field, node)
            })
            .collect();
        Ok(EnvelopeDecoder {
            #[cfg(test)]
            schema,
            fields,
            table: Arc::new(TableSchema {
                id: TableId::new(namespace, name),
                columns,
            }),
        })
    }

    /// Decodes one datum (without its single-object header).
    pub fn decode(&self, datum: &[u8]) -> Result<DecodedEvent, AvroError> {
        let mut c = Cursor::new(datum);
        let read = |e: String| AvroError::Shape(e);
        let (mut op, mut before, mut after, mut source_ts_ms) = (None, None, None, 0);
        let mut unchanged: Vec<&str> = Vec::new();
        for (field, node) in &self.fields {
            match field {
                Field::Op => {
                    let code = match node {
                        Node::String => c.string().map_err(read)?,
                        _ => return Err(AvroError::Shape("`op` is not a string".into())),
                    };
                    op = Some(
                        Op::from_code(code)
                            .ok_or_else(|| AvroError::Shape(format!("unknown op `{code}`")))?,
                    );
                }
                Field::Before => before = self.read_row(&mut c, node)?,
                Field::After => after = self.read_row(&mut c, node)?,
                Field::Source => match node {
                    Node::Record(fields) => {
                        for (name, f) in fields {
                            match f {
                                Node::Long if name == "ts_ms" => {
                                    source_ts_ms = c.long().map_err(read)?;
                                }
                                f => c.skip(f).map_err(read)?,
                            }
                        }
                    }
                    other => c.skip(other).map_err(read)?,
                },
                Field::Unchanged => {
                    let mut node = node;
                    if let Node::Union(variants) = node {
                        node = c.branch(variants).map_err(read)?;
                    }
                    match node {
                        Node::Array(items) if matches!(**items, Node::String) => c
                            .blocks(|c| {
                                unchanged.push(c.string()?);
                                Ok(())
                            })
                            .map_err(read)?,
                        other => c.skip(other).map_err(read)?,
                    }
                }
                Field::Other => c.skip(node).map_err(read)?,
            }
        }
        let op = op.ok_or_else(|| AvroError::Shape("no `op`".into()))?;
        if !unchanged.is_empty() {
            if let Some(row) = after.as_mut() {
                for (col, datum) in self.table.columns.iter().zip(row.iter_mut()) {
                    if unchanged.contains(&col.name.as_str()) {
                        *datum = Datum::Unchanged;
                    }
                }
            }
        }
        Ok(DecodedEvent {
            row: RowChange {
                table: self.table.clone(),
                op,
                before,
                after,
            },
            source_ts_ms,
        })
    }

    /// A row image: a union of null and the row record (or the record itself).
    fn read_row(&self, c: &mut Cursor<'_>, node: &Node) -> Result<Option<Vec<Datum>>, AvroError> {
        let read = |e: String| AvroError::Shape(e);
        let mut node = node;
        if let Node::Union(variants) = node {
            node = c.branch(variants).map_err(read)?;
        }
        match node {
            Node::Null => Ok(None),
            Node::Record(cols) => {
                if cols.len() != self.table.columns.len() {
                    return Err(AvroError::Shape("row width differs from its schema".into()));
                }
                let mut row = Vec::with_capacity(cols.len());
                for ((name, f), col) in cols.iter().zip(&self.table.columns) {
                    row.push(
                        c.datum(f, &col.sql_type)
                            .map_err(|e| AvroError::Shape(format!("field `{name}`: {e}")))?,
                    );
                }
                Ok(Some(row))
            }
            other => Err(AvroError::Shape(format!("row image is {other:?}"))),
        }
    }

    /// The same through apache-avro's generic `Value`s: the reference [`Self::decode`] is
    /// checked against.
    #[cfg(test)]
    fn decode_generic(&self, mut datum: &[u8]) -> Result<DecodedEvent, AvroError> {
        let value = apache_avro::from_avro_datum(&self.schema, &mut datum, None)
            .map_err(AvroError::Datum)?;
        let AvroValue::Record(fields) = value else {
            return Err(AvroError::Shape("datum is not a record".into()));
        };
        let mut fields: BTreeMap<String, AvroValue> = fields.into_iter().collect();
        let Some(AvroValue::String(op_code)) = fields.remove("op") else {
            return Err(AvroError::Shape("no `op`".into()));
        };
        let op = Op::from_code(&op_code)
            .ok_or_else(|| AvroError::Shape(format!("unknown op `{op_code}`")))?;
        let source_ts_ms = match fields.remove("source") {
            Some(AvroValue::Record(src)) => src
                .into_iter()
                .find(|(k, _)| k == "ts_ms")
                .and_then(|(_, v)| match v {
                    AvroValue::Long(l) => Some(l),
                    _ => None,
                })
                .unwrap_or(0),
            _ => 0,
        };
        let unchanged: Vec<String> = match fields.remove("sluice_unchanged") {
            Some(AvroValue::Array(items)) => items
                .into_iter()
                .filter_map(|v| match v {
                    AvroValue::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let before = self.row(fields.remove("before"))?;
        let mut after = self.row(fields.remove("after"))?;
        if let Some(row) = after.as_mut() {
            for (col, datum) in self.table.columns.iter().zip(row.iter_mut()) {
                if unchanged.iter().any(|u| u == &col.name) {
                    *datum = Datum::Unchanged;
                }
            }
        }
        Ok(DecodedEvent {
            row: RowChange {
                table: self.table.clone(),
                op,
                before,
                after,
            },
            source_ts_ms,
        })
    }

    #[cfg(test)]
    fn row(&self, v: Option<AvroValue>) -> Result<Option<Vec<Datum>>, AvroError> {
        let v = match v {
            Some(AvroValue::Union(_, inner)) => *inner,
            Some(other) => other,
            None => return Ok(None),
        };
        match v {
            AvroValue::Null => Ok(None),
            AvroValue::Record(cols) => {
                if cols.len() != self.table.columns.len() {
                    return Err(AvroError::Shape("row width differs from its schema".into()));
                }
                cols.into_iter()
                    .zip(self.table.columns.iter())
                    .map(|((_, v), c)| to_datum(v, &c.sql_type))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            }
            other => Err(AvroError::Shape(format!("row image is {other:?}"))),
        }
    }
}

#[cfg(test)]
fn to_datum(v: AvroValue, ty: &SqlType) -> Result<Datum, AvroError> {
    Ok(match v {
        AvroValue::Union(_, inner) => return to_datum(*inner, ty),
        AvroValue::Null => Datum::Null,
        AvroValue::Boolean(b) => Datum::Bool(b),
        AvroValue::Int(i) => Datum::Int(i),
        AvroValue::Long(l) => Datum::Long(l),
        AvroValue::Float(f) => Datum::Float(f),
        AvroValue::Double(d) => Datum::Double(d),
        AvroValue::String(s) if *ty == SqlType::Uuid => Datum::Uuid(s),
        AvroValue::String(s) => Datum::String(s),
        AvroValue::Bytes(b) => Datum::Bytes(b),
        AvroValue::Decimal(d) => {
            let scale = match ty {
                SqlType::Decimal { scale, .. } => *scale,
                SqlType::Money => 2,
                _ => {
                    return Err(AvroError::Shape(
                        "decimal value in a non-decimal column".into(),
                    ))
                }
            };
            let bytes = Vec::<u8>::try_from(&d).map_err(AvroError::Datum)?;
            Datum::Decimal(unscaled_to_text(&bytes, scale))
        }
        AvroValue::Array(items) => {
            let SqlType::Array(elem) = ty else {
                return Err(AvroError::Shape("array value in a non-array column".into()));
            };
            Datum::Array(
                items
                    .into_iter()
                    .map(|v| to_datum(v, elem))
                    .collect::<Result<_, _>>()?,
            )
        }
        AvroValue::Date(d) => Datum::Date(d),
        AvroValue::TimeMicros(t) => Datum::TimeMicros(t),
        AvroValue::TimestampMicros(t) => Datum::TimestampMicros(t),
        AvroValue::Uuid(u) => Datum::Uuid(u.as_hyphenated().to_string()),
        other => {
            return Err(AvroError::Shape(format!(
                "unsupported Avro value {other:?}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, SourceInfo, TxInfo};

    fn table() -> Arc<TableSchema> {
        let col = |name: &str, sql_type, key| Column {
            name: name.into(),
            sql_type,
            key,
            missing: (name == "note").then(|| "n/a".to_string()),
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "orders"),
            columns: vec![
                col("id", SqlType::Int64, true),
                col("qty", SqlType::Int16, false),
                col(
                    "price",
                    SqlType::Decimal {
                        precision: 10,
                        scale: 2,
                    },
                    false,
                ),
                col("note", SqlType::Text, false),
                col("order date", SqlType::Date, false),
                col("at", SqlType::TimestampTz, false),
                col("ref", SqlType::Uuid, false),
                col("ok", SqlType::Bool, false),
                col("ratio", SqlType::Float64, false),
                col("blob", SqlType::Bytes, false),
                col("doc", SqlType::Json, false),
                col("cost", SqlType::Money, false),
                col("wait", SqlType::Interval, false),
                col("opens", SqlType::TimeTz, false),
                col("mood", SqlType::Enum("public.mood".into()), false),
                col("tags", SqlType::Array(Box::new(SqlType::Text)), false),
                col(
                    "weights",
                    SqlType::Array(Box::new(SqlType::Decimal {
                        precision: 6,
                        scale: 3,
                    })),
                    false,
                ),
                col("days", SqlType::Array(Box::new(SqlType::Date)), false),
                col("span", SqlType::Other("int4range".into()), false),
            ],
        })
    }

    fn event(op: Op, before: Option<Vec<Datum>>, after: Option<Vec<Datum>>) -> ChangeEvent {
        ChangeEvent {
            row: RowChange {
                table: table(),
                op,
                before,
                after,
            },
            source: SourceInfo {
                name: Arc::from("pg_main"),
                db: Arc::from("shop"),
                ts_us: 1_700_000_000_000_123,
                snapshot: false,
                tx_id: Some(42),
                lsn: Some(0x1000),
                sequence: Some("[\"4096\",\"4096\"]".into()),
                binlog: None,
            },
            transaction: Some(TxInfo {
                id: Arc::from("42:4096"),
                total_order: 1,
                data_collection_order: 1,
            }),
            position: Position::postgres(0x1000, 0),
        }
    }

    fn row() -> Vec<Datum> {
        vec![
            Datum::Long(7),
            Datum::Int(-3),
            Datum::Decimal("-1234.50".into()),
            Datum::String("héllo".into()),
            Datum::Date(19_000),
            Datum::TimestampMicros(1_700_000_000_123_456),
            Datum::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Datum::Bool(true),
            Datum::Double(f64::NAN),
            Datum::Bytes(vec![0, 1, 255]),
            Datum::Null,
            Datum::Decimal("-92233720368547758.08".into()),
            Datum::String("P1Y2M-3DT4H5M6.789S".into()),
            Datum::String("12:34:56.5+05:30".into()),
            Datum::String("happy".into()),
            Datum::Array(vec![
                Datum::String("a".into()),
                Datum::Null,
                Datum::String(String::new()),
            ]),
            Datum::Array(vec![Datum::Decimal("-1.500".into()), Datum::Null]),
            Datum::Array(vec![]),
            Datum::String("[1,10)".into()),
        ]
    }

    #[test]
    fn encoded_envelope_decodes_with_apache_avro_to_the_same_row() {
        let codec = EnvelopeCodec::new("sluice", "pg_main", Connector::Postgres, table()).unwrap();
        let ev = event(Op::Update, Some(row()), Some(row()));
        let bytes = codec
            .encode_value(&ev, 5, &codec.single_object_headers().1)
            .unwrap();
        let (fp, datum) = unframe(&bytes).unwrap();
        assert_eq!(fp, codec.value_fingerprint);
        let decoder = EnvelopeDecoder::from_schema_json(&codec.value_schema_json).unwrap();
        assert_eq!(*decoder.table, *table());
        let decoded = decoder.decode(datum).unwrap();
        assert_eq!(decoded.op, Op::Update);
        assert_eq!(decoded.source_ts_ms, 1_700_000_000_000);
        let after = decoded.row.after.unwrap();
        // NaN != NaN, so compare the rest and NaN by bits.
        assert_eq!(after[..8], row()[..8]);
        assert!(matches!(after[8], Datum::Double(f) if f.is_nan()));
        assert_eq!(after[9..], row()[9..]);
    }

    /// Compares decoded events, NaN equal to NaN.
    fn same(a: &DecodedEvent, b: &DecodedEvent) -> bool {
        let rows = |x: &Option<Vec<Datum>>, y: &Option<Vec<Datum>>| match (x, y) {
            (None, None) => true,
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && x.iter().zip(y).all(|(p, q)| match (p, q) {
                        (Datum::Double(p), Datum::Double(q)) => p.to_bits() == q.to_bits(),
                        (p, q) => p == q,
                    })
            }
            _ => false,
        };
        a.op == b.op
            && a.source_ts_ms == b.source_ts_ms
            && rows(&a.before, &b.before)
            && rows(&a.after, &b.after)
    }

    #[test]
    fn direct_decoding_agrees_with_apache_avro_values() {
        for connector in [Connector::Postgres, Connector::Mysql] {
            let codec = EnvelopeCodec::new("sluice", "src", connector, table()).unwrap();
            let decoder = EnvelopeDecoder::from_schema_json(&codec.value_schema_json).unwrap();
            let mut nulls = row();
            for d in nulls.iter_mut().skip(1) {
                *d = Datum::Null;
            }
            let mut partial = row();
            partial[3] = Datum::Unchanged;
            partial[15] = Datum::Unchanged;
            for (op, before, after) in [
                (Op::Create, None, Some(row())),
                (Op::Update, Some(row()), Some(partial)),
                (Op::Update, Some(nulls.clone()), Some(nulls)),
                (Op::Delete, Some(row()), None),
                (Op::Read, None, Some(row())),
            ] {
                let mut ev = event(op, before, after);
                ev.source.binlog = Some(crate::event::BinlogSource {
                    server_id: 1,
                    gtid: None,
                    file: Arc::from("binlog.000001"),
                    pos: 4,
                    row: 0,
                });
                let bytes = codec
                    .encode_value(&ev, 5, &codec.single_object_headers().1)
                    .unwrap();
                let datum = unframe(&bytes).unwrap().1;
                let fast = decoder.decode(datum).unwrap();
                let generic = decoder.decode_generic(datum).unwrap();
                assert!(same(&fast, &generic), "{op:?}: {fast:?}\n{generic:?}");
                // A datum cut short is an error, never a panic or a wrong row.
                for cut in [1, datum.len() / 2, datum.len() - 1] {
                    assert!(decoder.decode(&datum[..cut]).is_err(), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn mysql_envelopes_carry_the_binlog_source_block_and_decode() {
        let codec = EnvelopeCodec::new("sluice", "maria", Connector::Mysql, table()).unwrap();
        let mut ev = event(Op::Create, None, Some(row()));
        ev.source.binlog = Some(crate::event::BinlogSource {
            server_id: 1,
            gtid: Some(Arc::from("0-1-42")),
            file: Arc::from("binlog.000003"),
            pos: 1234,
            row: 2,
        });
        let bytes = codec
            .encode_value(&ev, 5, &codec.single_object_headers().1)
            .unwrap();
        let (_, datum) = unframe(&bytes).unwrap();
        let schema = Schema::parse_str(&codec.value_schema_json).unwrap();
        let AvroValue::Record(fields) =
            apache_avro::from_avro_datum(&schema, &mut &datum[..], None).unwrap()
        else {
            panic!("not a record")
        };
        let source = fields.into_iter().find(|(k, _)| k == "source").unwrap().1;
        let AvroValue::Record(source) = source else {
            panic!("{source:?}")
        };
        let get = |name: &str| source.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert_eq!(get("connector"), AvroValue::String("mysql".into()));
        assert_eq!(get("file"), AvroValue::String("binlog.000003".into()));
        assert_eq!(get("pos"), AvroValue::Long(1234));
        assert_eq!(get("row"), AvroValue::Int(2));
        assert_eq!(
            get("gtid"),
            AvroValue::Union(1, Box::new(AvroValue::String("0-1-42".into())))
        );
        // Without a binlog position a MySQL event cannot be encoded.
        ev.source.binlog = None;
        assert!(codec
            .encode_value(&ev, 5, &codec.single_object_headers().1)
            .is_err());
    }

    #[test]
    fn unchanged_columns_travel_as_unchanged_not_as_null() {
        let codec = EnvelopeCodec::new("sluice", "pg_main", Connector::Postgres, table()).unwrap();
        let mut after = row();
        after[3] = Datum::Unchanged;
        let bytes = codec
            .encode_value(
                &event(Op::Update, None, Some(after)),
                5,
                &codec.single_object_headers().1,
            )
            .unwrap();
        let decoder = EnvelopeDecoder::from_schema_json(&codec.value_schema_json).unwrap();
        let decoded = decoder.decode(unframe(&bytes).unwrap().1).unwrap();
        assert_eq!(decoded.row.after.unwrap()[3], Datum::Unchanged);
        assert_eq!(decoded.row.before, None);
    }

    #[test]
    fn delete_carries_before_image_and_no_after() {
        let codec = EnvelopeCodec::new("sluice", "pg_main", Connector::Postgres, table()).unwrap();
        let bytes = codec
            .encode_value(
                &event(Op::Delete, Some(row()), None),
                5,
                &codec.single_object_headers().1,
            )
            .unwrap();
        let decoder = EnvelopeDecoder::from_schema_json(&codec.value_schema_json).unwrap();
        let decoded = decoder.decode(unframe(&bytes).unwrap().1).unwrap();
        assert_eq!(decoded.op, Op::Delete);
        assert!(decoded.after.is_none());
        assert_eq!(decoded.row.before.unwrap()[0], Datum::Long(7));
    }

    #[test]
    fn key_encodes_only_key_columns() {
        let codec = EnvelopeCodec::new("sluice", "pg_main", Connector::Postgres, table()).unwrap();
        let key = codec
            .encode_key(
                &event(Op::Create, None, Some(row())),
                &codec.single_object_headers().0,
            )
            .unwrap()
            .unwrap();
        let key_schema = Schema::parse_str(&codec.key_schema_json).unwrap();
        let (fp, mut datum) = unframe(&key).unwrap();
        assert_eq!(fp, SchemaFingerprint::of(&key_schema));
        let v = apache_avro::from_avro_datum(&key_schema, &mut datum, None).unwrap();
        assert_eq!(
            v,
            AvroValue::Record(vec![("id".into(), AvroValue::Long(7))])
        );
    }

    #[test]
    fn value_of_wrong_type_is_an_error_naming_the_column() {
        let codec = EnvelopeCodec::new("sluice", "pg_main", Connector::Postgres, table()).unwrap();
        let mut bad = row();
        bad[1] = Datum::String("x".into());
        let err = codec
            .encode_value(
                &event(Op::Create, None, Some(bad)),
                5,
                &codec.single_object_headers().1,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("column qty of public.orders"),
            "{err}"
        );
    }

    #[test]
    fn rabin_fingerprint_matches_the_avro_spec() {
        // The Avro specification's test vector: fingerprint64("null") = 0x63dd24e7cc258f8a.
        let fp = SchemaFingerprint::of(&Schema::Null);
        assert_eq!(u64::from_le_bytes(fp.0), 0x63dd_24e7_cc25_8f8a);
    }

    #[test]
    fn sanitized_names_keep_the_source_column_name() {
        let codec = EnvelopeCodec::new("sluice", "pg_main", Connector::Postgres, table()).unwrap();
        assert!(codec.value_schema_json.contains(r#""name":"order_date""#));
        assert!(codec
            .value_schema_json
            .contains(r#""sluice.column":"order date""#));
    }
}
