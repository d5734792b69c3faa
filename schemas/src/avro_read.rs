//! Reads Sluice envelopes from Avro binary straight into [`Datum`]s.
//!
//! The writer schema is compiled once per schema version into a [`Node`] tree (named
//! references inlined), and each datum is walked against it. apache-avro's generic decoder
//! builds a `Value` tree for every message — a `String` per field name, a record `Vec`, a
//! schema resolution per datum — which was over a third of the router's CPU (BENCHMARKS.md).

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};

use crate::decimal::unscaled_to_text;
use crate::event::Datum;
use crate::table::SqlType;

/// A writer schema, compiled for reading.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum,
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
    Record(Vec<(String, Node)>),
    /// The unscaled value in bytes, or in a fixed of this size.
    Decimal(Option<usize>),
    BigDecimal,
    Uuid,
    Date,
    TimeMillis,
    TimeMicros,
    /// timestamp-millis, timestamp-nanos and the local-timestamp types: a long, not read as
    /// a Sluice value.
    OtherLong,
    TimestampMicros,
    Duration,
}

/// Named types are inlined where referenced; a schema deeper than this is refused (recursive
/// types never occur in Sluice envelopes).
const MAX_DEPTH: usize = 32;

impl Node {
    pub(crate) fn compile(schema: &Schema) -> Result<Node, String> {
        let mut names = HashMap::new();
        collect_names(schema, &mut names);
        compile(schema, &names, 0)
    }
}

fn collect_names<'s>(schema: &'s Schema, names: &mut HashMap<String, &'s Schema>) {
    let mut add = |name: &Name| {
        names.insert(name.fullname(None), schema);
    };
    match schema {
        Schema::Record(r) => {
            add(&r.name);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => add(&e.name),
        Schema::Fixed(f) => add(&f.name),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, names);
            }
        }
        Schema::Decimal(d) => collect_names(&d.inner, names),
        _ => {}
    }
}

fn compile(
    schema: &Schema,
    names: &HashMap<String, &Schema>,
    depth: usize,
) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err("the schema nests too deeply (a recursive type?)".into());
    }
    let next = |s: &Schema| compile(s, names, depth + 1);
    Ok(match schema {
        Schema::Null => Node::Null,
        Schema::Boolean => Node::Boolean,
        Schema::Int => Node::Int,
        Schema::Long => Node::Long,
        Schema::Float => Node::Float,
        Schema::Double => Node::Double,
        Schema::Bytes => Node::Bytes,
        Schema::String => Node::String,
        Schema::Fixed(f) => Node::Fixed(f.size),
        Schema::Enum(_) => Node::Enum,
        Schema::Array(a) => Node::Array(Box::new(next(&a.items)?)),
        Schema::Map(m) => Node::Map(Box::new(next(&m.types)?)),
        Schema::Union(u) => Node::Union(u.variants().iter().map(next).collect::<Result<_, _>>()?),
        Schema::Record(r) => Node::Record(
            r.fields
                .iter()
                .map(|f| Ok((f.name.clone(), next(&f.schema)?)))
                .collect::<Result<_, String>>()?,
        ),
        Schema::Decimal(d) => match d.inner.as_ref() {
            Schema::Fixed(f) => Node::Decimal(Some(f.size)),
            _ => Node::Decimal(None),
        },
        Schema::BigDecimal => Node::BigDecimal,
        Schema::Uuid => Node::Uuid,
        Schema::Date => Node::Date,
        Schema::TimeMillis => Node::TimeMillis,
        Schema::TimeMicros => Node::TimeMicros,
        Schema::TimestampMicros => Node::TimestampMicros,
        Schema::TimestampMillis
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Node::OtherLong,
        Schema::Duration => Node::Duration,
        Schema::Ref { name } => {
            let target = names
                .get(&name.fullname(None))
                .ok_or_else(|| format!("the schema refers to {name}, which it does not define"))?;
            next(target)?
        }
    })
}

/// A cursor over one datum.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

