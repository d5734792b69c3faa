//! What the router's unit tests share: changes and batches of `public.orders`, and a sink in
//! memory.

use std::sync::Arc;

use sluice_schemas::{Column, Datum, Op, Position, SqlType, TableId, TableSchema};
use sluice_sinks::{Origin, SinkChange};

use crate::holds::Part;
use crate::pending::{consumed_list, Pending};

pub fn orders() -> TableId {
    TableId::new("public", "orders")
}

/// Topic `t`'s partition `p`.
pub fn part(p: i32) -> Part {
    (Arc::from("t"), p)
}

/// An insert of row `id` into `public.orders`, read from offset `offset` of partition
/// `partition` of topic `t`.
pub fn insert(partition: i32, offset: i64, id: i32) -> SinkChange {
    SinkChange {
        row: sluice_schemas::RowChange {
            table: Arc::new(TableSchema {
                id: orders(),
                columns: vec![Column {
                    name: "id".into(),
                    sql_type: SqlType::Int32,
                    key: true,
                    missing: None,
                }],
            }),
            op: Op::Create,
            before: None,
            after: Some(vec![Datum::Int(id)]),
        },
        position: Position::postgres(offset as u64, 0),
        origin: Origin {
            topic: Arc::from("t"),
            partition,
            offset,
        },
        barrier: None,
    }
}

/// A batch of these changes, with their partitions' last offsets as consumed.
pub fn pending(changes: Vec<SinkChange>) -> Pending {
    let mut p = Pending::new();
    for c in changes {
        let key = (c.origin.topic.clone(), c.origin.partition);
        let offset = p.consumed.entry(key).or_insert(c.origin.offset);
        *offset = (*offset).max(c.origin.offset);
        p.batch.changes.push(c);
    }
    p.batch.consumed = consumed_list(&p.consumed);
    p
}

/// A batch of one insert per `(partition, offset)`, the row's id being its offset.
pub fn pending_at(changes: &[(i32, i64)]) -> Pending {
    pending(
        changes
            .iter()
            .map(|&(p, o)| insert(p, o, o as i32))
            .collect(),
    )
}

pub mod memory {
    //! A sink in memory that keeps the [`Sink`] contract (rows and offsets committed together,
    //! replays skipped), for the router's unit tests; it can be told to be down, to lack a
    //! table, to refuse a value, or to refuse any batch of more than one change as a whole.

    use std::collections::{BTreeMap, HashMap, HashSet};

    use sluice_schemas::{Datum, Op, TableId};
    use sluice_sinks::{ApplyOutcome, Batch, Pieces, Sink, SinkError, StoredProgress};

    #[derive(Default)]
    pub struct MemorySink {
        /// Per table, the rows by their first column.
        pub rows: HashMap<TableId, BTreeMap<i64, Vec<Datum>>>,
        pub offsets: HashMap<(String, i32), i64>,
        /// Every change written, in order: an observer of applies, like a sink trigger.
        pub writes: Vec<(TableId, i64)>,
        pub down: bool,
        pub missing: HashSet<TableId>,
        /// A first-column value the sink refuses (a constraint).
        pub refused: Option<i64>,
        /// Refuses a batch of more than one change as a whole (a unique swap in one statement).
        pub whole_batches_fail: bool,
    }

    fn key(values: &[Datum]) -> i64 {
        match values.first() {
            Some(Datum::Int(v)) => i64::from(*v),
            Some(Datum::Long(v)) => *v,
            other => panic!("the memory sink keys rows by an integer first column, not {other:?}"),
        }
    }

    impl MemorySink {
        fn check(&self, batch: &Batch) -> Result<(), SinkError> {
            if self.down {
                return Err(SinkError::Mysql(mysql_async::Error::Driver(
                    mysql_async::DriverError::ConnectionClosed,
                )));
            }
            if let Some(c) = batch
                .changes
                .iter()
                .find(|c| self.missing.contains(&c.table.id))
            {
                return Err(SinkError::Table {
                    table: c.table.id.clone(),
                    message: format!("{} does not exist", c.table.id),
                });
            }
            Ok(())
        }

        fn refuses(&self, values: &[Datum]) -> bool {
            self.refused == Some(key(values))
        }

        /// Writes the changes and records the offsets, skipping what was applied before.
        fn write(&mut self, batch: &Batch) -> ApplyOutcome {
            let mut outcome = ApplyOutcome::default();
            for c in &batch.changes {
                let stored = self
                    .offsets
                    .get(&(c.origin.topic.to_string(), c.origin.partition))
                    .copied()
                    .unwrap_or(-1);
                if c.origin.offset <= stored {
                    outcome.skipped += 1;
                    continue;
                }
                let rows = self.rows.entry(c.table.id.clone()).or_default();
                match (c.op, &c.before, &c.after) {
                    (Op::Delete, Some(before), _) => {
                        rows.remove(&key(before));
                    }
                    (_, _, Some(after)) => {
                        rows.insert(key(after), after.clone());
                    }
                    _ => continue,
                }
                let k = c.after.as_deref().or(c.before.as_deref()).map_or(0, key);
                self.writes.push((c.table.id.clone(), k));
                outcome.applied += 1;
            }
            for c in &batch.consumed {
                self.offsets
                    .insert((c.topic.to_string(), c.partition), c.offset);
            }
            outcome
        }
    }

    impl Sink for MemorySink {
        async fn apply(&mut self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
            self.check(batch)?;
            let refused = batch
                .changes
                .iter()
                .any(|c| c.after.as_deref().is_some_and(|a| self.refuses(a)));
            if refused || (self.whole_batches_fail && batch.changes.len() > 1) {
                return Err(SinkError::Value("new row violates check constraint".into()));
            }
            Ok(self.write(batch))
        }

        async fn apply_in_pieces(&mut self, batch: &Batch) -> Result<Pieces, SinkError> {
            self.check(batch)?;
            if let Some(index) = batch
                .changes
                .iter()
                .position(|c| c.after.as_deref().is_some_and(|a| self.refuses(a)))
            {
                return Ok(Pieces::Rejected {
                    index,
                    reason: "new row violates check constraint".into(),
                    missing_row: false,
                });
            }
            Ok(Pieces::Applied(self.write(batch)))
        }

        async fn progress(
            &mut self,
            topic: &str,
            partition: i32,
        ) -> Result<Option<StoredProgress>, SinkError> {
            self.check(&Batch::default())?;
            Ok(self
                .offsets
                .get(&(topic.to_string(), partition))
                .map(|&offset| StoredProgress {
                    offset,
                    position: None,
                }))
        }
    }
}
