//! What every sink does with a batch before writing it, whatever its database: drop what was
//! already applied (by offset and source position, per topic-partition), and collapse each
//! key's changes into the one action its last change says.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sluice_schemas::{pgtext, Datum, Op, Position, TableId, TableSchema};

use tracing::warn;

use crate::{Barrier, Batch, Origin, SinkChange, StoredProgress};

/// The maps of the per-change path: keys are Sluice's own, so a fast hasher is safe.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What a batch does to one key of one table, after collapsing. Rows are the batch's own,
/// copied only when an update's unchanged columns are filled in from an earlier image.
#[derive(Debug)]
pub(crate) enum Action<'a> {
    Upsert(Cow<'a, [Datum]>),
    Delete(&'a [Datum]),
}

/// The collapsed changes of one table version.
pub(crate) struct Plan<'a> {
    pub schema: Arc<TableSchema>,
    /// The table was truncated (before the actions).
    pub truncate: bool,
    /// Per key, in the order its first change came, what its last change says.
    pub actions: Vec<Action<'a>>,
    /// Each key's place in `actions`.
    slots: FastMap<Key, usize>,
    /// Changes by op, in the order c, u, d, r, t (for metrics).
    pub counts: [u64; 5],
    /// The highest source position among the plan's changes: how new its table version is.
    pub newest: Option<&'a Position>,
    key_columns: Vec<usize>,
}

/// A row's identity within a plan (see [`Plan::key`]). A single integer key column's values
/// are compared as integers; every other key by its text form. The two never meet for one
/// table version: its key columns are the same for every row.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Text(String),
}

impl<'a> Plan<'a> {
    pub fn new(schema: Arc<TableSchema>) -> Plan<'a> {
        Plan {
            key_columns: schema.key_indices(),
            schema,
            truncate: false,
            actions: Vec::new(),
            slots: FastMap::default(),
            counts: [0; 5],
            newest: None,
        }
    }

    /// The row's key: a single integer key column as itself (the commonest key, and no
    /// string to build per row), any other as [`Plan::text_key`].
    fn key(&self, row: &[Datum]) -> Key {
        if let [i] = self.key_columns[..] {
            match row.get(i) {
                Some(Datum::Long(v)) => return Key::Int(*v),
                Some(Datum::Int(v)) => return Key::Int(i64::from(*v)),
                _ => {}
            }
        }
        Key::Text(self.text_key(row))
    }

    /// The row's key columns in their text form, each length-prefixed (NULL as `-`), in one
    /// string: equal keys give equal strings and no two keys the same.
    fn text_key(&self, row: &[Datum]) -> String {
        let mut key = String::new();
        for (c, d) in self.schema.columns.iter().zip(row).filter(|(c, _)| c.key) {
            let text: Cow<'_, str> = match d {
                // The commonest keys: written in place, their length known without formatting.
                Datum::Long(i) => {
                    let _ = write!(key, "{}:{i}", decimal_len(*i));
                    continue;
                }
                Datum::Int(i) => {
                    let _ = write!(key, "{}:{i}", decimal_len(i64::from(*i)));
                    continue;
                }
                Datum::String(s) | Datum::Decimal(s) | Datum::Uuid(s) => Cow::Borrowed(s),
                d => match pgtext::render(&c.sql_type, d) {
                    Some(text) => Cow::Owned(text),
                    None => {
                        key.push('-');
                        continue;
                    }
                },
            };
            let _ = write!(key, "{}:{text}", text.len());
        }
        key
    }

    pub fn add(&mut self, change: &'a SinkChange) {
        if self.newest.is_none_or(|n| change.position > *n) {
            self.newest = Some(&change.position);
        }
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
                self.actions.clear();
                self.slots.clear();
            }
            (Op::Delete, Some(before), _) => {
                let key = self.key(before);
                self.put(key, Action::Delete(before.as_slice()));
            }
            (_, _, Some(after)) => {
                let key = self.key(after);
                let mut row = Cow::Borrowed(after.as_slice());
                if after.contains(&Datum::Unchanged) {
                    // Fill unchanged columns from an earlier full image of the same key in
                    // this batch; otherwise they stay unchanged and are not written.
                    if let Some(Action::Upsert(prev)) =
                        self.slots.get(&key).map(|&i| &self.actions[i])
                    {
                        let filled: Vec<Datum> = after
                            .iter()
                            .zip(prev.iter())
                            .map(|(d, p)| if *d == Datum::Unchanged { p } else { d }.clone())
                            .collect();
                        row = Cow::Owned(filled);
                    }
                }
                self.put(key, Action::Upsert(row));
            }
            _ => {}
        }
    }

    fn put(&mut self, key: Key, action: Action<'a>) {
        match self.slots.get(&key) {
            Some(&i) => self.actions[i] = action,
            None => {
                self.slots.insert(key, self.actions.len());
                self.actions.push(action);
            }
        }
    }
}

