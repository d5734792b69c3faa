//! Column arrays: each column of a batch's rows as one array parameter of the set-based
//! statements (`unnest($1::pg_catalog.int8[], $2::text[], …)`), written straight from the
//! [`Datum`]s into the protocol buffer.
//!
//! A column whose sink type is exactly its values' own type (an `int8` column of `bigint`
//! values, a `timestamptz` column of instants, …) travels as a binary array of that type, so
//! the server neither parses text nor casts. Every other column travels as text and is cast
//! to the column's type by the statement, as before: the server then converts, and refuses,
//! exactly as it does for text input.

use std::error::Error;

use bytes::BytesMut;
use postgres_protocol::types as wire;
use sluice_schemas::pgtext;
use sluice_schemas::{Datum, SqlType};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// Microseconds (and days) from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// How one column's values travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Wire {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Date,
    Timestamp,
    TimestampTz,
    Text,
}

impl Wire {
    /// How the values of a `source` column go to a sink column cast as `cast` (its catalog
    /// type, `pg_catalog.int8`): binary where `cast` is the values' own type and every value
    /// of this batch has the shape that type decodes to, text otherwise.
    pub(crate) fn choose(source: &SqlType, cast: &str, rows: &[&[Datum]], col: usize) -> Wire {
        let wire = match (source, cast) {
            (SqlType::Bool, "pg_catalog.bool") => Wire::Bool,
            (SqlType::Int16, "pg_catalog.int2") => Wire::Int2,
            (SqlType::Int32, "pg_catalog.int4") => Wire::Int4,
            (SqlType::Int64, "pg_catalog.int8") => Wire::Int8,
            (SqlType::Float32, "pg_catalog.float4") => Wire::Float4,
            (SqlType::Float64, "pg_catalog.float8") => Wire::Float8,
            (SqlType::Date, "pg_catalog.date") => Wire::Date,
            (SqlType::Timestamp, "pg_catalog.timestamp") => Wire::Timestamp,
            (SqlType::TimestampTz, "pg_catalog.timestamptz") => Wire::TimestampTz,
            _ => return Wire::Text,
        };
        let fits = rows.iter().all(|row| match row.get(col) {
            None | Some(Datum::Null | Datum::Unchanged) => true,
            Some(d) => wire.holds(d),
        });
        if fits {
            wire
        } else {
            Wire::Text
        }
    }

    fn holds(self, datum: &Datum) -> bool {
        match (self, datum) {
            (Wire::Bool, Datum::Bool(_)) => true,
            (Wire::Int2, Datum::Int(i)) => i16::try_from(*i).is_ok(),
            (Wire::Int4, Datum::Int(_))
            | (Wire::Int8, Datum::Long(_))
            | (Wire::Float4, Datum::Float(_))
            | (Wire::Float8, Datum::Double(_))
            | (Wire::Date, Datum::Date(_))
            | (Wire::Timestamp | Wire::TimestampTz, Datum::TimestampMicros(_))
            | (Wire::Text, _) => true,
            _ => false,
        }
    }

    /// The array parameter's type, as the statement names it and as it is prepared.
    pub(crate) fn array_type(self) -> (&'static str, Type) {
        match self {
            Wire::Bool => ("pg_catalog.bool[]", Type::BOOL_ARRAY),
            Wire::Int2 => ("pg_catalog.int2[]", Type::INT2_ARRAY),
            Wire::Int4 => ("pg_catalog.int4[]", Type::INT4_ARRAY),
            Wire::Int8 => ("pg_catalog.int8[]", Type::INT8_ARRAY),
            Wire::Float4 => ("pg_catalog.float4[]", Type::FLOAT4_ARRAY),
            Wire::Float8 => ("pg_catalog.float8[]", Type::FLOAT8_ARRAY),
            Wire::Date => ("pg_catalog.date[]", Type::DATE_ARRAY),
            Wire::Timestamp => ("pg_catalog.timestamp[]", Type::TIMESTAMP_ARRAY),
            Wire::TimestampTz => ("pg_catalog.timestamptz[]", Type::TIMESTAMPTZ_ARRAY),
            Wire::Text => ("text[]", Type::TEXT_ARRAY),
        }
    }

    fn element(self) -> Type {
        match self {
            Wire::Bool => Type::BOOL,
            Wire::Int2 => Type::INT2,
            Wire::Int4 => Type::INT4,
            Wire::Int8 => Type::INT8,
            Wire::Float4 => Type::FLOAT4,
            Wire::Float8 => Type::FLOAT8,
            Wire::Date => Type::DATE,
            Wire::Timestamp => Type::TIMESTAMP,
            Wire::TimestampTz => Type::TIMESTAMPTZ,
            Wire::Text => Type::TEXT,
        }
    }
}

/// One column of a batch's rows as an array parameter.
#[derive(Debug)]
pub(crate) struct ColumnArray<'a> {
    pub rows: &'a [&'a [Datum]],
    pub col: usize,
    pub sql_type: &'a SqlType,
    pub wire: Wire,
}

