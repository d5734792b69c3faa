//! Preconditions, the publication and the replication slot.

use std::collections::BTreeSet;

use sluice_schemas::TableId;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::replication::{parse_lsn, quote_ident, ReplicationConnection};
use crate::CaptureError;

/// A configured table capture cannot take, and why (with the fix).
#[derive(Debug, Clone)]
pub struct Refused {
    pub table: TableId,
    pub reason: String,
}

/// What the source's config asks of the server beyond logical replication itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// `origin = "none"` (16+).
    pub origin_filter: bool,
    /// `failover_slot = true` (17+).
    pub failover_slot: bool,
}

/// The oldest PostgreSQL major capture takes, and the newest it is verified against (the
/// test matrix: `SLUICE_TEST_PG_MAJOR`, README).
pub const OLDEST_MAJOR: i32 = 14;
pub const NEWEST_VERIFIED_MAJOR: i32 = 18;

/// Refuses a server older than [`OLDEST_MAJOR`]; a newer one than the matrix covers is
/// taken, with a warning. Returns the major.
fn check_version(version_num: i32, version: &str) -> Result<i32, CaptureError> {
    let major = version_num / 10_000;
    if major < OLDEST_MAJOR {
        return Err(CaptureError::Definite(format!(
            "the source runs PostgreSQL {version}; Sluice captures from PostgreSQL {OLDEST_MAJOR} \
             to {NEWEST_VERIFIED_MAJOR} (the majors it is tested on): upgrade the source, or \
             capture from a replica of a supported major"
        )));
    }
    if major > NEWEST_VERIFIED_MAJOR {
        warn!(
            version,
            newest_verified = NEWEST_VERIFIED_MAJOR,
            "the source runs a PostgreSQL major newer than Sluice is verified against; capture goes on"
        );
    }
    Ok(major)
}

/// Checks what logical replication needs before anything is created, with the fix in each
/// message. A server-wide problem is an error; a table that cannot be captured correctly is
/// returned as [`Refused`], so the source goes on with its other tables.
pub async fn preflight(
    client: &Client,
    tables: &[TableId],
    needs: Needs,
) -> Result<Vec<Refused>, CaptureError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await?;
    let major = check_version(row.get(0), row.get(1))?;
    if needs.failover_slot && major < 17 {
        let version: String = row.get(1);
        return Err(CaptureError::Definite(format!(
            "failover_slot = true needs PostgreSQL 17 or newer (failover slots) and the source \
             runs {version}: remove failover_slot from the source's config, or upgrade the source"
        )));
    }
    if needs.origin_filter && major < 16 {
        let version: String = row.get(1);
        return Err(CaptureError::Definite(format!(
            "origin = \"none\" needs PostgreSQL 16 or newer (pgoutput's origin option) and the \
             source runs {version}: remove origin from the source's config, or upgrade the source"
        )));
    }
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
    let mut refused = Vec::new();
    for table in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident), \
                        ARRAY(SELECT format('%s.%s', an.nspname, ac.relname) \
                              FROM pg_partition_ancestors(c.oid) a \
                              JOIN pg_class ac ON ac.oid = a.relid \
                              JOIN pg_namespace an ON an.oid = ac.relnamespace \
                              WHERE a.relid <> c.oid) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.namespace, &table.name],
            )
            .await?;
        let Some(row) = row else {
            refused.push(Refused {
                table: table.clone(),
                reason: format!(
                    "table {table} does not exist at the source; create it or remove it from \
                     sources.<name>.tables"
                ),
            });
            continue;
        };
        let identity: String = row.get(0);
        let (has_pk, has_ident_index): (bool, bool) = (row.get(1), row.get(2));
        let ancestors: Vec<String> = row.get(3);
        let captured_ancestor = ancestors
            .iter()
            .find(|a| tables.iter().any(|t| t.to_string() == **a));
        if let Some(reason) = key_problem(table, &identity, has_pk, has_ident_index) {
            refused.push(Refused {
                table: table.clone(),
                reason,
            });
        } else if let Some(root) = captured_ancestor {
            refused.push(Refused {
                table: table.clone(),
                reason: format!(
                    "table {table} is a partition of {root}, which is captured too: its changes \
                     are published as {root}'s (publish_via_partition_root); remove {table} from \
                     sources.<name>.tables"
                ),
            });
        }
    }
    Ok(refused)
}

