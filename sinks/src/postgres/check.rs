//! Whether a target table in the sink can take what a mapping scheme writes
//! (`sluice schemes check`): columns, their types, nullability and the key.

use sluice_schemas::{SqlType, TableSchema};

use super::{quote, PostgresSink};
use crate::{SinkError, TargetProblem};

/// PostgreSQL's name (`format_type`) of the column type the sink creates for `t`; `None` for
/// named types (enums, composites, extensions), which depend on the database.
pub fn pg_type_name(t: &SqlType) -> Option<String> {
    Some(match t {
        SqlType::Bool => "boolean".into(),
        SqlType::Int16 => "smallint".into(),
        SqlType::Int32 => "integer".into(),
        SqlType::Int64 => "bigint".into(),
        SqlType::Float32 => "real".into(),
        SqlType::Float64 => "double precision".into(),
        SqlType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
        SqlType::Numeric => "numeric".into(),
        SqlType::Text => "text".into(),
        SqlType::Bytes => "bytea".into(),
        SqlType::Date => "date".into(),
        SqlType::Time => "time without time zone".into(),
        SqlType::TimeSpan => "interval".into(),
        SqlType::Timestamp => "timestamp without time zone".into(),
        SqlType::TimestampTz => "timestamp with time zone".into(),
        SqlType::Uuid => "uuid".into(),
        SqlType::Json => "json".into(),
        SqlType::Jsonb => "jsonb".into(),
        SqlType::Money => "money".into(),
        SqlType::Interval => "interval".into(),
        SqlType::TimeTz => "time with time zone".into(),
        SqlType::Array(elem) => format!("{}[]", pg_type_name(elem)?),
        SqlType::Enum(_) | SqlType::Other(_) => return None,
    })
}

