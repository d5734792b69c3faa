//! Partitions the router holds back on purpose, and why: a table the sink cannot take now
//! (blocked), a message a mapping scheme does not fit (held for the scheme), a truncate not
//! every partition has reached (waiting at a barrier). The router pauses and resumes the
//! partitions; this type decides which, keeps their held changes in order, and is the one
//! owner of the `sluice_router_table_blocked` gauge: a table reads 1 while anything of it is
//! held for either reason, 0 once nothing is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rdkafka::message::OwnedMessage;
use sluice_schemas::TableId;

use crate::metrics as m;
use crate::pending::{move_partitions, Pending};

/// A topic-partition.
pub(crate) type Part = (Arc<str>, i32);

/// The changes of a blocked table's partitions, waiting.
pub(crate) struct Held {
    pub pending: Pending,
    pub reason: String,
    pub since: std::time::Instant,
}

/// The messages of a partition waiting for their table's scheme to be fixed.
pub(crate) struct SchemeHeld {
    pub table: TableId,
    pub detail: String,
    pub messages: VecDeque<OwnedMessage>,
    pub since: std::time::Instant,
}

/// A partition's changes after a barrier it reached first, in order: the sink applies none of
/// them until every partition has reached it (it says so by holding the partition again).
pub(crate) struct BarrierWait {
    pub pending: Pending,
    pub retry_at: std::time::Instant,
}

#[derive(Default)]
pub(crate) struct Holds {
    /// Tables the sink cannot take now (their DDL failed, they are missing, …), with their
    /// partitions' changes.
    blocked: HashMap<TableId, Held>,
    /// The partitions of the blocked tables, and which table holds each.
    blocked_partitions: HashMap<Part, TableId>,
    /// Partitions whose next message a mapping scheme does not fit: that message and those
    /// fetched after it, as they came.
    scheme_held: HashMap<Part, SchemeHeld>,
    /// Partitions waiting at a barrier.
    barrier_held: HashMap<Part, BarrierWait>,
}

impl Holds {
    /// Whether anything of `table` is held, blocked or for its scheme.
    pub fn table_is_held(&self, table: &TableId) -> bool {
        self.blocked.contains_key(table) || self.scheme_held.values().any(|h| h.table == *table)
    }

    /// Sets the table's gauge from what is held of it: the only place that writes it.
    fn publish(&self, table: &TableId) {
        let held = if self.table_is_held(table) { 1.0 } else { 0.0 };
        metrics::gauge!(m::TABLE_BLOCKED, "table" => table.to_string()).set(held);
    }

    /// Whether the partition is paused for a reason of its own, which the end of an outage
    /// must not undo.
    pub fn is_paused_on_purpose(&self, key: &Part) -> bool {
        self.blocked_partitions.contains_key(key)
            || self.scheme_held.contains_key(key)
            || self.barrier_held.contains_key(key)
    }

    /// Every partition paused on purpose.
    /// Whether `part` is among [`Holds::paused_on_purpose`] (without building the set).
    pub fn holds_back(&self, part: &Part) -> bool {
        self.blocked_partitions.contains_key(part)
            || self.scheme_held.contains_key(part)
            || self.barrier_held.contains_key(part)
    }

    pub fn paused_on_purpose(&self) -> HashSet<Part> {
        self.blocked_partitions
            .keys()
            .chain(self.scheme_held.keys())
            .chain(self.barrier_held.keys())
            .cloned()
            .collect()
    }

    // --- blocked tables

    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    pub fn blocked_tables(&self) -> Vec<TableId> {
        self.blocked.keys().cloned().collect()
    }

    /// The blocked table a partition belongs to.
    pub fn blocked_table_of(&self, key: &Part) -> Option<TableId> {
        self.blocked_partitions.get(key).cloned()
    }

    /// Takes a blocked table's held changes out to work on them; [`Holds::put_blocked`]
    /// gives them back, [`Holds::unblock`] ends the block. The table stays blocked meanwhile.
    pub fn take_blocked(&mut self, table: &TableId) -> Option<Held> {
        self.blocked.remove(table)
    }

    pub fn put_blocked(&mut self, table: TableId, held: Held) {
        self.blocked.insert(table, held);
    }

