//! Avro schema resolution for the types Sluice's schemas are made of, with the reason in words
//! when a writer's type cannot be read as a reader's.
//!
//! Both the compatibility policy (can the new version of a table's schema read events written
//! with an older one, and the other way round) and mapping schemes (an engineer's reader schema
//! over a table's writer schema) rest on this. The rules are the Avro specification's:
//! - the same type reads as itself; `int` → `long`, `float`, `double`; `long` → `float`,
//!   `double`; `float` → `double`; `string` ↔ `bytes`;
//! - a union writer reads only if every branch it may write resolves; a union reader takes the
//!   first branch a non-union writer resolves to;
//! - a logical type annotates its underlying type: a reader without the annotation reads the
//!   underlying value (`date` → `int`, `uuid` → `string`, …). Two different annotations of one
//!   underlying type do not resolve (`timestamp-millis` is not `timestamp-micros`), and a plain
//!   type does not gain one (an `int` has no known unit to become a `date`);
//! - decimals resolve when the scale is the same and the reader's precision is at least the
//!   writer's (the value reads unchanged; a narrower precision could overflow).

use std::fmt;

use serde_json::Value as Json;

use crate::decimal::text_to_unscaled;
use crate::event::Datum;
use crate::table::SqlType;

/// An Avro type as Sluice uses it: the primitive types, the logical types on them, arrays, and
/// unions. Other named types (records, enums, fixed, maps) are [`AvroType::Unsupported`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AvroType {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Decimal {
        precision: u32,
        scale: u32,
    },
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    LocalTimestampMillis,
    LocalTimestampMicros,
    Uuid,
    Array(Box<AvroType>),
    Union(Vec<AvroType>),
    /// A type Sluice cannot map onto a column; the text says which.
    Unsupported(String),
}

impl AvroType {
    /// Reads a type from its JSON form (`"long"`, `{"type": "int", "logicalType": "date"}`,
    /// `["null", "string"]`, …). Unknown logical types are ignored, as the specification says.
    pub fn from_json(json: &Json) -> Result<AvroType, String> {
        match json {
            Json::String(name) => AvroType::primitive(name).ok_or_else(|| match name.as_str() {
                "record" | "enum" | "fixed" | "map" | "array" => {
                    format!("\"{name}\" must be written as an object with its attributes")
                }
                other => format!(
                    "unknown type \"{other}\" (a reference to a named type is not supported here)"
                ),
            }),
            Json::Array(branches) => {
                let mut out = Vec::with_capacity(branches.len());
                for b in branches {
                    let t = AvroType::from_json(b)?;
                    if matches!(t, AvroType::Union(_)) {
                        return Err("a union may not contain a union".into());
                    }
                    if out.contains(&t) {
                        return Err(format!("the union lists {t} twice"));
                    }
                    out.push(t);
                }
                if out.is_empty() {
                    return Err("an empty union has no values".into());
                }
                Ok(AvroType::Union(out))
            }
            Json::Object(obj) => {
                let ty = obj.get("type").ok_or("the type object has no \"type\"")?;
                let base = match ty {
                    Json::String(t) if t == "array" => {
                        let items = obj.get("items").ok_or("an array type needs \"items\"")?;
                        return Ok(AvroType::Array(Box::new(AvroType::from_json(items)?)));
                    }
                    Json::String(t)
                        if matches!(t.as_str(), "record" | "enum" | "fixed" | "map") =>
                    {
                        return Ok(AvroType::Unsupported(t.clone()));
                    }
                    other => AvroType::from_json(other)?,
                };
                let logical = obj.get("logicalType").and_then(Json::as_str);
                Ok(match (logical, &base) {
                    (Some("decimal"), AvroType::Bytes) => {
                        let num = |k: &str| obj.get(k).and_then(Json::as_u64);
                        let precision = num("precision")
                            .ok_or("a decimal needs a positive integer \"precision\"")?;
                        let scale = num("scale").unwrap_or(0);
                        if precision == 0 || scale > precision {
                            return Err(format!(
                                "decimal precision {precision} and scale {scale}: the precision must be > 0 and at least the scale"
                            ));
                        }
                        AvroType::Decimal {
                            precision: precision as u32,
                            scale: scale as u32,
                        }
                    }
                    (Some("date"), AvroType::Int) => AvroType::Date,
                    (Some("time-millis"), AvroType::Int) => AvroType::TimeMillis,
                    (Some("time-micros"), AvroType::Long) => AvroType::TimeMicros,
                    (Some("timestamp-millis"), AvroType::Long) => AvroType::TimestampMillis,
                    (Some("timestamp-micros"), AvroType::Long) => AvroType::TimestampMicros,
                    (Some("local-timestamp-millis"), AvroType::Long) => {
                        AvroType::LocalTimestampMillis
                    }
                    (Some("local-timestamp-micros"), AvroType::Long) => {
                        AvroType::LocalTimestampMicros
                    }
                    (Some("uuid"), AvroType::String) => AvroType::Uuid,
                    _ => base,
                })
            }
            other => Err(format!("{other} is not an Avro type")),
        }
    }

