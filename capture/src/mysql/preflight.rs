//! Connecting to the source and checking what binlog capture needs of it.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row, Value};
use sluice_schemas::TableId;

use super::types::{Charset, Collations};
use crate::CaptureError;

use super::config::MysqlSourceConfig;
use super::mysql_error;

/// Checks what binlog capture needs; returns the source's `server_id`.
pub(super) async fn preflight(
    conn: &mut Conn,
    tables: &[TableId],
    replica_id: u32,
) -> Result<u32, CaptureError> {
    let row: Row = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id",
        )
        .await
        .map_err(mysql_error)?
        .ok_or_else(|| CaptureError::Definite("the server returned no settings".into()))?;
    let get = |i: usize| -> String {
        match row.as_ref(i) {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::Int(v)) => v.to_string(),
            Some(Value::UInt(v)) => v.to_string(),
            _ => String::new(),
        }
    };
    let mut problems = Vec::new();
    if get(0) != "1" {
        problems.push(
            "the binary log is off: start the server with log_bin (e.g. log-bin=mysql-bin)"
                .to_string(),
        );
    }
    for (i, name, want) in [
        (1, "binlog_format", "ROW"),
        (2, "binlog_row_image", "FULL"),
        (3, "binlog_row_metadata", "FULL"),
    ] {
        if !get(i).eq_ignore_ascii_case(want) {
            problems.push(format!(
                "{name} is {} but must be {want}: SET GLOBAL {name} = '{want}' and put it in the server's config",
                get(i)
            ));
        }
    }
    let server_id: u32 = get(4).parse().unwrap_or(0);
    if server_id == replica_id {
        problems.push(format!(
            "server_id = {replica_id} is the source's own server_id; give Sluice a different one"
        ));
    }
    if let Err(e) = conn.query_drop("SHOW BINARY LOGS").await {
        problems.push(format!(
            "cannot list binary logs ({e}): GRANT REPLICATION CLIENT (MariaDB 10.5+: BINLOG MONITOR) and REPLICATION SLAVE ON *.* TO the user"
        ));
    }
    for t in tables {
        let key: Option<(u64, u64)> = conn
            .exec_first(
                "SELECT COUNT(*), SUM(COLUMN_KEY = 'PRI') FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.namespace, &t.name),
            )
            .await
            .map_err(mysql_error)?
            .map(|(n, k): (u64, Option<u64>)| (n, k.unwrap_or(0)));
        match key {
            None | Some((0, _)) => problems.push(format!(
                "table {t} does not exist (or the user cannot see it): check sources.*.tables"
            )),
            Some((_, 0)) => problems.push(format!(
                "table {t} has no primary key, so its rows cannot be told apart: add one"
            )),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(server_id)
    } else {
        Err(CaptureError::Definite(format!(
            "the source is not ready for capture:\n  - {}",
            problems.join("\n  - ")
        )))
    }
}

pub(super) async fn load_collations(conn: &mut Conn) -> Result<Collations, CaptureError> {
    // MariaDB lists some collations without an id or character set.
    let rows: Vec<(Option<u64>, Option<String>)> = conn
        .query("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS")
        .await
        .map_err(mysql_error)?;
    Ok(Collations(
        rows.into_iter()
            .filter_map(|(id, cs)| Some((u16::try_from(id?).ok()?, Charset::from_name(&cs?))))
            .collect(),
    ))
}

/// The source's identity for its epoch (see [`crate::epoch`]): server id, UUID (MySQL; none
/// in MariaDB) and binlog base name — another server after a failover, or a rebuilt one.
pub(super) async fn identify(conn: &mut Conn) -> Result<String, CaptureError> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('server_id', 'server_uuid', 'log_bin_basename')",
        )
        .await
        .map_err(mysql_error)?;
    let mut parts: Vec<String> = rows.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.sort();
    Ok(format!("mysql {}", parts.join(" ")))
}

pub(super) async fn master_status(conn: &mut Conn) -> Result<(String, u64), CaptureError> {
    // MySQL 8.4 renamed it; MariaDB and older MySQL know only the first.
    let row: Row = match conn.query_first("SHOW MASTER STATUS").await {
        Ok(row) => row,
        Err(mysql_async::Error::Server(_)) => conn
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .map_err(mysql_error)?,
        Err(e) => return Err(mysql_error(e)),
    }
    .ok_or_else(|| {
        CaptureError::Definite("SHOW MASTER STATUS returned nothing: is log_bin on?".into())
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(4);
    Ok((file, pos))
}

/// Connection options for a source, TLS included.
pub(super) fn opts(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
) -> Result<Opts, CaptureError> {
    let opts = Opts::from_url(&config.url).map_err(|e| {
        CaptureError::Definite(format!(
            "sources.{name}.url is not a valid mysql:// url: {e}"
        ))
    })?;
    let mut builder = OptsBuilder::from_opts(opts).prefer_socket(false);
    if let Some(pw) = &password {
        builder = builder.pass(Some(pw.to_string()));
    }
    // Checks the files (and fails with the field's name) before any connection.
    config
        .tls
        .client_config(&format!("sources.{name}.tls"))
        .map_err(CaptureError::Definite)?;
    Ok(builder.ssl_opts(config.tls.mysql_ssl_opts()).into())
}
