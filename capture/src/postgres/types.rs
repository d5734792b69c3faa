//! PostgreSQL type OIDs → [`SqlType`].

use sluice_schemas::SqlType;

/// Maps a built-in scalar type by OID and type modifier; `None` for anything else (arrays,
/// domains, enums and types without a fixed OID, which the catalog resolves).
pub fn sql_type(oid: u32, typmod: i32) -> Option<SqlType> {
    Some(match oid {
        16 => SqlType::Bool,
        21 => SqlType::Int16,
        23 => SqlType::Int32,
        20 => SqlType::Int64,
        700 => SqlType::Float32,
        701 => SqlType::Float64,
        1700 => numeric(typmod),
        25 | 1043 | 1042 | 19 | 18 => SqlType::Text,
        17 => SqlType::Bytes,
        1082 => SqlType::Date,
        1083 => SqlType::Time,
        1266 => SqlType::TimeTz,
        1186 => SqlType::Interval,
        790 => SqlType::Money,
        1114 => SqlType::Timestamp,
        1184 => SqlType::TimestampTz,
        2950 => SqlType::Uuid,
        114 => SqlType::Json,
        3802 => SqlType::Jsonb,
        _ => return None,
    })
}

/// `numeric(p,s)` has typmod `((p << 16) | (s & 0x7ff)) + 4`; the scale is an 11-bit signed
/// value since PostgreSQL 15. Negative scales and no typmod are carried as exact text.
fn numeric(typmod: i32) -> SqlType {
    if typmod < 4 {
        return SqlType::Numeric;
    }
    let t = typmod - 4;
    let precision = ((t >> 16) & 0xFFFF) as u32;
    let scale = ((t & 0x7FF) ^ 1024) - 1024;
    if scale < 0 {
        SqlType::Numeric
    } else {
        SqlType::Decimal {
            precision,
            scale: scale as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods_decode_precision_and_scale() {
        // numeric(10,2)
        assert_eq!(
            sql_type(1700, (10 << 16 | 2) + 4),
            Some(SqlType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(sql_type(1700, -1), Some(SqlType::Numeric));
        // numeric(5,-2) (PostgreSQL 15)
        assert_eq!(
            sql_type(1700, ((5 << 16) | (-2i32 & 0x7FF)) + 4),
            Some(SqlType::Numeric)
        );
        assert_eq!(sql_type(3614, -1), None);
    }
}
