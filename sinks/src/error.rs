/// Sink failures. [`SinkError::is_transient`] decides retry versus stop, in one place.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A problem an operator must fix (incompatible target table, bad config); says how.
    #[error("{0}")]
    Definite(String),
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
            SinkError::Definite(_) => false,
        }
    }

    /// The SQLSTATE, when the database reported one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SinkError::Postgres(e) => e.code().map(|c| c.code()),
            SinkError::Definite(_) => None,
        }
    }
}