/// How many characters `i` takes in decimal, its sign included.
fn decimal_len(i: i64) -> usize {
    let digits = i
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as usize + 1);
    digits + usize::from(i < 0)
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

/// Changes written per table version and op, counted into `sluice_sink_events_applied_total`
/// only once their transaction commits: a batch that rolls back, and a dead-letter search
/// (which always does), count nothing.
///
/// Changes written under a table's older key after changes under its newer one (see
/// [`OlderKey`]) are counted and warned of the same way.
#[derive(Debug, Default)]
pub(crate) struct Applied(Vec<(TableId, [u64; 5], Option<OlderKey>)>);

/// A table version written after one whose key differs (the key changed at the source, and
/// this version's changes came later: from another partition, or a lagging router): an
/// update may put an older value back, a delete by the older key may remove a row written
/// since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OlderKey {
    /// This version's key.
    pub key: Vec<String>,
    /// The newer version's.
    pub newer: Vec<String>,
}

impl OlderKey {
    /// `key` against the newer version's, when they are not the same columns.
    pub fn between(key: Vec<String>, newer: &[String]) -> Option<OlderKey> {
        let same = key.len() == newer.len() && key.iter().all(|k| newer.contains(k));
        (!same).then(|| OlderKey {
            key,
            newer: newer.to_vec(),
        })
    }
}

impl Applied {
    pub fn add(&mut self, plan: &Plan<'_>) {
        self.0.push((plan.schema.id.clone(), plan.counts, None));
    }

    /// Marks what was added last as written under an older key.
    pub fn older_key(&mut self, older: Option<OlderKey>) {
        if let Some(last) = self.0.last_mut() {
            last.2 = older;
        }
    }

    /// Adds what a later piece of the same transaction wrote.
    pub fn merge(&mut self, other: Applied) {
        self.0.extend(other.0);
    }

    /// How many tables' counts it holds (a mark to [`Applied::truncate`] back to).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Forgets what was added after the mark `len` (rolled back to a savepoint).
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    pub fn record(self, sink: &str) {
        for (table, counts, older) in self.0 {
            let table = table.to_string();
            for (count, op) in counts.iter().zip(["c", "u", "d", "r", "t"]) {
                if *count > 0 {
                    metrics::counter!(crate::metrics::EVENTS_APPLIED_TOTAL, "sink" => sink.to_string(), "table" => table.clone(), "op" => op)
                        .increment(*count);
                }
            }
            let written: u64 = counts.iter().sum();
            if let Some(OlderKey { key, newer }) = older.filter(|_| written > 0) {
                metrics::counter!(crate::metrics::OLDER_KEY_CHANGES_TOTAL, "sink" => sink.to_string(), "table" => table.clone())
                    .increment(written);
                warn!(sink, %table, changes = written, ?key, newer_key = ?newer, "changes written under the table's older key reached the sink after changes under its newer one: rows changed on both sides of the key change may differ from the source; compare the table with `sluice verify --repair` once the router has caught up");
            }
        }
    }
}

/// The pieces a refused batch is applied in (see [`crate::Sink::apply_in_pieces`]): ranges of
/// the batch's changes in source order (by position: a batch mixes topics, each table's, in
/// the order they were fetched); a refused range is split in halves, and a refused single
/// change is the culprit.
pub(crate) struct Splitter {
    /// Indices of `batch.changes` by source position (stable: a partition's changes keep
    /// their order).
    order: Vec<usize>,
    /// Ranges of `order` still to apply, the next last.
    stack: Vec<(usize, usize)>,
}