    /// Blocks `table`: the changes of `partitions` move from `pending` to what the table
    /// holds, after any it holds already. The caller pauses the partitions.
    pub fn block(
        &mut self,
        table: &TableId,
        reason: String,
        partitions: &HashSet<Part>,
        pending: &mut Pending,
    ) {
        let held = self.blocked.entry(table.clone()).or_insert_with(|| Held {
            pending: Pending::new(),
            reason: reason.clone(),
            since: std::time::Instant::now(),
        });
        held.reason = reason;
        move_partitions(pending, &mut held.pending, partitions);
        for p in partitions {
            self.blocked_partitions.insert(p.clone(), table.clone());
        }
        self.publish(table);
    }

    /// Ends the block of a table whose held changes the sink took (taken out with
    /// [`Holds::take_blocked`]): returns its partitions that may resume (those not held for
    /// another reason).
    pub fn unblock(&mut self, table: &TableId) -> Vec<Part> {
        self.blocked.remove(table);
        let mut freed = Vec::new();
        self.blocked_partitions.retain(|key, t| {
            if t == table {
                freed.push(key.clone());
                false
            } else {
                true
            }
        });
        freed.retain(|key| !self.is_paused_on_purpose(key));
        self.publish(table);
        freed
    }

    /// Moves the changes of blocked tables' partitions out of `pending` into what each table
    /// holds.
    pub fn divert_blocked(&mut self, pending: &mut Pending) {
        if self.blocked_partitions.is_empty() || pending.is_empty() {
            return;
        }
        let mut by_table: HashMap<TableId, HashSet<Part>> = HashMap::new();
        for key in pending.consumed.keys() {
            if let Some(table) = self.blocked_partitions.get(key) {
                by_table
                    .entry(table.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        for (table, partitions) in by_table {
            if let Some(held) = self.blocked.get_mut(&table) {
                move_partitions(pending, &mut held.pending, &partitions);
            }
        }
    }

    // --- held for a scheme

    pub fn has_scheme_held(&self) -> bool {
        !self.scheme_held.is_empty()
    }

    /// Holds a partition whose message `msg` the table's scheme does not fit. The caller
    /// pauses the partition.
    pub fn hold_for_scheme(
        &mut self,
        key: Part,
        table: TableId,
        detail: String,
        msg: OwnedMessage,
    ) {
        self.scheme_held.insert(
            key,
            SchemeHeld {
                table: table.clone(),
                detail,
                messages: VecDeque::from([msg]),
                since: std::time::Instant::now(),
            },
        );
        self.publish(&table);
    }

    /// The queue of a partition held for its scheme, which a message fetched before the
    /// pause joins.
    pub fn scheme_queue(&mut self, key: &Part) -> Option<&mut VecDeque<OwnedMessage>> {
        self.scheme_held.get_mut(key).map(|h| &mut h.messages)
    }

    pub fn scheme_held_partitions(&self) -> Vec<Part> {
        self.scheme_held.keys().cloned().collect()
    }

    /// Takes a partition's scheme hold out to map its messages again; give it back with
    /// [`Holds::put_scheme_held`] (some still do not fit) or end it with
    /// [`Holds::release_scheme`].
    pub fn take_scheme_held(&mut self, key: &Part) -> Option<SchemeHeld> {
        self.scheme_held.remove(key)
    }

    pub fn put_scheme_held(&mut self, key: Part, held: SchemeHeld) {
        self.scheme_held.insert(key, held);
    }

    /// Every message of a partition held for its scheme fits now (its hold was taken out with
    /// [`Holds::take_scheme_held`]): whether the partition may resume.
    pub fn release_scheme(&mut self, key: &Part, table: &TableId) -> bool {
        self.publish(table);
        !self.is_paused_on_purpose(key)
    }

    // --- waiting at a barrier

    /// Whether a partition's wait at a barrier is due to be tried again.
    pub fn barrier_due(&self, now: std::time::Instant) -> bool {
        self.barrier_held.values().any(|w| w.retry_at <= now)
    }

    pub fn barrier_due_partitions(&self, now: std::time::Instant) -> Vec<Part> {
        self.barrier_held
            .iter()
            .filter(|(_, w)| w.retry_at <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The wait of a partition at a barrier, which its later messages join.
    pub fn barrier_wait(&mut self, key: &Part) -> Option<&mut BarrierWait> {
        self.barrier_held.get_mut(key)
    }

    /// Holds a partition at a barrier with `older` (its changes from the barrier on), ahead of
    /// anything it holds there already. Returns whether the partition was not waiting before
    /// (the caller pauses it).
    pub fn hold_at_barrier(
        &mut self,
        key: Part,
        mut older: Pending,
        retry_at: std::time::Instant,
    ) -> bool {
        let new = match self.barrier_held.remove(&key) {
            Some(mut wait) => {
                move_partitions(&mut wait.pending, &mut older, &HashSet::from([key.clone()]));
                false
            }
            None => true,
        };
        self.barrier_held.insert(
            key,
            BarrierWait {
                pending: older,
                retry_at,
            },
        );
        new
    }

    /// What the next batch collected of partitions waiting at a barrier joins their wait,
    /// behind what it holds.
    pub fn divert_to_barriers(&mut self, pending: &mut Pending) {
        for (key, wait) in &mut self.barrier_held {
            move_partitions(pending, &mut wait.pending, &HashSet::from([key.clone()]));
        }
    }

    /// A partition's changes held at a barrier are applied: if nothing was held again, the
    /// wait ends. `None` while it goes on, else whether the partition may resume.
    pub fn release_barrier_if_empty(&mut self, key: &Part) -> Option<bool> {
        let released = self
            .barrier_held
            .get(key)
            .is_some_and(|w| w.pending.is_empty() && w.pending.batch.changes.is_empty());
        if !released {
            return None;
        }
        self.barrier_held.remove(key);
        Some(!self.is_paused_on_purpose(key))
    }

    // --- rebalances

    /// A partition this router no longer owns: whatever is held of it goes (the sink never
    /// recorded it, so its next owner reads it again). Returns a blocked table that no
    /// longer holds anything, now unblocked.
    pub fn forget(&mut self, key: &Part) -> Option<TableId> {
        self.barrier_held.remove(key);
        if let Some(held) = self.scheme_held.remove(key) {
            self.publish(&held.table);
        }
        let table = self.blocked_partitions.remove(key)?;
        let held = self.blocked.get_mut(&table)?;
        let (topic, partition) = (key.0.as_ref(), key.1);
        held.pending
            .batch
            .changes
            .retain(|c| !(c.origin.topic.as_ref() == topic && c.origin.partition == partition));
        held.pending.consumed.remove(key);
        held.pending
            .raw
            .retain(|(t, p, _), _| !(t.as_ref() == topic && *p == partition));
        if !held.pending.consumed.is_empty() {
            return None;
        }
        self.blocked.remove(&table);
        self.publish(&table);
        Some(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{orders as table, part, pending_at as pending};
    use metrics_exporter_prometheus::PrometheusBuilder;
    use rdkafka::message::Timestamp;

    fn message(p: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            p,
            offset,
            None,
        )
    }

    /// Runs `test` with a recorder of its own; `test` reads `public.orders`' gauge with the
    /// function it is given.
    fn with_gauge(test: impl FnOnce(&dyn Fn() -> Option<f64>)) {
        let recorder = PrometheusBuilder::new().build_recorder();
        let gauge = || {
            recorder.handle().render().lines().find_map(|l| {
                l.strip_prefix("sluice_router_table_blocked{table=\"public.orders\"} ")
                    .and_then(|v| v.parse().ok())
            })
        };
        metrics::with_local_recorder(&recorder, || test(&gauge));
    }

    /// Holds with `public.orders` blocked on `partitions`, holding their changes of `batch`.
    fn blocked(partitions: &[i32], batch: &mut Pending) -> Holds {
        let mut holds = Holds::default();
        let partitions: HashSet<Part> = partitions.iter().map(|&p| part(p)).collect();
        holds.block(&table(), "missing".into(), &partitions, batch);
        holds
    }

    #[test]
    fn a_table_blocked_and_held_for_its_scheme_reads_blocked_until_both_end() {
        with_gauge(|gauge| {
            // Given a table the sink refused on partition 0 and whose scheme does not fit a
            // message of partition 1,
            let mut holds = blocked(&[0], &mut pending(&[(0, 10), (0, 11)]));
            holds.hold_for_scheme(part(1), table(), "no fit".into(), message(1, 5));
            assert_eq!(gauge(), Some(1.0));

            // when the scheme fits again, the table still reads blocked (the sink still
            // refuses it) and partition 1 may resume;
            let held = holds.take_scheme_held(&part(1)).unwrap();
            assert!(holds.release_scheme(&part(1), &held.table));
            assert_eq!(gauge(), Some(1.0));
            assert!(holds.is_paused_on_purpose(&part(0)));

            // and once the sink takes it, it reads 0 and partition 0 resumes.
            let taken = holds.take_blocked(&table()).unwrap();
            assert_eq!(taken.pending.batch.changes.len(), 2);
            assert_eq!(holds.unblock(&table()), vec![part(0)]);
            assert_eq!(gauge(), Some(0.0));
            assert!(holds.paused_on_purpose().is_empty());
        });
    }

    #[test]
    fn an_unblocked_table_whose_partition_is_held_for_its_scheme_stays_held_there() {
        with_gauge(|gauge| {
            let mut holds = blocked(&[0, 1], &mut pending(&[(0, 10), (1, 3)]));
            holds.hold_for_scheme(part(1), table(), "no fit".into(), message(1, 4));
            holds.take_blocked(&table()).unwrap();
            // Partition 1 stays paused: its scheme still does not fit; so does the gauge.
            assert_eq!(holds.unblock(&table()), vec![part(0)]);
            assert_eq!(gauge(), Some(1.0));
            assert!(holds.is_paused_on_purpose(&part(1)));
        });
    }

    #[test]
    fn changes_of_blocked_partitions_join_what_their_table_holds_in_order() {
        let mut first = pending(&[(0, 1), (1, 1), (0, 2)]);
        let mut holds = blocked(&[0], &mut first);
        // What stays is partition 1's.
        assert_eq!(first.batch.changes.len(), 1);
        assert_eq!(first.batch.changes[0].origin.partition, 1);
        // A later batch's partition-0 changes go behind the held ones.
        let mut next = pending(&[(1, 2), (0, 3), (0, 4)]);
        holds.divert_blocked(&mut next);
        assert_eq!(next.consumed.keys().collect::<Vec<_>>(), vec![&part(1)]);
        let held = holds.take_blocked(&table()).unwrap();
        let offsets: Vec<i64> = held
            .pending
            .batch
            .changes
            .iter()
            .map(|c| c.origin.offset)
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4]);
        assert_eq!(held.pending.consumed[&part(0)], 4);
    }

    #[test]
    fn a_revoked_partition_takes_its_held_changes_with_it() {
        with_gauge(|gauge| {
            let mut holds = blocked(&[0, 1], &mut pending(&[(0, 1), (1, 1)]));
            // One of two partitions revoked: the table stays blocked with the other's.
            assert_eq!(holds.forget(&part(0)), None);
            assert_eq!(gauge(), Some(1.0));
            // The last one: nothing is held of the table any more.
            assert_eq!(holds.forget(&part(1)), Some(table()));
            assert_eq!(gauge(), Some(0.0));
            assert!(!holds.has_blocked());
        });
    }

    #[test]
    fn a_barrier_wait_keeps_its_older_changes_first_and_ends_when_nothing_is_held_again() {
        let now = std::time::Instant::now();
        let mut holds = Holds::default();
        assert!(holds.hold_at_barrier(part(0), pending(&[(0, 7), (0, 8)]), now));
        // Changes collected meanwhile join behind.
        let mut next = pending(&[(0, 9), (1, 1)]);
        holds.divert_to_barriers(&mut next);
        assert_eq!(next.batch.changes.len(), 1);
        // Tried again and held again from 7: that goes first.
        let tried = std::mem::replace(
            &mut holds.barrier_wait(&part(0)).unwrap().pending,
            Pending::new(),
        );
        assert!(!holds.hold_at_barrier(part(0), tried, now));
        let offsets: Vec<i64> = holds
            .barrier_wait(&part(0))
            .unwrap()
            .pending
            .batch
            .changes
            .iter()
            .map(|c| c.origin.offset)
            .collect();
        assert_eq!(offsets, [7, 8, 9]);
        assert!(holds.is_paused_on_purpose(&part(0)));
        assert_eq!(holds.release_barrier_if_empty(&part(0)), None);
        // Applied and not held again: the wait ends and the partition may resume.
        holds.barrier_wait(&part(0)).unwrap().pending = Pending::new();
        assert_eq!(holds.release_barrier_if_empty(&part(0)), Some(true));
        assert!(!holds.is_paused_on_purpose(&part(0)));
    }
}
