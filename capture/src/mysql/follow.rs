//! Where a MySQL/MariaDB source's changes stand, for `sluice verify`: the binlog's end now,
//! the position capture has confirmed (its state record), and whether a table has changes in
//! the binlog between the two.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use sluice_connect::transport::Transport;
use sluice_schemas::TableId;

use super::config::MysqlSourceConfig;
use super::mysql_error;
use super::position::{split_file, MysqlState};
use super::preflight::{master_status, opts};
use crate::state::read_latest_state;
use crate::CaptureError;

/// The most binlog events read from one file.
const EVENTS_READ: usize = 200_000;

/// A binlog position: file name and offset, ordered by the file's sequence number, then the
/// offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
}

impl BinlogPosition {
    fn key(&self) -> (u32, u64) {
        (split_file(&self.file).map_or(0, |(_, seq)| seq), self.pos)
    }

    /// Whether it is at or past `other`.
    pub fn reached(&self, other: &BinlogPosition) -> bool {
        self.key() >= other.key()
    }
}

impl std::fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// The end of the source's binlog now: every transaction committed before the call ends at or
/// before it.
pub async fn binlog_now(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
) -> Result<BinlogPosition, CaptureError> {
    let mut conn = Conn::new(opts(name, config, password)?)
        .await
        .map_err(mysql_error)?;
    let status = master_status(&mut conn).await;
    let _ = conn.disconnect().await;
    let (file, pos) = status?;
    Ok(BinlogPosition { file, pos })
}

/// The position capture of `source` has confirmed (everything before it is delivered: in
/// Kafka, or in local mode at every sink), from its state record; `None` before it wrote one.
pub async fn confirmed(
    transport: &Transport,
    state_topic: &str,
    source: &str,
) -> Result<Option<BinlogPosition>, CaptureError> {
    let Some(bytes) = read_latest_state(transport, state_topic, source).await? else {
        return Ok(None);
    };
    let state: MysqlState = serde_json::from_slice(&bytes).map_err(|e| {
        CaptureError::Definite(format!(
            "the capture state of source {source} is unreadable ({e})"
        ))
    })?;
    Ok(state.position.map(|packed| {
        let (seq, pos) = super::position::unpack(packed);
        BinlogPosition {
            file: super::position::file_name(&state.file_base, seq),
            pos,
        }
    }))
}

/// Whether the binlog holds a change of `table` (a row event, or a statement naming it)
/// between `from` and `to`, read with `SHOW BINLOG EVENTS` (capture's user has the privilege
/// it needs).
pub async fn changes_between(
    name: &str,
    config: &MysqlSourceConfig,
    password: Option<&str>,
    (from, to): (&BinlogPosition, &BinlogPosition),
    table: &TableId,
) -> Result<bool, CaptureError> {
    let mut conn = Conn::new(opts(name, config, password)?)
        .await
        .map_err(mysql_error)?;
    let result = async {
        let files: Vec<Row> = conn.query("SHOW BINARY LOGS").await.map_err(mysql_error)?;
        let qualified = format!("{}.{}", table.namespace, table.name);
        let mapped = format!("({qualified})");
        let quoted = format!("`{}`.`{}`", table.namespace, table.name);
        let in_database = format!("use `{}`", table.namespace);
        for row in files {
            let file: String = row.get(0).unwrap_or_default();
            let here = BinlogPosition {
                file: file.clone(),
                pos: u64::MAX,
            };
            // Files wholly before `from`, or after `to`, are not read.
            let seq = |f: &str| split_file(f).map(|(_, s)| s);
            if !here.reached(from) || seq(&file) > seq(&to.file) {
                continue;
            }
            let start = if file == from.file { from.pos } else { 4 };
            let events: Vec<Row> = conn
                .query(format!(
                    "SHOW BINLOG EVENTS IN '{}' FROM {start} LIMIT {EVENTS_READ}",
                    file.replace('\'', "''")
                ))
                .await
                .map_err(mysql_error)?;
            // (More than that between: taken as changed, not read further.)
            if events.len() >= EVENTS_READ {
                return Ok(true);
            }
            for event in events {
                let pos: u64 = event.get(1).unwrap_or(0);
                if file == to.file && pos >= to.pos {
                    break;
                }
                let kind: String = event.get(2).unwrap_or_default();
                // (Bytes: a statement's text may hold binary literals, not UTF-8.)
                let info: Vec<u8> = event.get(5).unwrap_or_default();
                let info = String::from_utf8_lossy(&info);
                let touches = match kind.as_str() {
                    "Table_map" => info.contains(&mapped),
                    // A statement (a truncate, DDL) naming the table: qualified, or in its
                    // database (`use `db`; …`).
                    "Query" => {
                        info.contains(&qualified)
                            || info.contains(&quoted)
                            || (info.starts_with(&in_database) && names(&info, &table.name))
                    }
                    _ => false,
                };
                if touches {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
    .await;
    let _ = conn.disconnect().await;
    result
}

/// Whether `statement` has `name` as a word (an identifier, maybe quoted).
fn names(statement: &str, name: &str) -> bool {
    statement
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .any(|word| word.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_names_a_table_as_a_word_only() {
        assert!(names("use `shop`; TRUNCATE TABLE `items`", "items"));
        assert!(names("use `shop`; truncate items", "items"));
        assert!(!names("use `shop`; CREATE TABLE items2 (id int)", "items"));
        assert!(!names(
            "use `shop`; INSERT INTO line_items VALUES (1)",
            "items"
        ));
    }

    #[test]
    fn positions_order_by_file_then_offset() {
        let at = |file: &str, pos| BinlogPosition {
            file: file.into(),
            pos,
        };
        assert!(at("binlog.000002", 4).reached(&at("binlog.000001", 900)));
        assert!(at("binlog.000001", 900).reached(&at("binlog.000001", 900)));
        assert!(!at("binlog.000001", 899).reached(&at("binlog.000001", 900)));
    }
}