impl Splitter {
    /// The batch failed whole: its halves come first.
    pub fn new(batch: &Batch) -> Splitter {
        let mut order: Vec<usize> = (0..batch.changes.len()).collect();
        order.sort_by(|a, b| batch.changes[*a].position.cmp(&batch.changes[*b].position));
        let mut splitter = Splitter {
            order,
            stack: Vec::new(),
        };
        splitter.split(0, batch.changes.len());
        splitter
    }

    fn split(&mut self, lo: usize, hi: usize) {
        if hi - lo <= 1 {
            self.stack.push((lo, hi));
        } else {
            let mid = lo + (hi - lo) / 2;
            self.stack.push((mid, hi));
            self.stack.push((lo, mid));
        }
    }

    /// The next range to apply.
    pub fn next(&mut self) -> Option<(usize, usize)> {
        self.stack.pop()
    }

    /// The range was refused: the culprit (its index in `batch.changes`) when it is one
    /// change, else its halves come next.
    pub fn refused(&mut self, lo: usize, hi: usize) -> Option<usize> {
        if hi - lo <= 1 {
            return Some(self.order[lo]);
        }
        self.split(lo, hi);
        None
    }

    /// A range of a batch as a batch of its own (its consumed offsets are recorded once all
    /// pieces are applied).
    pub fn piece(&self, batch: &Batch, lo: usize, hi: usize) -> Batch {
        Batch {
            changes: self.order[lo..hi]
                .iter()
                .map(|i| batch.changes[*i].clone())
                .collect(),
            consumed: Vec::new(),
        }
    }

    /// Adds a piece's outcome to the batch's: a partition held at a barrier is read again
    /// from the first offset any piece held it at.
    pub fn merge(total: &mut crate::ApplyOutcome, piece: crate::ApplyOutcome) {
        total.applied += piece.applied;
        total.skipped += piece.skipped;
        for h in piece.held {
            match total
                .held
                .iter_mut()
                .find(|t| t.partition == h.partition && t.topic == h.topic)
            {
                Some(t) => t.offset = t.offset.min(h.offset),
                None => total.held.push(h),
            }
        }
    }
}

/// A batch sorted out against what the sink has stored.
pub(crate) struct Sorted<'a> {
    /// Plans to execute in this order (a table's plan under an older schema version before
    /// the plan under its newer one).
    pub steps: Vec<Plan<'a>>,
    /// Changes dropped as already applied.
    pub skipped: usize,
    /// What to store per partition that moved.
    pub progress: Vec<((Arc<str>, i32), StoredProgress)>,
    /// Barriers this batch reached: to store (`false`) or, complete, to delete (`true`).
    pub barriers: Vec<(Barrier, bool)>,
    /// Partitions held at a barrier, with the offset to read them again from.
    pub held: Vec<Origin>,
}

/// The barriers partitions wait at, from what the sink stored: `waiting` are
/// `(topic, partition, barrier position)` of offsets rows with a barrier, `copies` the
/// barriers in the batch (their partition count).
pub(crate) fn stored_barriers(
    copies: &[(Arc<str>, Position, i32)],
    waiting: Vec<(Arc<str>, i32, Position)>,
) -> Vec<Barrier> {
    let mut out: Vec<Barrier> = Vec::new();
    for (topic, partition, position) in waiting {
        match out
            .iter_mut()
            .find(|b| b.position == position && *b.topic == *topic)
        {
            Some(b) => {
                if !b.arrived.contains(&partition) {
                    b.arrived.push(partition);
                }
            }
            None => {
                let partitions = copies
                    .iter()
                    .find(|(t, p, _)| *p == position && **t == *topic)
                    .map_or(i32::MAX, |(_, _, n)| *n);
                out.push(Barrier {
                    topic,
                    position,
                    partitions,
                    arrived: vec![partition],
                });
            }
        }
    }
    out
}

/// The barrier `partition` of `topic` waits at after a batch, when it reached one that is not
/// complete (to store with its offset); `barriers` are [`Sorted::barriers`].
pub(crate) fn waits_at<'b>(
    barriers: &'b [(Barrier, bool)],
    topic: &str,
    partition: i32,
) -> Option<&'b Position> {
    barriers
        .iter()
        .find(|(b, complete)| !complete && &*b.topic == topic && b.arrived.contains(&partition))
        .map(|(b, _)| &b.position)
}

