//! Row-by-row comparison of a source and a sink table.

use crate::{Postgres, Result};

/// Reads `query` from `db` as text lines (unaligned, `|`-separated), one per row.
pub fn pg_rows(pg: &Postgres, db: &str, query: &str) -> Result<Vec<String>> {
    Ok(pg.psql(db, query)?.lines().map(str::to_string).collect())
}

/// Compares two ordered row listings; the error shows the first difference and the counts.
pub fn compare_rows(source: &[String], sink: &[String]) -> std::result::Result<(), String> {
    for (i, (a, b)) in source.iter().zip(sink).enumerate() {
        if a != b {
            return Err(format!("row {i} differs:\n  source: {a}\n  sink:   {b}"));
        }
    }
    if source.len() != sink.len() {
        let (longer, which) = if source.len() > sink.len() {
            (source, "source")
        } else {
            (sink, "sink")
        };
        let first_extra = &longer[source.len().min(sink.len())];
        return Err(format!(
            "source has {} rows, sink has {}; first row only in the {which}: {first_extra}",
            source.len(),
            sink.len()
        ));
    }
    Ok(())
}