const ENDS_EARLY: &str = "the datum ends early";

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(ENDS_EARLY.into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A zig-zag varint.
    pub(crate) fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or(ENDS_EARLY)?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn int(&mut self) -> Result<i32, String> {
        i32::try_from(self.long()?).map_err(|_| "an int out of range".to_string())
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.long()?).map_err(|_| "a negative length".to_string())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    pub(crate) fn string(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "a string that is not UTF-8".to_string())
    }

    /// A union's branch.
    pub(crate) fn branch<'n>(&mut self, variants: &'n [Node]) -> Result<&'n Node, String> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| variants.get(i))
            .ok_or_else(|| format!("union branch {i} of {}", variants.len()))
    }

    /// Calls `item` for each item of an array or map (blocks of items; a negative count is
    /// followed by the block's size in bytes).
    pub(crate) fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            for _ in 0..count.unsigned_abs() {
                item(self)?;
            }
        }
    }

    /// Reads past a value.
    pub(crate) fn skip(&mut self, node: &Node) -> Result<(), String> {
        match node {
            Node::Null => {}
            Node::Boolean => {
                self.take(1)?;
            }
            Node::Int
            | Node::Long
            | Node::Enum
            | Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::TimestampMicros
            | Node::OtherLong => {
                self.long()?;
            }
            Node::Float => {
                self.take(4)?;
            }
            Node::Double => {
                self.take(8)?;
            }
            Node::Bytes | Node::String | Node::Uuid | Node::BigDecimal | Node::Decimal(None) => {
                self.bytes()?;
            }
            Node::Fixed(n) | Node::Decimal(Some(n)) => {
                self.take(*n)?;
            }
            Node::Duration => {
                self.take(12)?;
            }
            Node::Array(items) => self.blocks(|c| c.skip(items))?,
            Node::Map(values) => self.blocks(|c| {
                c.bytes()?;
                c.skip(values)
            })?,
            Node::Union(variants) => {
                let v = self.branch(variants)?;
                self.skip(v)?;
            }
            Node::Record(fields) => {
                for (_, f) in fields {
                    self.skip(f)?;
                }
            }
        }
        Ok(())
    }

    /// Reads a column value of SQL type `ty`.
    pub(crate) fn datum(&mut self, node: &Node, ty: &SqlType) -> Result<Datum, String> {
        Ok(match node {
            Node::Union(variants) => {
                let v = self.branch(variants)?;
                return self.datum(v, ty);
            }
            Node::Null => Datum::Null,
            Node::Boolean => match self.take(1)?[0] {
                0 => Datum::Bool(false),
                1 => Datum::Bool(true),
                b => return Err(format!("boolean byte {b}")),
            },
            Node::Int => Datum::Int(self.int()?),
            Node::Long => Datum::Long(self.long()?),
            Node::Float => Datum::Float(f32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            Node::Double => Datum::Double(f64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            Node::String if *ty == SqlType::Uuid => Datum::Uuid(self.string()?.to_string()),
            Node::String => Datum::String(self.string()?.to_string()),
            Node::Bytes => Datum::Bytes(self.bytes()?.to_vec()),
            Node::Decimal(fixed) => {
                let scale = match ty {
                    SqlType::Decimal { scale, .. } => *scale,
                    SqlType::Money => 2,
                    _ => return Err("decimal value in a non-decimal column".into()),
                };
                let unscaled = match fixed {
                    Some(n) => self.take(*n)?,
                    None => self.bytes()?,
                };
                Datum::Decimal(unscaled_to_text(unscaled, scale))
            }
            Node::Array(items) => {
                let SqlType::Array(elem) = ty else {
                    return Err("array value in a non-array column".into());
                };
                let mut out = Vec::new();
                self.blocks(|c| {
                    out.push(c.datum(items, elem)?);
                    Ok(())
                })?;
                Datum::Array(out)
            }
            Node::Date => Datum::Date(self.int()?),
            Node::TimeMicros => Datum::TimeMicros(self.long()?),
            Node::TimestampMicros => Datum::TimestampMicros(self.long()?),
            Node::Uuid => {
                let s = self.string()?;
                let u = uuid_text(s).ok_or_else(|| format!("`{s}` is not a UUID"))?;
                Datum::Uuid(u)
            }
            other => return Err(format!("unsupported Avro type {other:?} for a column")),
        })
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A UUID's canonical text (lower-case, hyphenated), from any of the forms Avro writers use.
fn uuid_text(s: &str) -> Option<String> {
    let canonical = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        });
    if canonical {
        return Some(s.to_string());
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let hex = hex
        .strip_prefix("urn:uuid:")
        .map(str::to_string)
        .unwrap_or(hex)
        .trim_matches(['{', '}'])
        .to_ascii_lowercase();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_as_avro_writes_them() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut buf = Vec::new();
            crate::avro::write_long(&mut buf, v);
            let mut c = Cursor::new(&buf);
            assert_eq!(c.long().unwrap(), v);
            assert!(c.is_empty());
        }
        assert!(Cursor::new(&[0x80]).long().is_err());
    }

    #[test]
    fn uuids_become_canonical_text() {
        assert_eq!(
            uuid_text("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(uuid_text("not-a-uuid"), None);
    }
}