/// The changes of a batch that are table-wide barriers (truncates published to several
/// partitions): `(topic, position, partitions)`, for the sink to claim their rows before
/// [`sort`].
pub(crate) fn barriers_in(batch: &Batch) -> Vec<(Arc<str>, Position, i32)> {
    let mut out: Vec<(Arc<str>, Position, i32)> = batch
        .changes
        .iter()
        .filter_map(|c| {
            let n = c.barrier.filter(|n| *n > 1)?;
            Some((c.origin.topic.clone(), c.position.clone(), n))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Per topic-partition state while sorting.
struct PartitionState<'a> {
    stored_offset: i64,
    /// Highest position applied so far (stored, then raised by this batch's changes).
    high_water: Option<Cow<'a, Position>>,
    /// The offset of the message that set `high_water` in this batch: a message mapped into
    /// several target tables gives several changes with one position, all of them fresh.
    high_water_offset: Option<i64>,
    last_offset: i64,
    changed: bool,
}

fn partition<'p, 'a>(
    parts: &'p mut [((Arc<str>, i32), PartitionState<'a>)],
    topic: &Arc<str>,
    number: i32,
) -> Option<&'p mut PartitionState<'a>> {
    parts
        .iter_mut()
        .find(|((t, n), _)| *n == number && (Arc::ptr_eq(t, topic) || **t == **topic))
        .map(|(_, state)| state)
}

