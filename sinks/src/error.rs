use sluice_connect::tls::tls_failure;

/// Sink failures. [`SinkError::is_transient`] decides retry versus stop, in one place.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// (Not marked as the source error: its message says everything, and error chains would
    /// print it twice.)
    #[error("sink database: {0}")]
    Mysql(mysql_async::Error),
    /// A value no column of its type in the sink database can hold (the row is refused).
    #[error("{0}")]
    Value(String),
    /// A problem an operator must fix (bad config, no access); says how.
    #[error("{0}")]
    Definite(String),
    /// A problem with one target table (its DDL failed, it is missing and may not be
    /// created, it has no key): only that table's changes wait, the others go on. `table` is
    /// the id of the changes' table ([`sluice_schemas::RowChange::table`]).
    #[error("{message}")]
    Table {
        table: sluice_schemas::TableId,
        message: String,
    },
}

/// A connection error as the operator should see it: a certificate TLS refused is definite,
/// and says which settings to check.
pub(crate) fn connect_error(name: &str, e: SinkError) -> SinkError {
    let tls = match &e {
        SinkError::Postgres(pg) => tls_failure(pg),
        SinkError::Mysql(my) => tls_failure(my),
        _ => None,
    };
    match tls {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => SinkError::Definite(format!(
            "sinks.{name}: TLS refused the sink's certificate: {tls} (check sinks.{name}.tls.ca_file, \
             and that the url's host is a name the certificate carries, or use tls.mode = \"verify-ca\")"
        )),
        Some(tls) => SinkError::Definite(format!("sinks.{name}: TLS failed: {tls}")),
        None => e,
    }
}

impl From<mysql_async::Error> for SinkError {
    fn from(e: mysql_async::Error) -> SinkError {
        SinkError::Mysql(e)
    }
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Postgres(e) => match e.code() {
                Some(code) => sluice_schemas::dberror::sqlstate::is_transient(code.code()),
                // No SQLSTATE: the connection broke, unless TLS refused the server.
                None => tls_failure(e).is_none(),
            },
            SinkError::Mysql(e) => match e {
                // A connection cut is worth retrying; a refused certificate is not.
                mysql_async::Error::Io(mysql_async::IoError::Io(_)) => tls_failure(e).is_none(),
                mysql_async::Error::Io(_) => false,
                mysql_async::Error::Driver(_) => true,
                mysql_async::Error::Server(s) => {
                    sluice_schemas::dberror::mysql::is_transient(s.code)
                }
                _ => false,
            },
            SinkError::Definite(_) | SinkError::Table { .. } | SinkError::Value(_) => false,
        }
    }

    /// Whether the database refused a row's data (SQLSTATE class 22, data exception: a value
    /// out of range or of the wrong form; class 23, integrity: a constraint the row breaks).
    /// Such a change is poison: retrying cannot help, other changes may still apply.
    pub fn rejects_a_row(&self) -> bool {
        match self {
            SinkError::Value(_) => true,
            // MySQL reports many of these as HY000: by error code.
            SinkError::Mysql(mysql_async::Error::Server(s)) => matches!(
                s.code,
                1048 | 1062
                    | 1264
                    | 1265
                    | 1292
                    | 1366
                    | 1367
                    | 1406
                    | 1411
                    | 1451
                    | 1452
                    | 1690
                    | 3140
                    | 3819
                    | 4025
            ),
            _ => self
                .sqlstate()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        }
    }

    /// Whether the refused change refers to a row the sink does not have (an insert or update
    /// of a child row before its parent), or deletes a row others still refer to: a foreign
    /// key, which a change of another table on its way may satisfy.
    pub fn refers_to_a_missing_row(&self) -> bool {
        match self {
            SinkError::Mysql(mysql_async::Error::Server(s)) => {
                matches!(s.code, 1216 | 1217 | 1451 | 1452)
            }
            _ => self.sqlstate() == Some("23503"),
        }
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
            SinkError::Mysql(mysql_async::Error::Server(s)) => {
                format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state)
            }
            SinkError::Mysql(e) => e.to_string(),
            SinkError::Definite(m) | SinkError::Table { message: m, .. } | SinkError::Value(m) => {
                m.clone()
            }
        }
    }

    /// The SQLSTATE, when the database reported one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SinkError::Postgres(e) => e.code().map(tokio_postgres::error::SqlState::code),
            SinkError::Mysql(mysql_async::Error::Server(s)) => Some(s.state.as_str()),
            _ => None,
        }
    }
}
