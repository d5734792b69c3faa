//! `[sources.<name>]` with `kind = "mysql"`.

use serde::Deserialize;
use sluice_schemas::TableId;

use crate::spill::SpillConfig;
use crate::state::SnapshotMode;
use crate::tls::TlsConfig;

/// A MySQL/MariaDB source (`[sources.<name>]` with `kind = "mysql"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// `mysql://user@host:port`. The user needs REPLICATION SLAVE and REPLICATION CLIENT
    /// (MariaDB: BINLOG MONITOR) and SELECT on the tables. The password may instead come
    /// from `SLUICE_SOURCES_<NAME>_PASSWORD`.
    pub url: String,
    /// Tables to capture, as `database.table`.
    pub tables: Vec<String>,
    /// Prefix of this source's table topics (Debezium's `topic.prefix`): topics are
    /// `<topic_prefix>.<schema>.<table>` (MySQL: `<topic_prefix>.<database>.<table>`).
    /// Default: `<kafka.topic_prefix>.<source name>`, so two sources never share a topic.
    /// Set it to `kafka.topic_prefix`'s value to keep publishing to the topics of a
    /// deployment made before topic names carried the source (capture refuses to start
    /// without it while such topics exist).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// The replica `server_id` Sluice registers with; unique among the server's replicas.
    pub server_id: u32,
    /// `initial` (default) or `never`.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// TLS to the source (`mode`, `ca_file`, `cert_file`, `key_file`), as for PostgreSQL.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where the changes of XA transactions wait for their commit: memory, then a file.
    #[serde(default)]
    pub spill: SpillConfig,
    /// The table `sluice verify --repair` signals capture through, as `database.table`
    /// (MySQL/MariaDB have no logical-decoding messages): a request is a row written and
    /// deleted in one transaction, which capture reads from the binlog. `sluice verify`
    /// creates it when missing. Unset, a repair of this source only reports what it would
    /// send.
    #[serde(default)]
    pub signal_table: Option<String>,
}

impl MysqlSourceConfig {
    /// The signal table, parsed (`None` when unset or malformed; `validate` names the latter).
    pub fn signal_table_id(&self) -> Option<TableId> {
        self.signal_table.as_deref().and_then(TableId::parse)
    }

    /// The configured tables, parsed; the error names the bad entry.
    pub fn table_ids(&self) -> Result<Vec<TableId>, String> {
        self.tables
            .iter()
            .map(|t| {
                TableId::parse(t).ok_or_else(|| format!("`{t}` is not of the form database.table"))
            })
            .collect()
    }
}

impl crate::source::Source for MysqlSourceConfig {
    fn table_ids(&self) -> Result<Vec<TableId>, String> {
        MysqlSourceConfig::table_ids(self)
    }

    fn topic_prefix(&self) -> Option<&str> {
        self.topic_prefix.as_deref()
    }

    fn validate(&self, name: &str, problems: &mut Vec<String>) {
        if self.tables.is_empty() {
            problems.push(format!(
                "sources.{name}.tables must list at least one \"database.table\""
            ));
        }
        if let Err(e) = MysqlSourceConfig::table_ids(self) {
            problems.push(format!("sources.{name}.tables: {e}"));
        }
        if let Some(t) = &self.signal_table {
            match TableId::parse(t) {
                None => problems.push(format!(
                    "sources.{name}.signal_table: `{t}` is not of the form database.table"
                )),
                Some(id)
                    if self
                        .tables
                        .iter()
                        .any(|c| TableId::parse(c) == Some(id.clone())) =>
                {
                    problems.push(format!(
                        "sources.{name}.signal_table: `{t}` is a captured table; name a table of its own (sluice verify makes it)"
                    ));
                }
                Some(_) => {}
            }
        }
        if let Err(e) = self.tls.client_config(&format!("sources.{name}.tls")) {
            problems.push(e);
        }
        if self.server_id == 0 {
            problems.push(format!(
                "sources.{name}.server_id must be > 0 and differ from every server_id of the source's replication topology"
            ));
        }
    }

    fn reset_state(&self, epoch: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "file_base": "",
            "position": null,
            "gtid": null,
            "tables": crate::source::tables_started(&self.tables),
            "epoch": epoch,
        })
    }

    async fn describe(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<Vec<sluice_schemas::TableSchema>, crate::CaptureError> {
        super::catalog::describe(name, self, password).await
    }

    async fn run(
        capture: super::MysqlCapture,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), crate::CaptureError> {
        capture.run(shutdown).await
    }
}
