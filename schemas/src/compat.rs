//! The compatibility policy between versions of a table's schemas (Confluent's levels), and
//! the reasons, column by column, why a new version breaks it.
//!
//! A table's key and value schemas change when its columns do (added, dropped, renamed,
//! retyped). Under the default, BACKWARD, a consumer that has the new schema must be able to
//! read every event written with the previous one; FORWARD is the other way round; FULL is
//! both; the `_TRANSITIVE` levels check against every earlier version instead of the latest;
//! NONE checks nothing. Resolution is [`crate::resolve`]'s, field by field, on the row record
//! (`Value`) and the key record.

use std::fmt;
use std::str::FromStr;

use crate::resolve::{resolve, AvroType};
use crate::table::TableSchema;

/// Which earlier versions a new version must be compatible with, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compatibility {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    /// Confluent's name for the level (`BACKWARD_TRANSITIVE`).
    pub fn name(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether every earlier version counts, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Checks `new` against the earlier versions of its table (oldest first). Versions equal
    /// to `new` are skipped: re-publishing a known version is always allowed.
    pub fn check(self, history: &[&TableSchema], new: &TableSchema) -> Result<(), Incompatible> {
        if self == Compatibility::None || history.is_empty() {
            return Ok(());
        }
        let against: Vec<(usize, &TableSchema)> = if self.transitive() {
            history.iter().copied().enumerate().collect()
        } else {
            vec![(history.len() - 1, history[history.len() - 1])]
        };
        for (index, old) in against.into_iter().rev() {
            if old == new {
                continue;
            }
            let mut problems = Vec::new();
            if self.backward() {
                problems.extend(
                    can_read(old, new).into_iter().map(|p| {
                        format!("consumers of the new schema cannot read older events: {p}")
                    }),
                );
            }
            if self.forward() {
                problems.extend(
                    can_read(new, old).into_iter().map(|p| {
                        format!("consumers of the older schema cannot read new events: {p}")
                    }),
                );
            }
            if !problems.is_empty() {
                return Err(Incompatible {
                    table: new.id.to_string(),
                    policy: self,
                    version: index + 1,
                    problems,
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compatibility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "NONE" => Compatibility::None,
            "BACKWARD" => Compatibility::Backward,
            "BACKWARD_TRANSITIVE" => Compatibility::BackwardTransitive,
            "FORWARD" => Compatibility::Forward,
            "FORWARD_TRANSITIVE" => Compatibility::ForwardTransitive,
            "FULL" => Compatibility::Full,
            "FULL_TRANSITIVE" => Compatibility::FullTransitive,
            _ => {
                return Err(format!(
                    "unknown compatibility \"{s}\"; expected one of backward, backward_transitive, \
                     forward, forward_transitive, full, full_transitive, none"
                ))
            }
        })
    }
}

/// The compatibility level for each table: one default, and overrides by table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaPolicy {
    pub default: Compatibility,
    pub overrides: std::collections::HashMap<crate::table::TableId, Compatibility>,
}

impl SchemaPolicy {
    pub fn for_table(&self, table: &crate::table::TableId) -> Compatibility {
        self.overrides.get(table).copied().unwrap_or(self.default)
    }
}

/// A new version of a table's schema that breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    pub table: String,
    pub policy: Compatibility,
    /// The 1-based version it breaks with.
    pub version: usize,
    /// One line per offending column.
    pub problems: Vec<String>,
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the new schema of {} is not {} compatible with its version {}: {}",
            self.table,
            self.policy,
            self.version,
            self.problems.join("; ")
        )
    }
}

impl std::error::Error for Incompatible {}