    fn primitive(name: &str) -> Option<AvroType> {
        Some(match name {
            "null" => AvroType::Null,
            "boolean" => AvroType::Boolean,
            "int" => AvroType::Int,
            "long" => AvroType::Long,
            "float" => AvroType::Float,
            "double" => AvroType::Double,
            "bytes" => AvroType::Bytes,
            "string" => AvroType::String,
            _ => return None,
        })
    }

    /// The type's JSON form, without any attribute but the logical type's.
    pub fn to_json(&self) -> Json {
        use serde_json::json;
        let logical = |base: &str, logical: &str| json!({"type": base, "logicalType": logical});
        match self {
            AvroType::Decimal { precision, scale } => json!({
                "type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale
            }),
            AvroType::Date => logical("int", "date"),
            AvroType::TimeMillis => logical("int", "time-millis"),
            AvroType::TimeMicros => logical("long", "time-micros"),
            AvroType::TimestampMillis => logical("long", "timestamp-millis"),
            AvroType::TimestampMicros => logical("long", "timestamp-micros"),
            AvroType::LocalTimestampMillis => logical("long", "local-timestamp-millis"),
            AvroType::LocalTimestampMicros => logical("long", "local-timestamp-micros"),
            AvroType::Uuid => logical("string", "uuid"),
            AvroType::Array(items) => json!({"type": "array", "items": items.to_json()}),
            AvroType::Union(b) => Json::Array(b.iter().map(AvroType::to_json).collect()),
            other => Json::String(other.to_string()),
        }
    }

    /// The Avro type values of `sql` travel as (not null).
    pub fn of_sql(sql: &SqlType) -> AvroType {
        AvroType::from_json(&sql.avro_type())
            .expect("SqlType::avro_type produces types AvroType reads")
    }

    /// A column's field type: the value type, in `[null, T]` unless it is a key column.
    pub fn of_column(sql: &SqlType, key: bool) -> AvroType {
        let t = AvroType::of_sql(sql);
        if key {
            t
        } else {
            AvroType::Union(vec![AvroType::Null, t])
        }
    }

    /// Whether null is a value of this type.
    pub fn accepts_null(&self) -> bool {
        match self {
            AvroType::Null => true,
            AvroType::Union(b) => b.contains(&AvroType::Null),
            _ => false,
        }
    }

    /// The non-null types of this type, in order.
    pub fn non_null(&self) -> Vec<&AvroType> {
        match self {
            AvroType::Null => vec![],
            AvroType::Union(b) => b.iter().filter(|t| **t != AvroType::Null).collect(),
            t => vec![t],
        }
    }

    /// The SQL type a sink column gets for values of this type, when there is one.
    pub fn sql_type(&self) -> Option<SqlType> {
        let non_null = self.non_null();
        let [t] = non_null.as_slice() else {
            return None;
        };
        Some(match t {
            AvroType::Boolean => SqlType::Bool,
            AvroType::Int => SqlType::Int32,
            AvroType::Long => SqlType::Int64,
            AvroType::Float => SqlType::Float32,
            AvroType::Double => SqlType::Float64,
            AvroType::Bytes => SqlType::Bytes,
            AvroType::String => SqlType::Text,
            AvroType::Decimal { precision, scale } => SqlType::Decimal {
                precision: *precision,
                scale: *scale,
            },
            AvroType::Date => SqlType::Date,
            AvroType::TimeMicros => SqlType::Time,
            AvroType::TimestampMicros => SqlType::TimestampTz,
            AvroType::LocalTimestampMicros => SqlType::Timestamp,
            AvroType::Uuid => SqlType::Uuid,
            AvroType::Array(items) => match items.sql_type()? {
                SqlType::Array(_) => return None,
                elem => SqlType::Array(Box::new(elem)),
            },
            _ => return None,
        })
    }
}

