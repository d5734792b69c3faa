//! Which table at the source a configured table is now.
//!
//! A configured table (`sources.<name>.tables`) is an identity: its topic, its schemes and
//! its sink table carry that name. With `renames = "follow"` (the default) a captured table
//! that is renamed at the source keeps that identity: capture knows it by its OID, reads it
//! under its new name and publishes it as before. The OIDs are kept in the state record, so a
//! capture that starts after a rename (while it was running or while it was down) finds the
//! table too. OIDs mean something only in the cluster that gave them: they are trusted only
//! while the server's system identifier is the one the state record was written with.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use sluice_schemas::TableId;
use tokio_postgres::Client;
use tracing::warn;

use super::state::CaptureState;
use crate::CaptureError;

/// What capture does when a captured table is renamed at the source
/// (`sources.<name>.renames`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Renames {
    /// Keep capturing it under its configured name (topic, schemes, sink table unchanged).
    #[default]
    Follow,
    /// Stop the table, with the fix (put the new name in the config; it is then read anew
    /// onto a topic of the new name).
    Stop,
}

/// The current source name of each configured table that is known under another one.
#[derive(Debug, Default)]
pub struct Names {
    now: HashMap<TableId, TableId>,
    configured: HashMap<TableId, TableId>,
}

impl Names {
    /// The name `table` (configured) has at the source now.
    pub fn now<'a>(&'a self, table: &'a TableId) -> &'a TableId {
        self.now.get(table).unwrap_or(table)
    }

    /// The source names of `tables` (configured), in order.
    pub fn all_now(&self, tables: &[TableId]) -> Vec<TableId> {
        tables.iter().map(|t| self.now(t).clone()).collect()
    }

    /// The configured table that has the source name `now`.
    pub fn configured(&self, now: &TableId) -> TableId {
        self.configured.get(now).unwrap_or(now).clone()
    }

    /// Whether `table` is a configured name whose table now has another name: a table that
    /// has that name at the source now is another table.
    pub fn moved_away(&self, table: &TableId) -> bool {
        self.now.contains_key(table)
    }

    /// Records that `table` (configured) is now called `now` at the source.
    pub fn follow(&mut self, table: &TableId, now: TableId) {
        if let Some(old) = self.now.remove(table) {
            self.configured.remove(&old);
        }
        if *table != now {
            self.configured.insert(now.clone(), table.clone());
            self.now.insert(table.clone(), now);
        }
    }

    /// What a status line or log shows: `configured → now` for each renamed table.
    pub fn renamed(&self) -> Vec<String> {
        let mut out: Vec<String> = self.now.iter().map(|(t, n)| format!("{t} → {n}")).collect();
        out.sort();
        out
    }
}

/// The cluster's system identifier, as `IDENTIFY_SYSTEM` gives it.
pub async fn system_identifier(client: &Client) -> Result<String, CaptureError> {
    Ok(client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?
        .get(0))
}

/// What [`resolve`] found.
#[derive(Debug, Default)]
pub struct Resolved {
    pub names: Names,
    /// Configured tables whose recorded table is gone while a table of that name exists: it
    /// was dropped and created again while capture was down, so it is read anew.
    pub recreated: Vec<TableId>,
    /// Configured tables renamed away while another table took their name: under
    /// `renames = "stop"` the configured name means that other table, which is read anew.
    pub taken_over: Vec<TableId>,
}

/// Finds each configured table by the OID the state record holds for it (see the module's
/// doc), when that record was written on this cluster.
pub async fn resolve(
    client: &Client,
    state: Option<&CaptureState>,
    tables: &[TableId],
) -> Result<Resolved, CaptureError> {
    let mut out = Resolved::default();
    let Some(state) = state.filter(|s| !s.oids.is_empty()) else {
        return Ok(out);
    };
    let system = system_identifier(client).await?;
    let recorded_on = state
        .epoch
        .as_ref()
        .and_then(|e| e.identity.as_deref())
        .and_then(|i| i.strip_prefix("postgres system "))
        .and_then(|i| i.split_once(' '))
        .map(|(s, _)| s);
    if recorded_on != Some(system.as_str()) {
        return Ok(out);
    }
    let wanted: Vec<(TableId, u32)> = tables
        .iter()
        .filter_map(|t| Some((t.clone(), *state.oids.get(&t.to_string())?)))
        .collect();
    if wanted.is_empty() {
        return Ok(out);
    }
    let oids: Vec<u32> = wanted.iter().map(|(_, o)| *o).collect();
    let namespaces: Vec<&str> = wanted.iter().map(|(t, _)| t.namespace.as_str()).collect();
    let names: Vec<&str> = wanted.iter().map(|(t, _)| t.name.as_str()).collect();
    // Each recorded OID's table now (if any), and the OID the configured name has now.
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    to_regclass(format('%I.%I', x.ns, x.name))::oid \
             FROM unnest($1::oid[], $2::text[], $3::text[]) WITH ORDINALITY AS x(oid, ns, name, i) \
             LEFT JOIN pg_class c ON c.oid = x.oid AND c.relkind IN ('r', 'p') \
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
             ORDER BY x.i",
            &[&oids, &namespaces, &names],
        )
        .await?;
    for (row, (table, oid)) in rows.iter().zip(wanted) {
        let namespace: Option<String> = row.get(0);
        let name: Option<String> = row.get(1);
        let by_name: Option<u32> = row.get(2);
        match (namespace.zip(name), by_name) {
            (Some((namespace, name)), _) => {
                let now = TableId::new(namespace, name);
                if now != table {
                    if by_name.is_some() {
                        out.taken_over.push(table.clone());
                    }
                    out.names.follow(&table, now);
                }
            }
            (None, Some(now_oid)) if now_oid != oid => {
                warn!(%table, "the captured table was dropped and a table of its name created while capture was down; it is read anew");
                out.recreated.push(table);
            }
            (None, _) => {}
        }
    }
    Ok(out)
}

/// The OIDs to record for `tables` (configured) now.
pub async fn current_oids(
    client: &Client,
    names: &Names,
    tables: &[TableId],
) -> Result<BTreeMap<String, u32>, CaptureError> {
    let mut out = BTreeMap::new();
    for table in tables {
        if let Some(oid) = super::catalog::Catalog::oid(client, names.now(table)).await? {
            out.insert(table.to_string(), oid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_table_maps_both_ways_and_a_second_rename_replaces_the_first() {
        let configured = TableId::new("public", "items");
        let mut names = Names::default();
        assert_eq!(names.now(&configured), &configured);
        names.follow(&configured, TableId::new("public", "goods"));
        assert_eq!(names.now(&configured), &TableId::new("public", "goods"));
        assert_eq!(
            names.configured(&TableId::new("public", "goods")),
            configured
        );
        assert!(names.moved_away(&configured));
        names.follow(&configured, TableId::new("shop", "wares"));
        assert_eq!(
            names.configured(&TableId::new("public", "goods")),
            TableId::new("public", "goods")
        );
        assert_eq!(names.configured(&TableId::new("shop", "wares")), configured);
        // Renamed back: nothing is left mapped.
        names.follow(&configured, configured.clone());
        assert!(!names.moved_away(&configured));
        assert!(names.renamed().is_empty());
    }
}