impl ColumnArray<'_> {
    /// One element, as the array serializer wants it.
    fn element(
        &self,
        datum: &Datum,
        out: &mut BytesMut,
    ) -> Result<postgres_protocol::IsNull, Box<dyn Error + Sync + Send>> {
        use postgres_protocol::IsNull;
        match (self.wire, datum) {
            (_, Datum::Null | Datum::Unchanged) => return Ok(IsNull::Yes),
            (Wire::Bool, Datum::Bool(b)) => wire::bool_to_sql(*b, out),
            (Wire::Int2, Datum::Int(i)) => wire::int2_to_sql(i16::try_from(*i)?, out),
            (Wire::Int4, Datum::Int(i)) => wire::int4_to_sql(*i, out),
            (Wire::Int8, Datum::Long(i)) => wire::int8_to_sql(*i, out),
            (Wire::Float4, Datum::Float(f)) => wire::float4_to_sql(*f, out),
            (Wire::Float8, Datum::Double(f)) => wire::float8_to_sql(*f, out),
            (Wire::Date, Datum::Date(d)) => wire::date_to_sql(
                match *d {
                    // PostgreSQL's own infinities are the same extremes.
                    pgtext::DATE_INFINITY | pgtext::DATE_NEG_INFINITY => *d,
                    d => d - PG_EPOCH_DAYS,
                },
                out,
            ),
            (Wire::Timestamp | Wire::TimestampTz, Datum::TimestampMicros(t)) => {
                wire::timestamp_to_sql(
                    match *t {
                        pgtext::TS_INFINITY | pgtext::TS_NEG_INFINITY => *t,
                        t => t - PG_EPOCH_MICROS,
                    },
                    out,
                );
            }
            (Wire::Text, Datum::String(s) | Datum::Decimal(s) | Datum::Uuid(s)) => {
                wire::text_to_sql(s, out);
            }
            (Wire::Text, d) => match pgtext::render(self.sql_type, d) {
                Some(text) => wire::text_to_sql(&text, out),
                None => return Ok(IsNull::Yes),
            },
            // `Wire::choose` checked every value of the column.
            (w, d) => return Err(format!("a {d:?} cannot travel as {w:?}").into()),
        }
        Ok(IsNull::No)
    }
}

impl ToSql for ColumnArray<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let dimension = wire::ArrayDimension {
            len: i32::try_from(self.rows.len())?,
            lower_bound: 1,
        };
        wire::array_to_sql(
            Some(dimension),
            self.wire.element().oid(),
            self.rows.iter(),
            |row, out| match row.get(self.col) {
                Some(datum) => self.element(datum, out),
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), tokio_postgres::types::Kind::Array(_))
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_travels_binary_only_when_its_sink_type_is_its_own() {
        let rows = [vec![Datum::Long(1)], vec![Datum::Null]];
        let rows: Vec<&[Datum]> = rows.iter().map(Vec::as_slice).collect();
        assert_eq!(
            Wire::choose(&SqlType::Int64, "pg_catalog.int8", &rows, 0),
            Wire::Int8
        );
        // A sink column of another type gets text, cast by the server as before.
        assert_eq!(
            Wire::choose(&SqlType::Int64, "pg_catalog.numeric", &rows, 0),
            Wire::Text
        );
        assert_eq!(
            Wire::choose(&SqlType::Int64, "pg_catalog.text", &rows, 0),
            Wire::Text
        );
        // A value of an unexpected shape sends the whole column as text.
        let odd = [vec![Datum::Long(1)], vec![Datum::String("2".into())]];
        let odd: Vec<&[Datum]> = odd.iter().map(Vec::as_slice).collect();
        assert_eq!(
            Wire::choose(&SqlType::Int64, "pg_catalog.int8", &odd, 0),
            Wire::Text
        );
        // A smallint value beyond int2 leaves it to the server to refuse.
        let wide = [vec![Datum::Int(40_000)]];
        let wide: Vec<&[Datum]> = wide.iter().map(Vec::as_slice).collect();
        assert_eq!(
            Wire::choose(&SqlType::Int16, "pg_catalog.int2", &wide, 0),
            Wire::Text
        );
    }

    #[test]
    fn instants_and_days_are_moved_to_the_postgres_epoch_and_infinities_kept() {
        let rows = [
            vec![
                Datum::TimestampMicros(PG_EPOCH_MICROS + 5),
                Datum::Date(PG_EPOCH_DAYS + 1),
            ],
            vec![
                Datum::TimestampMicros(pgtext::TS_INFINITY),
                Datum::Date(pgtext::DATE_NEG_INFINITY),
            ],
        ];
        let rows: Vec<&[Datum]> = rows.iter().map(Vec::as_slice).collect();
        let encode = |col, sql_type, wire| {
            let mut out = BytesMut::new();
            ColumnArray {
                rows: &rows,
                col,
                sql_type,
                wire,
            }
            .to_sql(&Type::TEXT_ARRAY, &mut out)
            .unwrap();
            // Header: dimensions, flags, element oid, length, lower bound; then (len, value)s.
            out.split_off(20).to_vec()
        };
        let ts = encode(0, &SqlType::TimestampTz, Wire::TimestampTz);
        assert_eq!(&ts[..12], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(
            &ts[12..],
            &[&[0, 0, 0, 8][..], &i64::MAX.to_be_bytes()].concat()
        );
        let days = encode(1, &SqlType::Date, Wire::Date);
        assert_eq!(&days[..8], &[0, 0, 0, 4, 0, 0, 0, 1]);
        assert_eq!(
            &days[8..],
            &[&[0, 0, 0, 4][..], &i32::MIN.to_be_bytes()].concat()
        );
    }

    #[test]
    fn text_columns_are_written_as_their_text_form_and_nulls_as_null() {
        let rows = [
            vec![Datum::Decimal("-12.50".into())],
            vec![Datum::Null],
            vec![Datum::Unchanged],
        ];
        let rows: Vec<&[Datum]> = rows.iter().map(Vec::as_slice).collect();
        let mut out = BytesMut::new();
        ColumnArray {
            rows: &rows,
            col: 0,
            sql_type: &SqlType::Decimal {
                precision: 12,
                scale: 2,
            },
            wire: Wire::Text,
        }
        .to_sql(&Type::TEXT_ARRAY, &mut out)
        .unwrap();
        let body = out.split_off(20).to_vec();
        let mut expected = vec![0, 0, 0, 6];
        expected.extend_from_slice(b"-12.50");
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(body, expected);
    }
}