impl fmt::Display for AvroType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AvroType::Null => f.write_str("null"),
            AvroType::Boolean => f.write_str("boolean"),
            AvroType::Int => f.write_str("int"),
            AvroType::Long => f.write_str("long"),
            AvroType::Float => f.write_str("float"),
            AvroType::Double => f.write_str("double"),
            AvroType::Bytes => f.write_str("bytes"),
            AvroType::String => f.write_str("string"),
            AvroType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            AvroType::Date => f.write_str("date"),
            AvroType::TimeMillis => f.write_str("time-millis"),
            AvroType::TimeMicros => f.write_str("time-micros"),
            AvroType::TimestampMillis => f.write_str("timestamp-millis"),
            AvroType::TimestampMicros => f.write_str("timestamp-micros"),
            AvroType::LocalTimestampMillis => f.write_str("local-timestamp-millis"),
            AvroType::LocalTimestampMicros => f.write_str("local-timestamp-micros"),
            AvroType::Uuid => f.write_str("uuid"),
            AvroType::Array(items) => write!(f, "array of {items}"),
            AvroType::Union(b) => {
                let names: Vec<String> = b.iter().map(|t| format!("\"{t}\"")).collect();
                write!(f, "[{}]", names.join(", "))
            }
            AvroType::Unsupported(kind) => write!(f, "{kind}"),
        }
    }
}

/// How a non-null value read with the writer's type becomes the reader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversion {
    /// The value reads as it is.
    Same,
    /// `int`/`long` → `long`/`float`/`double`, `float` → `double`.
    Promote(AvroType),
    /// `string` → `bytes` (the UTF-8 bytes).
    StringToBytes,
    /// `bytes` → `string` (must be UTF-8).
    BytesToString,
    /// A logical type read as its underlying type (`date` → `int`, `uuid` → `string`, …).
    Underlying,
    /// Each element of an array, by the inner conversion.
    Elements(Box<Conversion>),
}

/// How one writer type is read with one reader type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// What non-null values go through.
    pub conversion: Conversion,
    /// The reader type a non-null value ends up as.
    pub reader: AvroType,
}

fn non_union_conversion(w: &AvroType, r: &AvroType) -> Result<Conversion, String> {
    use AvroType::*;
    if w == r {
        return Ok(Conversion::Same);
    }
    Ok(match (w, r) {
        (Int, Long | Float | Double) | (Long, Float | Double) | (Float, Double) => {
            Conversion::Promote(r.clone())
        }
        (String, Bytes) => Conversion::StringToBytes,
        (Bytes, String) => Conversion::BytesToString,
        (
            Decimal {
                precision: wp,
                scale: ws,
            },
            Decimal {
                precision: rp,
                scale: rs,
            },
        ) => {
            if ws != rs {
                return Err(format!(
                    "{w} cannot be read as {r}: the scale differs, so every value would be read {}",
                    if rs > ws { "too small" } else { "too large" }
                ));
            }
            if rp < wp {
                return Err(format!(
                    "{w} cannot be read as {r}: values with more than {rp} digits would not fit"
                ));
            }
            Conversion::Same
        }
        (Decimal { .. }, Bytes)
        | (Date | TimeMillis, Int)
        | (
            TimeMicros | TimestampMillis | TimestampMicros | LocalTimestampMillis
            | LocalTimestampMicros,
            Long,
        )
        | (Uuid, String) => Conversion::Underlying,
        (Array(wi), Array(ri)) => {
            let inner = resolve(wi, ri).map_err(|e| format!("array elements: {e}"))?;
            if inner.conversion == Conversion::Same {
                Conversion::Same
            } else {
                Conversion::Elements(Box::new(inner.conversion))
            }
        }
        (Unsupported(kind), _) | (_, Unsupported(kind)) => {
            return Err(format!("{kind} types are not supported"))
        }
        _ => {
            let hint = match (w, r) {
                (Long, Int) | (Double, Float | Int | Long) | (Float, Int | Long) => {
                    " (a narrowing conversion could lose values)"
                }
                (Int | Long | Float | Double | Boolean | Decimal { .. }, String) => {
                    " (Avro converts no value to text)"
                }
                (String, Int | Long | Float | Double | Boolean) => {
                    " (Avro parses no text into other values)"
                }
                _ => "",
            };
            return Err(format!("{w} cannot be read as {r}{hint}"));
        }
    })
}

