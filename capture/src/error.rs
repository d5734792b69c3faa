use sluice_schemas::AvroError;

use crate::postgres::decoder::DecodeError;
use crate::postgres::replication::ReplicationError;

/// Everything that can stop a capture. [`CaptureError::is_transient`] is the one place that
/// decides whether to retry with backoff or to stop with the message.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("source query failed: {0}{detail}", detail = detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Avro(#[from] AvroError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Registry(#[from] sluice_connect::registry::RegistryError),
    /// (Not marked as the source error: its message already says everything, and error
    /// chains would print it twice.)
    #[error("source: {}", mysql_detail(.0))]
    Mysql(mysql_async::Error),
    /// A precondition or configuration problem an operator must fix; the message says how.
    #[error("{0}")]
    Definite(String),
    /// The source closed the replication stream (a restart, a failover, a replica kicked
    /// off): capture reconnects.
    #[error("the source ended the {0} stream")]
    StreamEnded(&'static str),
    /// Capture must start over to read a table again (a partition with rows of its own was
    /// attached to it); the state record already says which.
    #[error("{0}")]
    Resnapshot(String),
    /// A transaction whose commit the log holds is still not visible to other sessions'
    /// queries (its backend has not finished committing; a synchronous standby that does not
    /// answer holds it there): its tables cannot be described from the catalog yet, so
    /// capture reads it again after a pause rather than describe them as they were before it.
    #[error(
        "transaction {xid} is committed in the log but after {waited_s} s still not visible to \
         queries{holder}: the catalog would describe its tables as they were before it, so \
         capture reads it again (a backend waiting on SyncRep goes on once its synchronous standby \
         answers or synchronous_standby_names no longer names one that is down)"
    )]
    NotYetVisible {
        xid: u32,
        waited_s: u64,
        /// The committing backend and what it waits on, where the server shows them.
        holder: String,
    },
}

impl CaptureError {
    /// What the error is about, as `/readyz` names it: `broker` or `source`.
    pub fn dependency(&self) -> &'static str {
        match self {
            // The registry is part of how events reach consumers, as the broker is.
            CaptureError::Kafka(_) | CaptureError::Registry(_) => "broker",
            _ => "source",
        }
    }
}

/// A MySQL error's message; for a refused certificate, rustls' reason and what to check.
fn mysql_detail(e: &mysql_async::Error) -> String {
    match crate::tls::tls_failure(e) {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => format!(
            "TLS refused the server's certificate: {tls} (check tls.ca_file, and that the url's \
             host is a name the certificate carries, or use tls.mode = \"verify-ca\")"
        ),
        Some(tls) => format!("TLS failed: {tls}"),
        None => e.to_string(),
    }
}

impl From<mysql_async::Error> for CaptureError {
    fn from(e: mysql_async::Error) -> CaptureError {
        CaptureError::Mysql(e)
    }
}

/// What `tokio_postgres::Error`'s own message leaves to its source: the server's message,
/// or why TLS failed (and what to check when it refused the server's certificate).
fn detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(": {}: {}", db.severity(), db.message());
    }
    match crate::tls::tls_failure(e) {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => format!(
            ": {tls} (the server's certificate was refused: check tls.ca_file, and that the url's \
             host is a name the certificate carries, or use tls.mode = \"verify-ca\")"
        ),
        Some(tls) => format!(": {tls}"),
        None => String::new(),
    }
}

impl CaptureError {
    /// Whether retrying (after backoff) can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Replication(ReplicationError::Io(_)) => true,
            CaptureError::Replication(ReplicationError::Server { code, .. }) => {
                sluice_schemas::dberror::sqlstate::is_transient(code)
            }
            CaptureError::Replication(_) => false,
            CaptureError::Postgres(e) => match e.code() {
                Some(code) => sluice_schemas::dberror::sqlstate::is_transient(code.code()),
                // No SQLSTATE: the connection broke, unless TLS refused the server.
                None => crate::tls::tls_failure(e).is_none(),
            },
            CaptureError::Kafka(_)
            | CaptureError::Resnapshot(_)
            | CaptureError::StreamEnded(_)
            | CaptureError::NotYetVisible { .. } => true,
            CaptureError::Registry(e) => e.is_transient(),
            CaptureError::Mysql(e) => match e {
                mysql_async::Error::Server(s) => {
                    sluice_schemas::dberror::mysql::is_transient(s.code)
                }
                // A connection cut is worth retrying; a refused certificate is not.
                mysql_async::Error::Io(mysql_async::IoError::Io(_)) => {
                    crate::tls::tls_failure(e).is_none()
                }
                _ => false,
            },
            CaptureError::Decode(_) | CaptureError::Avro(_) | CaptureError::Definite(_) => false,
        }
    }
}