/// Drops the changes whose offset is at or below the stored offset of their partition, or
/// whose position is not above the highest applied (in order, so a replay later in the same
/// batch is caught too), and collapses the rest per table version and key.
///
/// A barrier (a truncate on every partition of its topic, see [`SinkChange::barrier`]) is
/// applied once every partition has reached it: until then each partition that has is held —
/// none of its later changes is applied or recorded, in this batch or the next ones — so the
/// truncate, when the last partition reaches it, clears exactly what came before it.
/// `barriers` are those the sink has stored as incomplete (locked for this transaction).
pub(crate) fn sort(
    batch: &Batch,
    stored: HashMap<(Arc<str>, i32), StoredProgress>,
    mut barriers: Vec<Barrier>,
) -> Sorted<'_> {
    // A batch touches a few partitions: a list, searched by pointer first, costs less per
    // change than hashing the topic's name.
    let mut parts: Vec<((Arc<str>, i32), PartitionState<'_>)> = stored
        .into_iter()
        .map(|(k, s)| {
            (
                k,
                PartitionState {
                    stored_offset: s.offset,
                    high_water: s.position.map(Cow::Owned),
                    high_water_offset: None,
                    last_offset: s.offset,
                    changed: false,
                },
            )
        })
        .collect();
    // Partitions waiting at a barrier the sink stored: held for the whole batch.
    let mut held: Vec<(Arc<str>, i32)> = barriers
        .iter()
        .flat_map(|b| b.arrived.iter().map(|p| (b.topic.clone(), *p)))
        .collect();
    let mut changed_barriers: Vec<usize> = Vec::new();
    let is_held = |held: &[(Arc<str>, i32)], topic: &Arc<str>, p: i32| {
        held.iter().any(|(t, n)| *n == p && **t == **topic)
    };
    let mut skipped = 0;
    let mut held_anything: Vec<(Arc<str>, i32)> = Vec::new();
    let mut steps = Vec::new();
    let mut plans: FastMap<&TableId, Plan<'_>> = FastMap::default();
    let mut order: Vec<&TableId> = Vec::new();
    for change in &batch.changes {
        let (topic, number) = (&change.origin.topic, change.origin.partition);
        let Some(p) = partition(&mut parts, topic, number) else {
            continue;
        };
        let fresh = change.origin.offset > p.stored_offset
            && p.high_water.as_deref().is_none_or(|hw| {
                change.position > *hw
                    || (change.position == *hw && p.high_water_offset == Some(change.origin.offset))
            });
        if !fresh {
            if change.origin.offset > p.last_offset && !is_held(&held, topic, number) {
                p.last_offset = change.origin.offset;
                p.changed = true;
            }
            skipped += 1;
            continue;
        }
        if is_held(&held, topic, number) {
            if !held_anything
                .iter()
                .any(|(t, n)| *n == number && **t == **topic)
            {
                held_anything.push((topic.clone(), number));
            }
            continue;
        }
        if change.origin.offset > p.last_offset {
            p.last_offset = change.origin.offset;
        }
        p.high_water = Some(Cow::Borrowed(&change.position));
        p.high_water_offset = Some(change.origin.offset);
        p.changed = true;
        if let Some(n) = change.barrier.filter(|n| *n > 1) {
            let at = match barriers
                .iter()
                .position(|b| b.position == change.position && *b.topic == **topic)
            {
                Some(i) => i,
                None => {
                    barriers.push(Barrier {
                        topic: topic.clone(),
                        position: change.position.clone(),
                        partitions: n,
                        arrived: Vec::new(),
                    });
                    barriers.len() - 1
                }
            };
            let barrier = &mut barriers[at];
            barrier.partitions = n;
            if !barrier.arrived.contains(&number) {
                barrier.arrived.push(number);
            }
            if !changed_barriers.contains(&at) {
                changed_barriers.push(at);
            }
            if (barrier.arrived.len() as i32) < barrier.partitions {
                // Not every partition is here: this one waits, the truncate is not applied.
                held.push((topic.clone(), number));
                continue;
            }
        }
        let id = &change.table.id;
        // A new schema version of a table: what was planned under the old one goes first.
        if plans.get(id).is_some_and(|plan| {
            !Arc::ptr_eq(&plan.schema, &change.table) && *plan.schema != *change.table
        }) {
            if let Some(old) = plans.remove(id) {
                steps.push(old);
            }
        }
        plans
            .entry(id)
            .or_insert_with(|| {
                order.push(id);
                Plan::new(change.table.clone())
            })
            .add(change);
    }
    // Tables in the order the batch first touched them (a parent row inserted before its
    // children at the source is written first here too), not in hash order.
    for id in order {
        if let Some(plan) = plans.remove(id) {
            steps.push(plan);
        }
    }
    // What was consumed past the last change (tombstones, dead letters) is recorded too,
    // except on a held partition, which is read again from after its last recorded offset.
    for c in &batch.consumed {
        if is_held(&held, &c.topic, c.partition) {
            continue;
        }
        if let Some(p) = partition(&mut parts, &c.topic, c.partition) {
            if c.offset > p.last_offset {
                p.last_offset = c.offset;
                p.changed = true;
            }
        }
    }
    // A held partition with something not recorded is read again after its last recorded
    // offset.
    held.sort();
    held.dedup();
    let held_from: Vec<Origin> = held
        .into_iter()
        .filter_map(|(topic, number)| {
            let (_, p) = parts
                .iter()
                .find(|((t, n), _)| *n == number && **t == *topic)?;
            let behind = held_anything
                .iter()
                .any(|(t, n)| *n == number && **t == *topic)
                || batch.consumed.iter().any(|c| {
                    c.partition == number && *c.topic == *topic && c.offset > p.last_offset
                });
            behind.then(|| Origin {
                offset: p.last_offset + 1,
                topic,
                partition: number,
            })
        })
        .collect();
    let barriers = changed_barriers
        .into_iter()
        .map(|i| {
            let b = barriers[i].clone();
            let complete = b.arrived.len() as i32 >= b.partitions;
            (b, complete)
        })
        .collect();
    let progress = parts
        .into_iter()
        .filter(|(_, p)| p.changed)
        .map(|(k, p)| {
            (
                k,
                StoredProgress {
                    offset: p.last_offset,
                    position: p.high_water.map(Cow::into_owned),
                },
            )
        })
        .collect();
    Sorted {
        steps,
        skipped,
        progress,
        barriers,
        held: held_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Origin;
    use sluice_schemas::{Column, SqlType};

    fn table(keys: &[&str], others: &[&str]) -> Arc<TableSchema> {
        let col = |name: &&str, key| Column {
            name: name.to_string(),
            sql_type: SqlType::Text,
            key,
            missing: None,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: keys
                .iter()
                .map(|k| col(k, true))
                .chain(others.iter().map(|c| col(c, false)))
                .collect(),
        })
    }

    fn text(s: &str) -> Datum {
        Datum::String(s.into())
    }

    fn change(table: &Arc<TableSchema>, offset: i64, op: Op, row: Vec<Datum>) -> SinkChange {
        let (before, after) = match op {
            Op::Delete => (Some(row), None),
            _ => (None, Some(row)),
        };
        SinkChange {
            row: sluice_schemas::RowChange {
                table: table.clone(),
                op,
                before,
                after,
            },
            position: Position(offset.to_be_bytes().to_vec()),
            origin: Origin {
                topic: Arc::from("t"),
                partition: 0,
                offset,
            },
            barrier: None,
        }
    }

    #[test]
    fn a_refused_batch_is_split_in_halves_in_source_order_down_to_the_culprit() {
        let t = table(&["id"], &[]);
        // Fetched out of source order (two topics): positions 0..8 at batch indices reversed.
        let batch = Batch {
            changes: (0..8)
                .rev()
                .map(|p| change(&t, p, Op::Create, vec![text("k")]))
                .collect(),
            consumed: Vec::new(),
        };
        let offsets = |s: &Splitter, lo, hi| -> Vec<i64> {
            s.piece(&batch, lo, hi)
                .changes
                .iter()
                .map(|c| c.origin.offset)
                .collect()
        };
        let mut s = Splitter::new(&batch);
        assert_eq!(s.next(), Some((0, 4)));
        assert_eq!(offsets(&s, 0, 4), [0, 1, 2, 3]);
        assert_eq!(s.next(), Some((4, 8)));
        // The second half is refused: its halves come next, in order.
        assert_eq!(s.refused(4, 8), None);
        assert_eq!(s.next(), Some((4, 6)));
        assert_eq!(s.refused(4, 6), None);
        assert_eq!(s.next(), Some((4, 5)));
        assert_eq!(s.next(), Some((5, 6)));
        // The culprit is named by its index in the batch: position 5 is at index 2.
        assert_eq!(s.refused(5, 6), Some(2));
        // A batch of one is tried as it is.
        let one = Batch {
            changes: vec![change(&t, 0, Op::Create, vec![text("k")])],
            consumed: Vec::new(),
        };
        let mut s = Splitter::new(&one);
        assert_eq!(s.next(), Some((0, 1)));
        assert_eq!(s.next(), None);
    }

    fn sorted(
        changes: Vec<SinkChange>,
        stored: Option<(i64, i64)>,
    ) -> (Batch, HashMap<(Arc<str>, i32), StoredProgress>) {
        let last = changes.iter().map(|c| c.origin.offset).max().unwrap_or(-1);
        let batch = Batch {
            changes,
            consumed: vec![Origin {
                topic: Arc::from("t"),
                partition: 0,
                offset: last,
            }],
        };
        let (offset, position) = stored.unwrap_or((-1, -1));
        let stored = HashMap::from([(
            (Arc::from("t"), 0),
            StoredProgress {
                offset,
                position: (position >= 0).then(|| Position(position.to_be_bytes().to_vec())),
            },
        )]);
        (batch, stored)
    }

    fn rows(plan: &Plan<'_>) -> Vec<(&'static str, Vec<Datum>)> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Upsert(row) => ("upsert", row.to_vec()),
                Action::Delete(row) => ("delete", row.to_vec()),
            })
            .collect()
    }

    #[test]
    fn a_single_integer_key_collapses_by_its_value() {
        let t = table(&["id"], &["v"]);
        let (batch, stored) = sorted(
            vec![
                change(&t, 0, Op::Create, vec![Datum::Long(1), text("a")]),
                change(&t, 1, Op::Create, vec![Datum::Long(10), text("b")]),
                change(&t, 2, Op::Update, vec![Datum::Long(1), text("c")]),
                change(&t, 3, Op::Create, vec![Datum::Long(-1), text("d")]),
                change(&t, 4, Op::Delete, vec![Datum::Long(10), text("b")]),
                change(&t, 5, Op::Create, vec![Datum::Null, text("e")]),
            ],
            None,
        );
        let s = sort(&batch, stored, Vec::new());
        assert_eq!(
            rows(&s.steps[0]),
            vec![
                ("upsert", vec![Datum::Long(1), text("c")]),
                ("delete", vec![Datum::Long(10), text("b")]),
                ("upsert", vec![Datum::Long(-1), text("d")]),
                ("upsert", vec![Datum::Null, text("e")]),
            ]
        );
    }

    #[test]
    fn each_key_ends_as_its_last_change_says_in_the_order_keys_first_came() {
        let t = table(&["id"], &["v"]);
        let (batch, stored) = sorted(
            vec![
                change(&t, 0, Op::Create, vec![text("b"), text("1")]),
                change(&t, 1, Op::Create, vec![text("a"), text("1")]),
                change(&t, 2, Op::Update, vec![text("b"), text("2")]),
                change(&t, 3, Op::Delete, vec![text("a"), text("1")]),
            ],
            None,
        );
        let s = sort(&batch, stored, Vec::new());
        assert_eq!(s.steps.len(), 1);
        assert_eq!(
            rows(&s.steps[0]),
            vec![
                ("upsert", vec![text("b"), text("2")]),
                ("delete", vec![text("a"), text("1")]),
            ]
        );
        assert_eq!(s.steps[0].counts, [2, 1, 1, 0, 0]);
    }

    #[test]
    fn decimal_lengths_are_those_of_the_printed_numbers() {
        for i in [0, 7, -7, 9, 10, -10, 99, 100, 123_456, i64::MAX, i64::MIN] {
            assert_eq!(decimal_len(i), i.to_string().len(), "{i}");
        }
    }

    #[test]
    fn composite_keys_that_read_alike_run_together_stay_apart() {
        let t = table(&["a", "b"], &[]);
        let (batch, stored) = sorted(
            vec![
                change(&t, 0, Op::Create, vec![text("ab"), text("c")]),
                change(&t, 1, Op::Create, vec![text("a"), text("bc")]),
                change(&t, 2, Op::Create, vec![Datum::Null, text("x")]),
                change(&t, 3, Op::Create, vec![text("-"), text("x")]),
                change(&t, 4, Op::Create, vec![text("1:"), text("")]),
                change(&t, 5, Op::Create, vec![text(""), text("1:")]),
            ],
            None,
        );
        assert_eq!(sort(&batch, stored, Vec::new()).steps[0].actions.len(), 6);
        let ints = Arc::new(TableSchema {
            id: TableId::new("public", "n"),
            columns: ["a", "b"]
                .iter()
                .map(|n| Column {
                    name: n.to_string(),
                    sql_type: SqlType::Int64,
                    key: true,
                    missing: None,
                })
                .collect(),
        });
        let (batch, stored) = sorted(
            vec![
                change(&ints, 0, Op::Create, vec![Datum::Long(1), Datum::Long(23)]),
                change(&ints, 1, Op::Create, vec![Datum::Long(12), Datum::Long(3)]),
                change(&ints, 2, Op::Create, vec![Datum::Long(-1), Datum::Long(2)]),
                change(&ints, 3, Op::Create, vec![Datum::Long(1), Datum::Long(23)]),
            ],
            None,
        );
        assert_eq!(sort(&batch, stored, Vec::new()).steps[0].actions.len(), 3);
    }

    #[test]
    fn unchanged_columns_are_filled_from_an_earlier_image_of_the_key_in_the_batch() {
        let t = table(&["id"], &["big", "v"]);
        let (batch, stored) = sorted(
            vec![
                change(&t, 0, Op::Create, vec![text("k"), text("toast"), text("1")]),
                change(
                    &t,
                    1,
                    Op::Update,
                    vec![text("k"), Datum::Unchanged, text("2")],
                ),
                change(
                    &t,
                    2,
                    Op::Update,
                    vec![text("other"), Datum::Unchanged, text("3")],
                ),
            ],
            None,
        );
        let s = sort(&batch, stored, Vec::new());
        assert_eq!(
            rows(&s.steps[0]),
            vec![
                ("upsert", vec![text("k"), text("toast"), text("2")]),
                // No earlier image: left unchanged, for the sink to skip.
                ("upsert", vec![text("other"), Datum::Unchanged, text("3")]),
            ]
        );
    }

    #[test]
    fn what_was_applied_before_is_skipped_and_the_new_high_water_mark_recorded() {
        let t = table(&["id"], &["v"]);
        let (batch, stored) = sorted(
            vec![
                // At or below the stored offset.
                change(&t, 4, Op::Create, vec![text("a"), text("old")]),
                change(&t, 5, Op::Create, vec![text("b"), text("new")]),
                // A capture replay: a new offset, but a position already applied.
                {
                    let mut replay = change(&t, 6, Op::Create, vec![text("a"), text("replay")]);
                    replay.position = Position(5i64.to_be_bytes().to_vec());
                    replay
                },
            ],
            Some((4, 4)),
        );
        let s = sort(&batch, stored, Vec::new());
        assert_eq!(s.skipped, 2);
        assert_eq!(
            rows(&s.steps[0]),
            vec![("upsert", vec![text("b"), text("new")])]
        );
        let (_, progress) = &s.progress[0];
        assert_eq!(progress.offset, 6);
        assert_eq!(
            progress.position,
            Some(Position(5i64.to_be_bytes().to_vec()))
        );
    }

    /// A change of partition `partition` at `offset`, with source position `position`.
    fn at(
        table: &Arc<TableSchema>,
        partition: i32,
        offset: i64,
        position: i64,
        op: Op,
        id: i64,
    ) -> SinkChange {
        let mut c = change(table, offset, op, vec![Datum::Long(id), text("v")]);
        c.origin.partition = partition;
        c.position = Position(position.to_be_bytes().to_vec());
        if op == Op::Truncate {
            (c.before, c.after, c.barrier) = (None, None, Some(2));
        }
        c
    }

    fn fresh(partitions: &[i32]) -> HashMap<(Arc<str>, i32), StoredProgress> {
        partitions
            .iter()
            .map(|p| {
                (
                    (Arc::from("t"), *p),
                    StoredProgress {
                        offset: -1,
                        position: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_truncate_on_two_partitions_waits_for_both_and_holds_the_first() {
        let t = table(&["id"], &["v"]);
        // Partition 0 reaches the truncate (position 5) and goes on; partition 1 has not.
        let batch = Batch {
            changes: vec![
                at(&t, 0, 0, 1, Op::Create, 1),
                at(&t, 1, 0, 2, Op::Create, 2),
                at(&t, 0, 1, 5, Op::Truncate, 0),
                at(&t, 0, 2, 7, Op::Create, 3),
            ],
            consumed: vec![],
        };
        let s = sort(&batch, fresh(&[0, 1]), Vec::new());
        assert!(
            !s.steps[0].truncate,
            "applied before partition 1 reached it"
        );
        assert_eq!(
            s.steps[0].actions.len(),
            2,
            "the change after the barrier is held"
        );
        assert_eq!(
            s.held,
            [Origin {
                topic: Arc::from("t"),
                partition: 0,
                offset: 2
            }]
        );
        let (_, p0) = s.progress.iter().find(|((_, n), _)| *n == 0).unwrap();
        assert_eq!(p0.offset, 1, "partition 0 recorded up to the truncate only");
        assert_eq!(s.barriers.len(), 1);
        assert_eq!(
            (s.barriers[0].0.arrived.as_slice(), s.barriers[0].1),
            (&[0][..], false)
        );
        let stored_barrier = s.barriers[0].0.clone();

        // Then partition 1 reaches it (partition 0 read again from offset 2, still held).
        let batch = Batch {
            changes: vec![
                at(&t, 0, 2, 7, Op::Create, 3),
                at(&t, 1, 1, 3, Op::Create, 4),
                at(&t, 1, 2, 5, Op::Truncate, 0),
                at(&t, 1, 3, 8, Op::Create, 5),
            ],
            consumed: vec![],
        };
        let mut stored = fresh(&[0, 1]);
        stored.get_mut(&(Arc::from("t"), 0)).unwrap().offset = 1;
        let s = sort(&batch, stored, vec![stored_barrier]);
        assert!(s.steps[0].truncate, "every partition reached it");
        // What partition 1 had before it is cleared by it; what came after it is applied;
        // partition 0 stays held for this batch (its change is read again next time).
        assert_eq!(
            rows(&s.steps[0]),
            [("upsert", vec![Datum::Long(5), text("v")])]
        );
        assert_eq!(s.held.len(), 1);
        assert!(s.barriers[0].1, "complete");
    }
}