/// Resolves a writer type against a reader type, per the module's rules.
pub fn resolve(writer: &AvroType, reader: &AvroType) -> Result<Resolution, String> {
    let w_branches = writer.non_null();
    if writer.accepts_null() && !reader.accepts_null() {
        return Err(format!(
            "its values may be null, and {reader} cannot hold null"
        ));
    }
    let w = match w_branches.as_slice() {
        [] => {
            return Ok(Resolution {
                conversion: Conversion::Same,
                reader: AvroType::Null,
            })
        }
        [w] => *w,
        _ => {
            return Err(format!(
                "{writer}: unions of several non-null types are not supported"
            ))
        }
    };
    let candidates = reader.non_null();
    if candidates.is_empty() {
        return Err(format!("{writer} cannot be read as null"));
    }
    // The specification picks the first branch that matches exactly, then the first that
    // resolves.
    if let Some(r) = candidates.iter().find(|r| **r == w) {
        return Ok(Resolution {
            conversion: Conversion::Same,
            reader: (*r).clone(),
        });
    }
    let mut first_error = None;
    for r in &candidates {
        match non_union_conversion(w, r) {
            Ok(conversion) => {
                return Ok(Resolution {
                    conversion,
                    reader: (*r).clone(),
                })
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(match (candidates.len(), first_error) {
        (1, Some(e)) => e,
        _ => format!("{w} cannot be read as any of {reader}"),
    })
}

impl Conversion {
    /// Converts a non-null value read with the writer's type. Errors say why the value does
    /// not fit (bytes that are not UTF-8).
    pub fn apply(&self, datum: Datum) -> Result<Datum, String> {
        Ok(match (self, datum) {
            (_, Datum::Null) => Datum::Null,
            (_, Datum::Unchanged) => Datum::Unchanged,
            (Conversion::Same, d) => d,
            (Conversion::Promote(to), d) => match (to, d) {
                (AvroType::Long, Datum::Int(i)) => Datum::Long(i64::from(i)),
                (AvroType::Float, Datum::Int(i)) => Datum::Float(i as f32),
                (AvroType::Float, Datum::Long(i)) => Datum::Float(i as f32),
                (AvroType::Double, Datum::Int(i)) => Datum::Double(f64::from(i)),
                (AvroType::Double, Datum::Long(i)) => Datum::Double(i as f64),
                (AvroType::Double, Datum::Float(f)) => Datum::Double(f64::from(f)),
                (to, d) => return Err(format!("cannot promote {d:?} to {to}")),
            },
            (Conversion::StringToBytes, Datum::String(s) | Datum::Uuid(s)) => {
                Datum::Bytes(s.into_bytes())
            }
            (Conversion::BytesToString, Datum::Bytes(b)) => Datum::String(
                String::from_utf8(b).map_err(|_| "the bytes are not UTF-8 text".to_string())?,
            ),
            (Conversion::Underlying, d) => match d {
                Datum::Date(v) => Datum::Int(v),
                Datum::TimeMicros(v) | Datum::TimestampMicros(v) => Datum::Long(v),
                Datum::Uuid(s) => Datum::String(s),
                Datum::Decimal(text) => {
                    // The unscale is the decimal's own: decimals always carry their scale.
                    let scale = text.split_once('.').map_or(0, |(_, f)| f.len()) as u32;
                    Datum::Bytes(text_to_unscaled(&text, scale).map_err(|e| e.0)?)
                }
                d => d,
            },
            (Conversion::Elements(inner), Datum::Array(items)) => Datum::Array(
                items
                    .into_iter()
                    .map(|d| inner.apply(d))
                    .collect::<Result<_, _>>()?,
            ),
            (c, d) => return Err(format!("cannot apply {c:?} to {d:?}")),
        })
    }
}

/// The value a field's Avro `default` stands for. For a union, the default is a value of its
/// first branch (the specification's rule).
pub fn default_datum(default: &Json, ty: &AvroType) -> Result<Datum, String> {
    let ty = match ty {
        AvroType::Union(b) => &b[0],
        t => t,
    };
    let bad = || format!("the default {default} is not a {ty}");
    Ok(match (ty, default) {
        (AvroType::Null, Json::Null) => Datum::Null,
        (AvroType::Boolean, Json::Bool(b)) => Datum::Bool(*b),
        (AvroType::Int | AvroType::Date | AvroType::TimeMillis, Json::Number(n)) => {
            let v = n
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(bad)?;
            match ty {
                AvroType::Date => Datum::Date(v),
                AvroType::TimeMillis => Datum::TimeMicros(i64::from(v) * 1000),
                _ => Datum::Int(v),
            }
        }
        (AvroType::Long, Json::Number(n)) => Datum::Long(n.as_i64().ok_or_else(bad)?),
        (AvroType::TimeMicros, Json::Number(n)) => Datum::TimeMicros(n.as_i64().ok_or_else(bad)?),
        (AvroType::TimestampMicros | AvroType::LocalTimestampMicros, Json::Number(n)) => {
            Datum::TimestampMicros(n.as_i64().ok_or_else(bad)?)
        }
        (AvroType::TimestampMillis | AvroType::LocalTimestampMillis, Json::Number(n)) => {
            Datum::TimestampMicros(
                n.as_i64()
                    .and_then(|v| v.checked_mul(1000))
                    .ok_or_else(bad)?,
            )
        }
        (AvroType::Float, Json::Number(n)) => Datum::Float(n.as_f64().ok_or_else(bad)? as f32),
        (AvroType::Double, Json::Number(n)) => Datum::Double(n.as_f64().ok_or_else(bad)?),
        (AvroType::String, Json::String(s)) => Datum::String(s.clone()),
        (AvroType::Uuid, Json::String(s)) => Datum::Uuid(s.clone()),
        (AvroType::Bytes, Json::String(s)) => Datum::Bytes(json_bytes(s).ok_or_else(bad)?),
        (AvroType::Decimal { scale, .. }, Json::String(s)) => {
            let bytes = json_bytes(s).ok_or_else(bad)?;
            Datum::Decimal(crate::decimal::unscaled_to_text(&bytes, *scale))
        }
        (AvroType::Array(items), Json::Array(values)) => Datum::Array(
            values
                .iter()
                .map(|v| default_datum(v, items))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad()),
    })
}

/// Avro's JSON form of bytes: a string whose code points 0–255 are the bytes.
fn json_bytes(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(j: Json) -> AvroType {
        AvroType::from_json(&j).unwrap()
    }

    #[test]
    fn promotions_follow_the_specification() {
        for (w, r) in [
            ("int", "long"),
            ("int", "float"),
            ("int", "double"),
            ("long", "float"),
            ("long", "double"),
            ("float", "double"),
            ("string", "bytes"),
            ("bytes", "string"),
        ] {
            assert!(resolve(&t(json!(w)), &t(json!(r))).is_ok(), "{w} → {r}");
        }
        for (w, r) in [
            ("long", "int"),
            ("double", "float"),
            ("int", "string"),
            ("string", "int"),
            ("boolean", "int"),
        ] {
            assert!(resolve(&t(json!(w)), &t(json!(r))).is_err(), "{w} → {r}");
        }
        let e = resolve(&t(json!("long")), &t(json!("int"))).unwrap_err();
        assert_eq!(
            e,
            "long cannot be read as int (a narrowing conversion could lose values)"
        );
    }

    #[test]
    fn unions_resolve_branch_by_branch() {
        let nullable_int = t(json!(["null", "int"]));
        let nullable_long = t(json!(["null", "long"]));
        let r = resolve(&nullable_int, &nullable_long).unwrap();
        assert_eq!(r.conversion, Conversion::Promote(AvroType::Long));
        // A nullable writer needs a reader that can hold null.
        let e = resolve(&nullable_int, &t(json!("long"))).unwrap_err();
        assert_eq!(e, "its values may be null, and long cannot hold null");
        // A non-union writer into a union reader: the first branch that resolves.
        let r = resolve(&t(json!("int")), &t(json!(["null", "string", "double"]))).unwrap();
        assert_eq!(r.reader, AvroType::Double);
        // An exact branch wins over an earlier promotable one.
        let r = resolve(&t(json!("int")), &t(json!(["long", "int"]))).unwrap();
        assert_eq!((r.conversion, r.reader), (Conversion::Same, AvroType::Int));
    }

    #[test]
    fn logical_types_read_as_their_underlying_type_only() {
        let date = t(json!({"type": "int", "logicalType": "date"}));
        assert_eq!(date, AvroType::Date);
        assert_eq!(
            resolve(&date, &AvroType::Int).unwrap().conversion,
            Conversion::Underlying
        );
        assert!(resolve(&AvroType::Int, &date).is_err());
        let millis = t(json!({"type": "long", "logicalType": "timestamp-millis"}));
        let micros = t(json!({"type": "long", "logicalType": "timestamp-micros"}));
        assert!(resolve(&millis, &micros).is_err());
        // An unknown logical type is ignored.
        assert_eq!(
            t(json!({"type": "string", "logicalType": "io.sluice.x"})),
            AvroType::String
        );
    }

    #[test]
    fn decimals_widen_but_never_rescale_or_narrow() {
        let d = |p, s| AvroType::Decimal {
            precision: p,
            scale: s,
        };
        assert!(resolve(&d(10, 2), &d(12, 2)).is_ok());
        let e = resolve(&d(12, 2), &d(10, 2)).unwrap_err();
        assert_eq!(
            e,
            "decimal(12,2) cannot be read as decimal(10,2): values with more than 10 digits would not fit"
        );
        assert!(resolve(&d(10, 2), &d(10, 3))
            .unwrap_err()
            .contains("the scale differs"));
    }

    #[test]
    fn conversions_change_values_exactly() {
        assert_eq!(
            Conversion::Promote(AvroType::Long)
                .apply(Datum::Int(-5))
                .unwrap(),
            Datum::Long(-5)
        );
        assert_eq!(
            Conversion::Underlying.apply(Datum::Date(3)).unwrap(),
            Datum::Int(3)
        );
        assert_eq!(
            Conversion::Underlying
                .apply(Datum::Decimal("-1.50".into()))
                .unwrap(),
            Datum::Bytes(vec![0xFF, 0x6A])
        );
        assert!(Conversion::BytesToString
            .apply(Datum::Bytes(vec![0xFF]))
            .is_err());
        assert_eq!(
            Conversion::Elements(Box::new(Conversion::Promote(AvroType::Double)))
                .apply(Datum::Array(vec![Datum::Int(1), Datum::Null]))
                .unwrap(),
            Datum::Array(vec![Datum::Double(1.0), Datum::Null])
        );
    }

    #[test]
    fn defaults_are_values_of_the_first_branch() {
        assert_eq!(
            default_datum(&json!(null), &t(json!(["null", "string"]))).unwrap(),
            Datum::Null
        );
        assert_eq!(
            default_datum(&json!("eu"), &t(json!(["string", "null"]))).unwrap(),
            Datum::String("eu".into())
        );
        assert!(default_datum(&json!("eu"), &t(json!(["null", "string"]))).is_err());
        assert_eq!(
            default_datum(
                &json!("\u{0}\u{7b}"),
                &t(json!({"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}))
            )
            .unwrap(),
            Datum::Decimal("1.23".into())
        );
        assert!(default_datum(&json!(1.5), &AvroType::Int).is_err());
    }

    #[test]
    fn json_forms_read_back() {
        for j in [
            json!(["null", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}]),
            json!({"type": "array", "items": ["null", {"type": "int", "logicalType": "date"}]}),
            json!("string"),
        ] {
            assert_eq!(t(j.clone()).to_json(), j);
        }
    }

    #[test]
    fn every_sql_type_has_an_avro_type_that_maps_back_to_a_column_type() {
        for sql in [
            SqlType::Int64,
            SqlType::Text,
            SqlType::Date,
            SqlType::Uuid,
            SqlType::Decimal {
                precision: 9,
                scale: 3,
            },
            SqlType::Array(Box::new(SqlType::Float64)),
        ] {
            assert_eq!(AvroType::of_sql(&sql).sql_type(), Some(sql));
        }
        // Text-form types travel as strings: without the writer's column they are text.
        assert_eq!(
            AvroType::of_sql(&SqlType::Interval).sql_type(),
            Some(SqlType::Text)
        );
    }
}