/// Whether altering a column of PostgreSQL type `existing` to the type of `t` keeps every
/// value it holds exactly (so the sink may follow a source column that widened).
pub(super) fn widens(existing: &str, t: &SqlType) -> bool {
    let numeric = |s: &str| -> Option<(u32, u32)> {
        let inner = s.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = inner.split_once(',')?;
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    // Integer digits each integer type needs.
    let digits = match existing {
        "smallint" => Some((5, 0)),
        "integer" => Some((10, 0)),
        "bigint" => Some((19, 0)),
        e => numeric(e).map(|(p, s)| (p - s, s)),
    };
    match t {
        // Text holds the text form of anything, exactly.
        SqlType::Text => true,
        SqlType::Int32 => existing == "smallint",
        SqlType::Int64 => matches!(existing, "smallint" | "integer"),
        SqlType::Float64 => matches!(existing, "real" | "smallint" | "integer"),
        SqlType::Numeric => digits.is_some(),
        SqlType::Decimal { precision, scale } => {
            digits.is_some_and(|(int, frac)| *scale >= frac && precision - scale >= int)
        }
        SqlType::Timestamp | SqlType::TimestampTz => existing == "date",
        // Every time of day is an interval.
        SqlType::TimeSpan => existing == "time without time zone",
        _ => false,
    }
}

/// Whether a column of PostgreSQL type `existing` holds every value of `t` unchanged.
pub(super) fn holds(existing: &str, t: &SqlType) -> bool {
    let Some(wanted) = pg_type_name(t) else {
        // Named types travel as text: text holds them, and so does the type itself.
        return existing == "text"
            || matches!(t, SqlType::Enum(n) | SqlType::Other(n) if n == existing);
    };
    if existing == wanted {
        return true;
    }
    let numeric = |s: &str| -> Option<(u32, u32)> {
        let inner = s.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = inner.split_once(',')?;
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    match t {
        SqlType::Int16 => matches!(existing, "integer" | "bigint" | "numeric"),
        SqlType::Int32 => matches!(existing, "bigint" | "numeric"),
        SqlType::Int64 => existing == "numeric",
        SqlType::Float32 => existing == "double precision",
        SqlType::Decimal { precision, scale } => {
            existing == "numeric"
                || numeric(existing).is_some_and(|(p, s)| s == *scale && p - s >= precision - scale)
        }
        SqlType::Text | SqlType::Interval | SqlType::TimeTz | SqlType::Numeric => {
            existing == "text"
        }
        _ => false,
    }
}

impl PostgresSink {
    /// What keeps the sink's table for `target` (a scheme's target, before the sink's own
    /// `schema` override) from taking its rows. Empty when it can, or when the table does not
    /// exist and the sink creates tables.
    pub async fn check_target(
        &mut self,
        target: &TableSchema,
    ) -> Result<Vec<TargetProblem>, SinkError> {
        self.ensure_connected().await?;
        let id = self.state.target_id(&target.id);
        let qualified = format!("{}.{}", quote(&id.namespace), quote(&id.name));
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                        a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', \
                        coalesce(a.attnum = ANY(i.indkey), false) \
                 FROM pg_attribute a \
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&qualified],
            )
            .await?;
        let mut problems = Vec::new();
        let table_at = || "table".to_string();
        if rows.is_empty() {
            if !self.state.config.create_tables {
                problems.push(TargetProblem {
                    at: table_at(),
                    message: format!("{id} does not exist in sink {}", self.state.name),
                    fix: format!(
                        "create it, or set sinks.{}.create_tables = true so Sluice creates it",
                        self.state.name
                    ),
                });
            }
            return Ok(problems);
        }
        struct Existing {
            name: String,
            ty: String,
            not_null: bool,
            has_default: bool,
            key: bool,
        }
        let existing: Vec<Existing> = rows
            .iter()
            .map(|r| Existing {
                name: r.get(0),
                ty: r.get(1),
                not_null: r.get(2),
                has_default: r.get(3),
                key: r.get(4),
            })
            .collect();
        for c in &target.columns {
            match existing.iter().find(|e| e.name == c.name) {
                None if !self.state.config.create_tables => problems.push(TargetProblem {
                    at: c.name.clone(),
                    message: format!("{id} has no column `{}`", c.name),
                    fix: format!(
                        "add it (ALTER TABLE {qualified} ADD COLUMN {} {}), or set sinks.{}.create_tables = true",
                        quote(&c.name),
                        pg_type_name(&c.sql_type).unwrap_or_else(|| "text".into()),
                        self.state.name
                    ),
                }),
                None => {}
                Some(e) if !holds(&e.ty, &c.sql_type) => {
                    let wanted = pg_type_name(&c.sql_type).unwrap_or_else(|| c.sql_type.canonical());
                    problems.push(TargetProblem {
                        at: c.name.clone(),
                        message: format!(
                            "the sink column is {}, and the scheme writes {} ({wanted}) values into it",
                            e.ty,
                            c.sql_type.canonical()
                        ),
                        fix: format!(
                            "ALTER TABLE {qualified} ALTER COLUMN {} TYPE {wanted}, or change the field's type to match",
                            quote(&c.name)
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        for e in &existing {
            if e.not_null && !e.has_default && !target.columns.iter().any(|c| c.name == e.name) {
                problems.push(TargetProblem {
                    at: e.name.clone(),
                    message: format!(
                        "{id}.{} is NOT NULL without a default, and no field of the scheme writes it",
                        e.name
                    ),
                    fix: "add a field for it, or give the column a default".into(),
                });
            }
        }
        let mut sink_key: Vec<&str> = existing
            .iter()
            .filter(|e| e.key)
            .map(|e| e.name.as_str())
            .collect();
        let mut scheme_key: Vec<&str> = target.key_columns().map(|c| c.name.as_str()).collect();
        sink_key.sort_unstable();
        scheme_key.sort_unstable();
        if sink_key != scheme_key {
            problems.push(TargetProblem {
                at: table_at(),
                message: format!(
                    "{id}'s primary key is ({}), and the scheme's key is ({})",
                    sink_key.join(", "),
                    scheme_key.join(", ")
                ),
                fix: "upserts match rows by the primary key: make them the same (\"sluice.key\", or the table's PRIMARY KEY)".into(),
            });
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_keeps_every_value() {
        assert!(widens("integer", &SqlType::Int64));
        assert!(widens("integer", &SqlType::Text));
        assert!(widens(
            "numeric(10,2)",
            &SqlType::Decimal {
                precision: 12,
                scale: 2
            }
        ));
        assert!(!widens(
            "numeric(10,2)",
            &SqlType::Decimal {
                precision: 10,
                scale: 1
            }
        ));
        assert!(widens(
            "integer",
            &SqlType::Decimal {
                precision: 12,
                scale: 2
            }
        ));
        assert!(!widens(
            "bigint",
            &SqlType::Decimal {
                precision: 12,
                scale: 2
            }
        ));
        assert!(!widens("text", &SqlType::Int32));
        assert!(!widens("bigint", &SqlType::Int32));
    }

    #[test]
    fn wider_columns_hold_narrower_values() {
        assert!(holds("bigint", &SqlType::Int32));
        assert!(!holds("integer", &SqlType::Int64));
        let d = |precision, scale| SqlType::Decimal { precision, scale };
        assert!(holds("numeric(14,2)", &d(12, 2)));
        assert!(!holds("numeric(12,3)", &d(12, 2)));
        assert!(!holds("numeric(10,2)", &d(12, 2)));
        assert!(holds("text", &SqlType::Enum("public.mood".into())));
        assert!(holds("public.mood", &SqlType::Enum("public.mood".into())));
        assert!(holds(
            "integer[]",
            &SqlType::Array(Box::new(SqlType::Int32))
        ));
        assert!(!holds("text", &SqlType::Int32));
    }
}