/// Why a reader with `reader`'s schema cannot read events written with `writer`'s, one line per
/// column. Empty when it can. Key columns are required fields in both the row and the key
/// record, so checking the row record covers the key record too.
pub fn can_read(writer: &TableSchema, reader: &TableSchema) -> Vec<String> {
    let mut problems = Vec::new();
    for r in &reader.columns {
        let r_type = AvroType::of_column(&r.sql_type, r.key);
        match writer.columns.iter().find(|w| w.name == r.name) {
            None if r.key => problems.push(format!(
                "key column `{}` is new, and a key field has no default for events written without it",
                r.name
            )),
            None => {} // a nullable field defaults to null
            Some(w) => {
                let w_type = AvroType::of_column(&w.sql_type, w.key);
                if let Err(e) = resolve(&w_type, &r_type) {
                    let what = if w.key != r.key {
                        format!(
                            "column `{}` {} the key",
                            r.name,
                            if r.key { "joined" } else { "left" }
                        )
                    } else {
                        format!("column `{}` changed type", r.name)
                    };
                    problems.push(format!("{what}: {e}"));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Column, SqlType, TableId};

    fn table(cols: &[(&str, SqlType, bool)]) -> TableSchema {
        TableSchema {
            id: TableId::new("public", "orders"),
            columns: cols
                .iter()
                .map(|(n, t, k)| Column {
                    name: n.to_string(),
                    sql_type: t.clone(),
                    key: *k,
                    missing: None,
                })
                .collect(),
        }
    }

    fn v1() -> TableSchema {
        table(&[
            ("id", SqlType::Int64, true),
            ("qty", SqlType::Int32, false),
            ("note", SqlType::Text, false),
        ])
    }

    #[test]
    fn added_and_dropped_nullable_columns_are_fully_compatible() {
        let v2 = table(&[
            ("id", SqlType::Int64, true),
            ("qty", SqlType::Int32, false),
            ("region", SqlType::Text, false),
        ]);
        for policy in [
            Compatibility::Backward,
            Compatibility::Forward,
            Compatibility::FullTransitive,
        ] {
            assert_eq!(policy.check(&[&v1()], &v2), Ok(()), "{policy}");
        }
    }

    #[test]
    fn widening_is_backward_but_not_forward_compatible() {
        let v2 = table(&[
            ("id", SqlType::Int64, true),
            ("qty", SqlType::Int64, false),
            ("note", SqlType::Text, false),
        ]);
        assert_eq!(Compatibility::Backward.check(&[&v1()], &v2), Ok(()));
        let e = Compatibility::Forward.check(&[&v1()], &v2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the new schema of public.orders is not FORWARD compatible with its version 1: \
             consumers of the older schema cannot read new events: column `qty` changed type: \
             long cannot be read as int (a narrowing conversion could lose values)"
        );
    }

    #[test]
    fn a_retype_avro_cannot_resolve_breaks_backward() {
        let v2 = table(&[
            ("id", SqlType::Int64, true),
            ("qty", SqlType::Text, false),
            ("note", SqlType::Text, false),
        ]);
        let e = Compatibility::Backward.check(&[&v1()], &v2).unwrap_err();
        assert_eq!(e.version, 1);
        assert!(
            e.problems[0].contains("column `qty` changed type: int cannot be read as string"),
            "{e}"
        );
        assert_eq!(Compatibility::None.check(&[&v1()], &v2), Ok(()));
    }

    #[test]
    fn a_new_key_column_breaks_backward() {
        let v2 = table(&[
            ("id", SqlType::Int64, true),
            ("tenant", SqlType::Int32, true),
            ("qty", SqlType::Int32, false),
        ]);
        let e = Compatibility::Backward.check(&[&v1()], &v2).unwrap_err();
        assert!(e.problems[0].contains("key column `tenant` is new"), "{e}");
    }

    #[test]
    fn transitive_levels_check_every_earlier_version() {
        let v2 = table(&[("id", SqlType::Int64, true), ("note", SqlType::Text, false)]);
        // qty comes back as text: v2 had no qty, so only v1 objects.
        let v3 = table(&[("id", SqlType::Int64, true), ("qty", SqlType::Text, false)]);
        assert_eq!(Compatibility::Backward.check(&[&v1(), &v2], &v3), Ok(()));
        let e = Compatibility::BackwardTransitive
            .check(&[&v1(), &v2], &v3)
            .unwrap_err();
        assert_eq!(e.version, 1);
    }

    #[test]
    fn names_parse_in_any_case() {
        assert_eq!(
            "full_transitive".parse::<Compatibility>(),
            Ok(Compatibility::FullTransitive)
        );
        assert_eq!("BACKWARD".parse(), Ok(Compatibility::Backward));
        assert!("sideways".parse::<Compatibility>().is_err());
    }
}
