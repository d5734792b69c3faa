//! Preconditions, the publication and the replication slot.

use std::collections::BTreeSet;

use sluice_schemas::TableId;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::replication::{parse_lsn, quote_ident, ReplicationConnection};
use crate::CaptureError;

/// Checks what logical replication needs before anything is created, with the fix in each
/// message.
pub async fn preflight(client: &Client, tables: &[TableId]) -> Result<(), CaptureError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(CaptureError::Definite(format!(
            "the source has wal_level={wal_level}; logical replication needs wal_level=logical \
             (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    let row = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Err(CaptureError::Definite(
            "the source user lacks the REPLICATION privilege; run ALTER ROLE <user> WITH REPLICATION".into(),
        ));
    }
    ensure_free(
        client,
        "max_wal_senders",
        "SELECT count(*) FROM pg_stat_replication",
        "WAL senders",
        "raise max_wal_senders (restart needed) or stop unused replication clients",
    )
    .await?;
    for table in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.namespace, &table.name],
            )
            .await?;
        let Some(row) = row else {
            return Err(CaptureError::Definite(format!(
                "table {table} does not exist at the source; create it or remove it from sources.<name>.tables"
            )));
        };
        let identity: String = row.get(0);
        let has_pk: bool = row.get(1);
        if identity == "n" || (identity == "d" && !has_pk) {
            warn!(
                %table,
                "table has no primary key or replica identity: its updates and deletes cannot be \
                 captured; add a primary key or run ALTER TABLE {table} REPLICA IDENTITY FULL"
            );
        }
    }
    Ok(())
}

/// Fails with the fix when every unit of a server limit is in use.
async fn ensure_free(
    client: &Client,
    setting: &str,
    used_sql: &str,
    what: &str,
    fix: &str,
) -> Result<(), CaptureError> {
    let max: String = client
        .query_one(&format!("SHOW {setting}"), &[])
        .await?
        .get(0);
    let used: i64 = client.query_one(used_sql, &[]).await?.get(0);
    let max: i64 = max.parse().unwrap_or(i64::MAX);
    if used >= max {
        return Err(CaptureError::Definite(format!(
            "the source has no free {what}: {used} of {setting}={max} are in use; {fix}"
        )));
    }
    Ok(())
}

/// Creates the publication for `tables` when missing, and adds tables it lacks.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableId],
) -> Result<(), CaptureError> {
    let quoted: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.namespace), quote_ident(&t.name)))
        .collect();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if !exists {
        info!(publication, tables = quoted.len(), "creating publication");
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                quoted.join(", ")
            ))
            .await?;
        return Ok(());
    }
    let published: BTreeSet<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (table, q) in tables.iter().zip(&quoted) {
        if !published.contains(&(table.namespace.clone(), table.name.clone())) {
            info!(publication, %table, "adding table to publication");
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {q}",
                    quote_ident(publication)
                ))
                .await?;
        }
    }
    Ok(())
}

/// The state of the slot.
#[derive(Debug)]
pub struct SlotState {
    pub confirmed_flush_lsn: Option<u64>,
    /// Set when the slot was just created: its consistent point and exported snapshot, valid
    /// until the next command on the replication connection that created it.
    pub created: Option<ExportedSnapshot>,
}

/// A snapshot exported by `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT`.
#[derive(Debug, Clone)]
pub struct ExportedSnapshot {
    pub consistent_lsn: u64,
    pub name: String,
}

/// Creates a slot exporting its snapshot; `temporary` slots vanish with the connection.
pub async fn create_slot_with_snapshot(
    repl: &mut ReplicationConnection,
    slot: &str,
    temporary: bool,
) -> Result<ExportedSnapshot, CaptureError> {
    let rows = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(slot),
            if temporary { "TEMPORARY " } else { "" }
        ))
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| CaptureError::Definite("CREATE_REPLICATION_SLOT returned nothing".into()))?;
    let lsn = row.get(1).cloned().flatten().as_deref().and_then(parse_lsn);
    let name = row.get(2).cloned().flatten();
    match (lsn, name) {
        (Some(consistent_lsn), Some(name)) => Ok(ExportedSnapshot {
            consistent_lsn,
            name,
        }),
        _ => Err(CaptureError::Definite(format!(
            "CREATE_REPLICATION_SLOT {slot} returned no snapshot"
        ))),
    }
}

/// Returns the slot's state, creating it when missing. A slot whose WAL is lost is a definite
/// error: the changes it missed cannot be streamed.
pub async fn ensure_slot(
    client: &Client,
    repl: &mut ReplicationConnection,
    slot: &str,
) -> Result<SlotState, CaptureError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, wal_status, confirmed_flush_lsn::text, database::text = current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(row) = row {
        let plugin: Option<String> = row.get(0);
        let wal_status: Option<String> = row.get(1);
        let same_db: Option<bool> = row.get(3);
        if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
            return Err(CaptureError::Definite(format!(
                "replication slot \"{slot}\" exists but is not a pgoutput slot of this database; \
                 choose another sources.<name>.slot or drop it with SELECT pg_drop_replication_slot('{slot}')"
            )));
        }
        if wal_status.as_deref() == Some("lost") {
            return Err(CaptureError::Definite(format!(
                "replication slot \"{slot}\" is invalidated (wal_status=lost): the WAL it needed was removed. \
                 Drop it with SELECT pg_drop_replication_slot('{slot}'), restart capture to recreate it, \
                 and re-snapshot the tables"
            )));
        }
        let confirmed: Option<String> = row.get(2);
        return Ok(SlotState {
            confirmed_flush_lsn: confirmed.as_deref().and_then(parse_lsn),
            created: None,
        });
    }
    ensure_free(client, "max_replication_slots", "SELECT count(*) FROM pg_replication_slots", "replication slots",
        "drop unused ones (SELECT slot_name FROM pg_replication_slots WHERE NOT active) or raise max_replication_slots").await?;
    info!(slot, "creating replication slot");
    let exported = create_slot_with_snapshot(repl, slot, false).await?;
    Ok(SlotState {
        confirmed_flush_lsn: Some(exported.consistent_lsn),
        created: Some(exported),
    })
}
