//! Table schemas from the source catalog, shared by the snapshot (which reads the catalog in
//! its exported snapshot) and the stream (which gets columns from Relation messages), so both
//! produce the same [`TableSchema`] and the same Avro schema fingerprint.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_schemas::{Column, SqlType, TableId, TableSchema};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::decoder::RelationColumn;
use super::types;
use crate::CaptureError;

/// How long capture waits for a transaction whose commit it has read to become visible to its
/// catalog queries before it reads the transaction again.
pub const VISIBILITY_WAIT: Duration = Duration::from_secs(10);

/// Waits until the transaction `xid`, whose commit the replication stream has sent, is visible
/// to `client`'s queries: until then the catalog still shows its tables as they were before
/// it (a key it dropped, a column or type it added would be missed).
///
/// The server sends a transaction once its commit record is flushed; the committing backend
/// makes it visible to other sessions only afterwards — a moment later, or much later when it
/// waits for a synchronous standby in between. After [`VISIBILITY_WAIT`], or at `shutdown`,
/// [`CaptureError::NotYetVisible`]: capture reads the transaction again from the slot.
pub async fn wait_visible(
    client: &Client,
    xid: u32,
    shutdown: &CancellationToken,
) -> Result<(), CaptureError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let snapshot: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        match visible_in(&snapshot, xid) {
            Some(true) => {
                if started.elapsed() >= Duration::from_secs(1) {
                    info!(
                        xid,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "a committed transaction became visible; its tables are described now"
                    );
                }
                return Ok(());
            }
            None => {
                warn!(%snapshot, xid, "cannot read the server's snapshot; describing the transaction's tables from the catalog as it is");
                return Ok(());
            }
            Some(false) => {}
        }
        if started.elapsed() >= VISIBILITY_WAIT || shutdown.is_cancelled() {
            return Err(CaptureError::NotYetVisible {
                xid,
                waited_s: started.elapsed().as_secs(),
                holder: holder(client, xid).await,
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// `, held by backend <pid> (wait event <event>)` for the backend committing `xid`, where
/// `pg_stat_activity` shows it to this user; else nothing.
async fn holder(client: &Client, xid: u32) -> String {
    let row = client
        .query_opt(
            "SELECT pid, coalesce(wait_event, 'none') FROM pg_stat_activity \
             WHERE backend_xid::text = $1::text",
            &[&xid.to_string()],
        )
        .await;
    match row {
        Ok(Some(row)) => format!(
            ", held by backend {} (wait event {})",
            row.get::<_, i32>(0),
            row.get::<_, String>(1)
        ),
        _ => String::new(),
    }
}

/// Whether the committed transaction `xid` (32 bits, as the stream gives it) is visible in
/// `snapshot`, `pg_current_snapshot()` as text (`xmin:xmax:xip,…`, 64-bit ids); `None` when
/// it does not read as one. Its full id is the one with these low 32 bits nearest `xmax`.
fn visible_in(snapshot: &str, xid: u32) -> Option<bool> {
    let mut parts = snapshot.split(':');
    let xmin: u64 = parts.next()?.parse().ok()?;
    let xmax: u64 = parts.next()?.parse().ok()?;
    let running = parts.next()?;
    let behind = i64::from((xmax as u32).wrapping_sub(xid) as i32);
    let full = u64::try_from(i64::try_from(xmax).ok()? - behind).ok()?;
    if full < xmin {
        return Some(true);
    }
    if full >= xmax {
        return Some(false);
    }
    Some(
        !running
            .split(',')
            .filter(|x| !x.is_empty())
            .any(|x| x.parse::<u64>().ok() == Some(full)),
    )
}

/// What the catalog says about a type that [`types::sql_type`] does not know by OID.
#[derive(Debug, Clone)]
struct TypeInfo {
    /// `pg_type.typtype`: `b` base, `c` composite, `d` domain, `e` enum, `r` range, `m` multirange.
    kind: u8,
    /// For a domain: the type it is based on, and its modifier.
    base: u32,
    base_typmod: i32,
    /// For an array type: its element type.
    elem: u32,
    is_array: bool,
    /// Defined in `pg_catalog`: a built-in type whose text form is its documented mapping.
    builtin: bool,
    /// `format_type(oid, NULL)`.
    name: String,
}

/// Caches what the catalog says about types without a fixed OID mapping.
#[derive(Default)]
pub struct Catalog {
    types: HashMap<u32, TypeInfo>,
}

impl Catalog {
    /// The key of a table: its replica identity index when it has one (every change's old
    /// key then carries it), else its primary key, else none. (pgoutput flags every column
    /// as key under REPLICA IDENTITY FULL, which is not a key: see [`super::slot::key_problem`].)
    pub(super) async fn key_columns(
        client: &Client,
        oid: u32,
    ) -> Result<Vec<String>, CaptureError> {
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::oid \
                   AND i.indexrelid = (SELECT x.indexrelid FROM pg_index x \
                        WHERE x.indrelid = i.indrelid AND (x.indisprimary OR x.indisreplident) \
                        ORDER BY x.indisreplident DESC, x.indisprimary DESC LIMIT 1) \
                 ORDER BY array_position(i.indkey, a.attnum)",
                &[&oid],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Values that rows older than a column read for it, by column: `attmissingval` after
    /// `ADD COLUMN … DEFAULT` without a rewrite. A later rewrite (`ALTER … TYPE`) clears
    /// `attmissingval` — having written the value into those rows, whose changes never
    /// stream — so then the column's constant default stands in for it (which differs only if
    /// the default was changed in between). Best effort: where the catalog is not readable,
    /// none.
    async fn missing_values(client: &Client, table: &TableId, oid: u32) -> HashMap<String, String> {
        let rows = client
            .query(
                "SELECT a.attname::text, \
                        CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END, \
                        pg_get_expr(d.adbin, d.adrelid) \
                 FROM pg_attribute a \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = $1::oid \
                   AND a.attnum > 0 AND NOT a.attisdropped \
                   AND (a.atthasmissing OR d.adbin IS NOT NULL)",
                &[&oid],
            )
            .await;
        match rows {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| {
                    let missing: Option<String> = r.get(1);
                    let default: Option<String> = r.get(2);
                    let value = missing.or_else(|| constant_default(default.as_deref()?))?;
                    Some((r.get::<_, String>(0), value))
                })
                .collect(),
            Err(e) => {
                warn!(%table, error = %e, "cannot read defaults of added columns; sinks will see NULL in rows older than them");
                HashMap::new()
            }
        }
    }

    /// The published columns of a table from the catalog (as pgoutput would describe them):
    /// its ordinary columns, and its stored generated columns where `publication` publishes
    /// them (PostgreSQL 18's `publish_generated_columns`; virtual ones never are).
    pub async fn relation_columns(
        client: &Client,
        table: &TableId,
        publication: Option<&str>,
    ) -> Result<Vec<RelationColumn>, CaptureError> {
        let generated: Vec<String> = match publication {
            // pg_publication_tables lists the published columns from PostgreSQL 15 on.
            Some(publication) if server_version_num(client).await? >= 150_000 => client
                .query_opt(
                    "SELECT attnames::text[] FROM pg_publication_tables \
                     WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                    &[&publication, &table.namespace, &table.name],
                )
                .await?
                .and_then(|r| r.get::<_, Option<Vec<String>>>(0))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid::oid, a.atttypmod FROM pg_attribute a \
                 WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass \
                   AND a.attnum > 0 AND NOT a.attisdropped \
                   AND (a.attgenerated = '' OR (a.attgenerated = 's' AND a.attname = ANY($3))) \
                 ORDER BY a.attnum",
                &[&table.namespace, &table.name, &generated],
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

    /// The partitions (every level) of those of `tables` that are partitioned, each with
    /// whether it may have held rows the partitioned table's changes never carried: it was
    /// attached after it was created (`ATTACH PARTITION`: its `pg_inherits` row is younger
    /// than its `pg_class` row), or, created and attached in one transaction, it holds rows
    /// that transaction wrote. (`CREATE TABLE … PARTITION OF` on its own holds none.) The
    /// second test reads the partition, so it runs only for those not in `known`, and not at
    /// all without `probe`.
    pub async fn partitions(
        client: &Client,
        tables: &[TableId],
        known: &HashMap<TableId, std::collections::BTreeSet<u32>>,
        probe: bool,
    ) -> Result<HashMap<TableId, HashMap<u32, bool>>, CaptureError> {
        let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
        let rows = client
            .query(
                "SELECT n.nspname::text, r.relname::text, t.relid::oid, i.xmin::text <> c.xmin::text, \
                        c.xmin::text, format('%I.%I', cn.nspname, c.relname), c.relkind::text \
                 FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace \
                 CROSS JOIN LATERAL pg_partition_tree(r.oid) t \
                 JOIN pg_class c ON c.oid = t.relid \
                 JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                 JOIN pg_inherits i ON i.inhrelid = t.relid \
                 WHERE r.relkind = 'p' AND t.level > 0 \
                   AND format('%s.%s', n.nspname, r.relname) = ANY($1)",
                &[&names],
            )
            .await?;
        let mut out: HashMap<TableId, HashMap<u32, bool>> = HashMap::new();
        for r in rows {
            let table = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
            let oid: u32 = r.get(2);
            let mut attached: bool = r.get(3);
            let is_new = !known.get(&table).is_some_and(|k| k.contains(&oid));
            if probe && !attached && is_new && r.get::<_, String>(6) == "r" {
                let (xmin, qualified): (String, String) = (r.get(4), r.get(5));
                attached = client
                    .query_opt(
                        &format!("SELECT 1 FROM ONLY {qualified} WHERE xmin::text = $1 LIMIT 1"),
                        &[&xmin],
                    )
                    .await?
                    .is_some();
            }
            out.entry(table).or_default().insert(oid, attached);
        }
        // A partitioned table without partitions yet is still partitioned.
        let empty = client
            .query(
                "SELECT n.nspname::text, r.relname::text FROM pg_class r \
                 JOIN pg_namespace n ON n.oid = r.relnamespace \
                 WHERE r.relkind = 'p' AND format('%s.%s', n.nspname, r.relname) = ANY($1)",
                &[&names],
            )
            .await?;
        for r in empty {
            out.entry(TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .or_default();
        }
        Ok(out)
    }

    /// Builds the schema of `id` from its columns, keyed by `Catalog::key_columns`. A table
    /// without a key gets a schema without key columns, which capture refuses to publish.
    pub async fn table_schema(
        &mut self,
        client: &Client,
        id: TableId,
        columns: &[RelationColumn],
    ) -> Result<TableSchema, CaptureError> {
        let oid = Catalog::oid(client, &id).await?.ok_or_else(|| {
            CaptureError::Definite(format!("table {id} does not exist (dropped or renamed)"))
        })?;
        self.schema_of(client, id, oid, columns).await
    }

    /// The table's OID now, `None` when no table has that name.
    pub async fn oid(client: &Client, id: &TableId) -> Result<Option<u32>, CaptureError> {
        let row = client
            .query_one(
                "SELECT to_regclass(format('%I.%I', $1::text, $2::text))::oid",
                &[&id.namespace, &id.name],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Whether a table with this OID exists (under any name).
    pub async fn exists(client: &Client, oid: u32) -> Result<bool, CaptureError> {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = $1::oid)",
                &[&oid],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The schema of the table with OID `oid` (a Relation message's id), named `id` as the
    /// message names it: the key and added-column defaults come from the catalog by OID, so
    /// a table renamed since is still found. A table dropped since is described by
    /// `fallback_key` (the message's key flags, or the key known before) without defaults.
    ///
    /// The catalog is today's, the message is of its place in the log: under
    /// `REPLICA IDENTITY DEFAULT` or `USING INDEX` the message flags the key the table had
    /// then. Where the two differ (the key changed while capture was behind), the message's
    /// wins, so that the changes written before the change are keyed as they were written
    /// (their old tuples carry that key, and a delete keyed otherwise would match nothing).
    pub async fn stream_schema(
        &mut self,
        client: &Client,
        id: TableId,
        oid: u32,
        columns: &[RelationColumn],
        replica_identity: u8,
        fallback_key: impl FnOnce() -> Vec<String>,
    ) -> Result<TableSchema, CaptureError> {
        if Catalog::exists(client, oid).await? {
            let mut key = Catalog::key_columns(client, oid).await?;
            if let Some(then) = key_then(columns, replica_identity, &key) {
                warn!(table = %id, key = ?then, now = ?key, "the table's key changed since this part of the log was written: its changes here are keyed as they were written");
                key = then;
            }
            let missing = Catalog::missing_values(client, &id, oid).await;
            return self.build(client, id, columns, &key, &missing).await;
        }
        let key = fallback_key();
        warn!(table = %id, key = ?key, "the table no longer exists (dropped): its changes still in the log are decoded from the replication stream's description, keyed as shown");
        self.build(client, id, columns, &key, &HashMap::new()).await
    }

    async fn schema_of(
        &mut self,
        client: &Client,
        id: TableId,
        oid: u32,
        columns: &[RelationColumn],
    ) -> Result<TableSchema, CaptureError> {
        let key = Catalog::key_columns(client, oid).await?;
        let missing = Catalog::missing_values(client, &id, oid).await;
        self.build(client, id, columns, &key, &missing).await
    }

    async fn build(
        &mut self,
        client: &Client,
        id: TableId,
        columns: &[RelationColumn],
        key: &[String],
        missing: &HashMap<String, String>,
    ) -> Result<TableSchema, CaptureError> {
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            let sql_type = self
                .resolve(client, &id, &c.name, c.type_oid, c.type_modifier)
                .await?;
            let is_key = key.contains(&c.name);
            out.push(Column {
                name: c.name.clone(),
                sql_type,
                key: is_key,
                missing: missing.get(&c.name).cloned(),
            });
        }
        Ok(TableSchema { id, columns: out })
    }

    async fn info(&mut self, client: &Client, oid: u32) -> Result<TypeInfo, CaptureError> {
        if let Some(info) = self.types.get(&oid) {
            return Ok(info.clone());
        }
        let row = client
            .query_one(
                "SELECT t.typtype::text, t.typbasetype::oid, t.typtypmod, t.typelem::oid, \
                        EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid), \
                        n.nspname = 'pg_catalog', format_type(t.oid, NULL) \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1::oid",
                &[&oid],
            )
            .await?;
        let kind: String = row.get(0);
        let info = TypeInfo {
            kind: kind.bytes().next().unwrap_or(b'b'),
            base: row.get(1),
            base_typmod: row.get(2),
            elem: row.get(3),
            is_array: row.get(4),
            builtin: row.get(5),
            name: row.get(6),
        };
        self.types.insert(oid, info.clone());
        Ok(info)
    }

    /// Follows domains to the type they are based on (a domain travels as its base type,
    /// as Debezium does); a column's own modifier wins over the domain's.
    async fn strip_domains(
        &mut self,
        client: &Client,
        mut oid: u32,
        mut typmod: i32,
    ) -> Result<(u32, i32, Option<TypeInfo>), CaptureError> {
        loop {
            if types::sql_type(oid, typmod).is_some() {
                return Ok((oid, typmod, None));
            }
            let info = self.info(client, oid).await?;
            if info.kind != b'd' {
                return Ok((oid, typmod, Some(info)));
            }
            if typmod < 0 {
                typmod = info.base_typmod;
            }
            oid = info.base;
        }
    }

    /// The [`SqlType`] of a column's type: built-ins by OID, domains as their base type,
    /// arrays of any element type, enums, and everything else in its text form (with a
    /// warning for types that are not built in, such as extension types).
    async fn resolve(
        &mut self,
        client: &Client,
        table: &TableId,
        column: &str,
        oid: u32,
        typmod: i32,
    ) -> Result<SqlType, CaptureError> {
        let (oid, typmod, info) = self.strip_domains(client, oid, typmod).await?;
        let Some(info) = info else {
            return Ok(types::sql_type(oid, typmod).expect("known by strip_domains"));
        };
        if info.is_array {
            // An array column's modifier is its element's (`numeric(10,2)[]`).
            let (elem_oid, elem_typmod, elem_info) =
                self.strip_domains(client, info.elem, typmod).await?;
            let elem = match elem_info {
                None => types::sql_type(elem_oid, elem_typmod).expect("known by strip_domains"),
                Some(elem_info) => {
                    self.scalar(client, table, column, elem_oid, elem_typmod, &elem_info)
                        .await?
                }
            };
            return Ok(SqlType::Array(Box::new(elem)));
        }
        self.scalar(client, table, column, oid, typmod, &info).await
    }

    async fn scalar(
        &mut self,
        client: &Client,
        table: &TableId,
        column: &str,
        oid: u32,
        typmod: i32,
        info: &TypeInfo,
    ) -> Result<SqlType, CaptureError> {
        if info.kind == b'e' {
            return Ok(SqlType::Enum(info.name.clone()));
        }
        // The name with the column's modifier (`bit(8)`), so a sink can recreate the type.
        let name = if typmod >= 0 {
            let row = client
                .query_one("SELECT format_type($1::oid, $2)", &[&oid, &typmod])
                .await?;
            row.get(0)
        } else {
            info.name.clone()
        };
        if !info.builtin && info.kind == b'b' {
            warn!(%table, column, r#type = %name, "type is not built in; carried in its text form");
        }
        Ok(SqlType::Other(name))
    }
}

/// The value of a default expression that is a constant, as `pg_get_expr` prints it
/// (`'eu'::text`, `42`, `'-1'::integer`, `true`); `None` for anything computed (`now()`,
/// `nextval(…)`).
fn constant_default(expr: &str) -> Option<String> {
    let expr = expr.trim();
    if let Some(rest) = expr.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                value.push(c);
                continue;
            }
            if rest[i + 1..].starts_with('\'') {
                value.push('\'');
                chars.next();
                continue;
            }
            // After the literal: nothing, or a plain cast (`::character varying`).
            let tail = &rest[i + 1..];
            let cast_only = tail.is_empty()
                || tail.strip_prefix("::").is_some_and(|t| {
                    t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || " _\"[]".contains(c))
                });
            return cast_only.then_some(value);
        }
        return None;
    }
    (expr.parse::<f64>().is_ok() || expr == "true" || expr == "false").then(|| expr.to_string())
}

/// The server's `server_version_num` (`180004` for 18.4).
pub async fn server_version_num(client: &Client) -> Result<i32, CaptureError> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0))
}

/// The key a Relation message flags, in column order, when it is not the catalog's `now`:
/// the table's key when that part of the log was written. Only `REPLICA IDENTITY DEFAULT` and
/// `USING INDEX` flag the key; a message flagging nothing (a table without a key then, which
/// only took inserts) leaves the catalog's.
fn key_then(
    columns: &[RelationColumn],
    replica_identity: u8,
    now: &[String],
) -> Option<Vec<String>> {
    if !matches!(replica_identity, b'd' | b'i') {
        return None;
    }
    let flagged: Vec<String> = columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.clone())
        .collect();
    let same = flagged.len() == now.len() && flagged.iter().all(|f| now.contains(f));
    (!flagged.is_empty() && !same).then_some(flagged)
}

#[cfg(test)]
mod tests {
    use super::{constant_default, key_then, visible_in};
    use crate::postgres::decoder::RelationColumn;

    fn columns(flags: &[(&str, bool)]) -> Vec<RelationColumn> {
        flags
            .iter()
            .map(|(name, key)| RelationColumn {
                key: *key,
                name: name.to_string(),
                type_oid: 23,
                type_modifier: -1,
            })
            .collect()
    }

    #[test]
    fn a_transaction_is_visible_once_no_snapshot_counts_it_as_running() {
        // Below xmin: finished before every running one.
        assert_eq!(visible_in("100:105:", 90), Some(true));
        // Between, and not running.
        assert_eq!(visible_in("100:105:100,102", 101), Some(true));
        // Running (the committing backend has not finished), or not yet below xmax.
        assert_eq!(visible_in("100:105:100,102", 102), Some(false));
        assert_eq!(visible_in("100:100:", 100), Some(false));
        assert_eq!(visible_in("100:100:", 103), Some(false));
        // Past a wraparound of the 32-bit id: the epoch is the snapshot's, or the one before.
        let epoch = 1u64 << 32;
        let snapshot = format!("{}:{}:{}", epoch + 5, epoch + 10, epoch + 7);
        assert_eq!(visible_in(&snapshot, 7), Some(false));
        assert_eq!(visible_in(&snapshot, 8), Some(true));
        assert_eq!(visible_in(&snapshot, u32::MAX), Some(true));
        assert_eq!(visible_in(&snapshot, 12), Some(false));
        assert_eq!(visible_in("not a snapshot", 1), None);
    }

    #[test]
    fn a_key_the_log_flags_differently_from_the_catalog_wins() {
        let then = columns(&[("id", true), ("region", false), ("v", false)]);
        let now = vec!["region".to_string(), "id".to_string()];
        assert_eq!(key_then(&then, b'd', &now), Some(vec!["id".to_string()]));
        assert_eq!(key_then(&then, b'i', &now), Some(vec!["id".to_string()]));
        // The same key in another order is the catalog's (its order is the key's).
        let both = columns(&[("id", true), ("region", true), ("v", false)]);
        assert_eq!(key_then(&both, b'd', &now), None);
        // FULL flags every column: no key to learn from; a table without a key then took
        // only inserts.
        let all = columns(&[("id", true), ("region", true), ("v", true)]);
        assert_eq!(key_then(&all, b'f', &now), None);
        assert_eq!(key_then(&columns(&[("id", false)]), b'd', &now), None);
    }

    #[test]
    fn only_constant_defaults_stand_in_for_missing_values() {
        assert_eq!(constant_default("'eu'::text"), Some("eu".into()));
        assert_eq!(
            constant_default("'it''s'::character varying"),
            Some("it's".into())
        );
        assert_eq!(constant_default("'-1'::integer"), Some("-1".into()));
        assert_eq!(constant_default("42"), Some("42".into()));
        assert_eq!(constant_default("true"), Some("true".into()));
        assert_eq!(constant_default("now()"), None);
        assert_eq!(constant_default("nextval('orders_id_seq'::regclass)"), None);
        assert_eq!(constant_default("('a'::text || 'b'::text)"), None);
        assert_eq!(constant_default("'a'::text || 'b'::text"), None);
    }
}