/// Why a table's rows cannot be told apart by a key, with the fix; `None` when they can.
/// A key is the primary key or the replica identity index: every change then carries it, and
/// a sink can upsert and delete by it. `REPLICA IDENTITY FULL` alone is no key (a row may
/// hold NULLs and equal another row), and `NOTHING` sends no old key at all, so an update
/// that changes the key would leave the old row behind at the sink.
pub fn key_problem(
    table: &TableId,
    identity: &str,
    has_pk: bool,
    has_ident_index: bool,
) -> Option<String> {
    match identity {
        "n" => Some(format!(
            "table {table} has REPLICA IDENTITY NOTHING: its deletes and key changes cannot be \
             captured; run ALTER TABLE {table} REPLICA IDENTITY DEFAULT (it needs a primary key)"
        )),
        "i" if has_ident_index => None,
        _ if has_pk => None,
        "f" => Some(format!(
            "table {table} has no primary key (REPLICA IDENTITY FULL is not a key: its rows may \
             hold NULLs and repeat, so a sink cannot upsert or delete them one by one); add a \
             primary key, or a unique index on NOT NULL columns and \
             ALTER TABLE {table} REPLICA IDENTITY USING INDEX <index>"
        )),
        _ => Some(format!(
            "table {table} has no primary key or replica identity index, so its updates and \
             deletes cannot be captured; add a primary key, or a unique index on NOT NULL columns \
             and ALTER TABLE {table} REPLICA IDENTITY USING INDEX <index>"
        )),
    }
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

/// Creates the publication for `tables` when missing, and adds tables it lacks. The
/// publication publishes a partitioned table's changes as the partitioned table's own
/// (`publish_via_partition_root`), so rows keep one identity when they move between
/// partitions and a partition attached later is captured with no configuration. Returns the
/// partitioned tables whose changes an existing publication had published under their
/// partitions' names until now: capture skipped those, so they must be snapshotted again. On
/// a `standby` (read-only) anything it would change is refused with the SQL for the primary.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableId],
    standby: bool,
) -> Result<Vec<TableId>, CaptureError> {
    // A standby is read-only: what the publication lacks is made on its primary.
    let ddl = |sql: String| async move {
        if standby {
            return Err(CaptureError::Definite(format!(
                "the source is a standby, where publication {publication} cannot be made or \
                 changed; run this on its primary, then start capture again: {sql}"
            )));
        }
        client.batch_execute(&sql).await.map_err(CaptureError::from)
    };
    let quoted: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.namespace), quote_ident(&t.name)))
        .collect();
    let via_root: Option<bool> = client
        .query_opt(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .map(|r| r.get(0));
    let Some(via_root) = via_root else {
        // PostgreSQL 18 can publish stored generated columns: their values reach the sink
        // like any other column's. (A publication made before keeps its setting: switching
        // it would leave the rows already at the sink without those columns' values.)
        let generated = if super::catalog::server_version_num(client).await? >= 180_000 {
            ", publish_generated_columns = stored"
        } else {
            ""
        };
        info!(publication, tables = quoted.len(), "creating publication");
        ddl(format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true{generated})",
            quote_ident(publication),
            quoted.join(", ")
        ))
        .await?;
        return Ok(Vec::new());
    };
    // The view lists the partitions of a partitioned table unless the publication publishes
    // via the root, and the catalog lists no table for `FOR ALL TABLES`: ask both.
    let published: BTreeSet<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 \
             UNION SELECT n.nspname::text, c.relname::text FROM pg_publication_rel pr \
               JOIN pg_publication p ON p.oid = pr.prpubid \
               JOIN pg_class c ON c.oid = pr.prrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1",
            &[&publication],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (table, q) in tables.iter().zip(&quoted) {
        if !published.contains(&(table.namespace.clone(), table.name.clone())) {
            info!(publication, %table, "adding table to publication");
            ddl(format!(
                "ALTER PUBLICATION {} ADD TABLE {q}",
                quote_ident(publication)
            ))
            .await?;
        }
    }
    if via_root {
        return Ok(Vec::new());
    }
    let partitioned: Vec<TableId> = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'p' AND format('%s.%s', n.nspname, c.relname) = ANY($1)",
            &[&tables.iter().map(ToString::to_string).collect::<Vec<_>>()],
        )
        .await?
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    if partitioned.is_empty() {
        return Ok(Vec::new());
    }
    warn!(
        publication,
        tables = ?partitioned.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "the publication published partitioned tables under their partitions' names; \
         switching it to publish_via_partition_root and snapshotting those tables again"
    );
    ddl(format!(
        "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
        quote_ident(publication)
    ))
    .await?;
    Ok(partitioned)
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
    failover: bool,
) -> Result<ExportedSnapshot, CaptureError> {
    // The option list (PostgreSQL 15+) is the only form that takes FAILOVER (17+).
    let options = if failover {
        "(SNAPSHOT 'export', FAILOVER true)"
    } else {
        "EXPORT_SNAPSHOT"
    };
    let rows = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {options}",
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
    failover: bool,
) -> Result<SlotState, CaptureError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, wal_status, confirmed_flush_lsn::text, database::text = current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if failover && row.is_some() {
        // (`failover` is a column from PostgreSQL 17 on, which preflight made sure of.)
        let has: bool = client
            .query_one(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .get(0);
        if !has {
            info!(slot, "altering the replication slot to be a failover slot");
            repl.simple_query(&format!(
                "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
                quote_ident(slot)
            ))
            .await?;
        }
    }
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
    let exported = create_slot_with_snapshot(repl, slot, false, failover).await?;
    Ok(SlotState {
        confirmed_flush_lsn: Some(exported.consistent_lsn),
        created: Some(exported),
    })
}
