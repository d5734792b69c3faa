//! Table schemas from the source catalog, shared by the snapshot (which reads the catalog in
//! its exported snapshot) and the stream (which gets columns from Relation messages), so both
//! produce the same [`TableSchema`] and the same Avro schema fingerprint.

use std::collections::HashMap;

use sluice_schemas::{Column, SqlType, TableId, TableSchema};
use tokio_postgres::Client;
use tracing::warn;

use super::decoder::RelationColumn;
use super::types;
use crate::CaptureError;

/// Caches type names of types without an Avro mapping.
#[derive(Default)]
pub struct Catalog {
    type_names: HashMap<u32, String>,
}

impl Catalog {
    /// The key of a table: its primary key, else its replica identity index, else none.
    /// (pgoutput flags every column as key under REPLICA IDENTITY FULL, which is not a key.)
    pub async fn key_columns(
        client: &Client,
        table: &TableId,
    ) -> Result<Vec<String>, CaptureError> {
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass \
                   AND i.indexrelid = (SELECT x.indexrelid FROM pg_index x \
                        WHERE x.indrelid = i.indrelid AND (x.indisprimary OR x.indisreplident) \
                        ORDER BY x.indisprimary DESC LIMIT 1) \
                 ORDER BY array_position(i.indkey, a.attnum)",
                &[&table.namespace, &table.name],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Values that rows older than a column read for it (`ADD COLUMN … DEFAULT` without a
    /// rewrite), by column. Best effort: where the catalog column is not readable, none.
    pub async fn missing_values(client: &Client, table: &TableId) -> HashMap<String, String> {
        let rows = client
            .query(
                "SELECT a.attname::text, array_to_json(a.attmissingval) ->> 0 FROM pg_attribute a \
                 WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass \
                   AND a.atthasmissing AND NOT a.attisdropped",
                &[&table.namespace, &table.name],
            )
            .await;
        match rows {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<String>>(1)?)))
                .collect(),
            Err(e) => {
                warn!(%table, error = %e, "cannot read defaults of added columns; sinks will see NULL in rows older than them");
                HashMap::new()
            }
        }
    }

    /// The published columns of a table from the catalog (as pgoutput would describe them).
    pub async fn relation_columns(
        client: &Client,
        table: &TableId,
    ) -> Result<Vec<RelationColumn>, CaptureError> {
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid::oid, a.atttypmod FROM pg_attribute a \
                 WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass \
                   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 ORDER BY a.attnum",
                &[&table.namespace, &table.name],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RelationColumn {
                key: false,
                name: r.get(0),
                type_oid: r.get(1),
                type_modifier: r.get(2),
            })
            .collect())
    }

    /// Builds the schema of `id` from its columns; the key comes from [`Catalog::key_columns`]
    /// when the table has one, else from the columns' replica-identity flags.
    pub async fn table_schema(
        &mut self,
        client: &Client,
        id: TableId,
        columns: &[RelationColumn],
    ) -> Result<TableSchema, CaptureError> {
        let key = Catalog::key_columns(client, &id).await?;
        let missing = Catalog::missing_values(client, &id).await;
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            let sql_type = match types::sql_type(c.type_oid, c.type_modifier) {
                Some(t) => t,
                None => match self.type_names.get(&c.type_oid) {
                    Some(name) => SqlType::Other(name.clone()),
                    None => {
                        let row = client
                            .query_one("SELECT format_type($1::oid, NULL)", &[&c.type_oid])
                            .await?;
                        let name: String = row.get(0);
                        warn!(table = %id, column = %c.name, r#type = %name, "type has no Avro mapping yet; carried as its text form");
                        self.type_names.insert(c.type_oid, name.clone());
                        SqlType::Other(name)
                    }
                },
            };
            let is_key = if key.is_empty() {
                c.key
            } else {
                key.contains(&c.name)
            };
            out.push(Column {
                name: c.name.clone(),
                sql_type,
                key: is_key,
                missing: missing.get(&c.name).cloned(),
            });
        }
        Ok(TableSchema { id, columns: out })
    }
}
