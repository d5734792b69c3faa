//! What every sink does with a batch before writing it, whatever its database: drop what was
//! already applied (by offset and source position, per topic-partition), and collapse each
//! key's changes into the one action its last change says.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_schemas::{pgtext, Datum, Op, Position, TableId, TableSchema};

use crate::{Batch, SinkChange, StoredProgress};

/// What a batch does to one key of one table, after collapsing.
#[derive(Debug)]
pub(crate) enum Action {
    Upsert(Vec<Datum>),
    Delete(Vec<Datum>),
}

/// The collapsed changes of one table version.
pub(crate) struct Plan {
    pub schema: Arc<TableSchema>,
    /// The table was truncated (before the actions).
    pub truncate: bool,
    /// Keys in the order their first change came.
    pub order: Vec<Vec<Option<String>>>,
    /// Per key, what its last change says.
    pub actions: HashMap<Vec<Option<String>>, Action>,
    /// Changes by op, in the order c, u, d, r, t (for metrics).
    pub counts: [u64; 5],
}

impl Plan {
    pub fn new(schema: Arc<TableSchema>) -> Plan {
        Plan {
            schema,
            truncate: false,
            order: Vec::new(),
            actions: HashMap::new(),
            counts: [0; 5],
        }
    }

    fn key(&self, row: &[Datum]) -> Vec<Option<String>> {
        self.schema
            .columns
            .iter()
            .zip(row)
            .filter(|(c, _)| c.key)
            .map(|(c, d)| pgtext::render(&c.sql_type, d))
            .collect()
    }

    pub fn add(&mut self, change: &SinkChange) {
        let op_index = match change.op {
            Op::Create => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Read => 3,
            Op::Truncate => 4,
        };
        self.counts[op_index] += 1;
        match (change.op, &change.before, &change.after) {
            (Op::Truncate, _, _) => {
                self.truncate = true;
                self.order.clear();
                self.actions.clear();
            }
            (Op::Delete, Some(before), _) => {
                let key = self.key(before);
                self.put(key, Action::Delete(before.clone()));
            }
            (_, _, Some(after)) => {
                let key = self.key(after);
                let mut row = after.clone();
                if row.contains(&Datum::Unchanged) {
                    // Fill unchanged columns from an earlier full image of the same key in
                    // this batch; otherwise they stay unchanged and are not written.
                    if let Some(Action::Upsert(prev)) = self.actions.get(&key) {
                        for (d, p) in row.iter_mut().zip(prev) {
                            if *d == Datum::Unchanged {
                                *d = p.clone();
                            }
                        }
                    }
                }
                self.put(key, Action::Upsert(row));
            }
            _ => {}
        }
    }

    fn put(&mut self, key: Vec<Option<String>>, action: Action) {
        if self.actions.insert(key.clone(), action).is_none() {
            self.order.push(key);
        }
    }
}

/// The partitions a batch touches, sorted: the order to lock their offsets rows in (a stable
/// order avoids deadlocks between routers sharing a sink).
pub(crate) fn partitions(batch: &Batch) -> Vec<(Arc<str>, i32)> {
    let mut out: Vec<(Arc<str>, i32)> = batch
        .consumed
        .iter()
        .map(|c| (c.topic.clone(), c.partition))
        .chain(
            batch
                .changes
                .iter()
                .map(|c| (c.origin.topic.clone(), c.origin.partition)),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A batch sorted out against what the sink has stored.
pub(crate) struct Sorted {
    /// Plans to execute in this order (a table's plan under an older schema version before
    /// the plan under its newer one).
    pub steps: Vec<Plan>,
    /// Changes dropped as already applied.
    pub skipped: usize,
    /// What to store per partition that moved.
    pub progress: Vec<((Arc<str>, i32), StoredProgress)>,
}

/// Per topic-partition state while sorting.
struct PartitionState {
    stored_offset: i64,
    /// Highest position applied so far (stored, then raised by this batch's changes).
    high_water: Option<Position>,
    /// The offset of the message that set `high_water` in this batch: a message mapped into
    /// several target tables gives several changes with one position, all of them fresh.
    high_water_offset: Option<i64>,
    last_offset: i64,
    changed: bool,
}

/// Drops the changes whose offset is at or below the stored offset of their partition, or
/// whose position is not above the highest applied (in order, so a replay later in the same
/// batch is caught too), and collapses the rest per table version and key.
pub(crate) fn sort(batch: &Batch, stored: HashMap<(Arc<str>, i32), StoredProgress>) -> Sorted {
    let mut parts: HashMap<(Arc<str>, i32), PartitionState> = stored
        .into_iter()
        .map(|(k, s)| {
            (
                k,
                PartitionState {
                    stored_offset: s.offset,
                    high_water: s.position,
                    high_water_offset: None,
                    last_offset: s.offset,
                    changed: false,
                },
            )
        })
        .collect();
    for c in &batch.consumed {
        if let Some(p) = parts.get_mut(&(c.topic.clone(), c.partition)) {
            if c.offset > p.last_offset {
                p.last_offset = c.offset;
                p.changed = true;
            }
        }
    }
    let mut skipped = 0;
    let mut steps = Vec::new();
    let mut plans: HashMap<TableId, Plan> = HashMap::new();
    for change in &batch.changes {
        let Some(p) = parts.get_mut(&(change.origin.topic.clone(), change.origin.partition)) else {
            continue;
        };
        if change.origin.offset > p.last_offset {
            p.last_offset = change.origin.offset;
            p.changed = true;
        }
        let fresh = change.origin.offset > p.stored_offset
            && p.high_water.as_ref().is_none_or(|hw| {
                change.position > *hw
                    || (change.position == *hw && p.high_water_offset == Some(change.origin.offset))
            });
        if !fresh {
            skipped += 1;
            continue;
        }
        p.high_water = Some(change.position.clone());
        p.high_water_offset = Some(change.origin.offset);
        p.changed = true;
        let id = change.table.id.clone();
        // A new schema version of a table: what was planned under the old one goes first.
        if plans
            .get(&id)
            .is_some_and(|plan| *plan.schema != *change.table)
        {
            if let Some(old) = plans.remove(&id) {
                steps.push(old);
            }
        }
        plans
            .entry(id)
            .or_insert_with(|| Plan::new(change.table.clone()))
            .add(change);
    }
    steps.extend(plans.into_values());
    let progress = parts
        .into_iter()
        .filter(|(_, p)| p.changed)
        .map(|(k, p)| {
            (
                k,
                StoredProgress {
                    offset: p.last_offset,
                    position: p.high_water,
                },
            )
        })
        .collect();
    Sorted {
        steps,
        skipped,
        progress,
    }
}
