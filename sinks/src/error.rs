/// Sink failures. [`SinkError::is_transient`] decides retry versus stop, in one place.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A problem an operator must fix (bad config, no access); says how.
    #[error("{0}")]
    Definite(String),
    /// A problem with one target table (its DDL failed, it is missing and may not be
    /// created, it has no key): only that table's changes wait, the others go on. `table` is
    /// the id of the changes' table ([`crate::SinkChange::table`]).
    #[error("{message}")]
    Table {
        table: sluice_schemas::TableId,
        message: String,
    },
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Postgres(e) => match e.code() {
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08")
                        || c.starts_with("57P")
                        || c.starts_with("53")
                        || c == "40001"
                        || c == "40P01"
                }
                None => true,
            },
            SinkError::Definite(_) | SinkError::Table { .. } => false,
        }
    }

    /// Whether the database refused a row's data (SQLSTATE class 22, data exception: a value
    /// out of range or of the wrong form; class 23, integrity: a constraint the row breaks).
    /// Such a change is poison: retrying cannot help, other changes may still apply.
    pub fn rejects_a_row(&self) -> bool {
        self.sqlstate()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    }

    /// What the database said, with the table, column and constraint it named.
    pub fn detail(&self) -> String {
        match self {
            SinkError::Postgres(e) => match e.as_db_error() {
                Some(db) => {
                    let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                    for (what, value) in [
                        ("table", db.table()),
                        ("column", db.column()),
                        ("constraint", db.constraint()),
                        ("detail", db.detail()),
                    ] {
                        if let Some(v) = value {
                            out.push_str(&format!("; {what}: {v}"));
                        }
                    }
                    out
                }
                None => e.to_string(),
            },
            SinkError::Definite(m) | SinkError::Table { message: m, .. } => m.clone(),
        }
    }

    /// The SQLSTATE, when the database reported one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SinkError::Postgres(e) => e.code().map(|c| c.code()),
            SinkError::Definite(_) | SinkError::Table { .. } => None,
        }
    }
}
