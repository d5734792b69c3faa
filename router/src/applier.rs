//! The router's side of the sink: it owns the sink and the batch being applied while the next
//! is collected (depth-1 pipelining), and turns what an apply came to into one decision for
//! the routing loop ([`Attempt`]).

use sluice_schemas::TableId;
use sluice_sinks::{ApplyOutcome, Batch, Pieces, Sink, SinkError};
use tracing::{warn, Instrument};

use crate::pending::{consumed_list, Pending};
use crate::RouterError;

/// A batch being applied while the next one is collected: a task of its own that owns the
/// sink and the batch, and gives both back with the result. (Polled from the routing loop
/// instead, each of its round trips would wait until that loop yields, which it does not while
/// messages keep coming.)
type InFlight<S> = tokio::task::JoinHandle<Finished<S>>;

struct Finished<S> {
    sink: S,
    pending: Pending,
    result: Result<ApplyOutcome, SinkError>,
}

/// What applying a batch once came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Committed, possibly in pieces.
    Done(ApplyOutcome),
    /// One table's own problem (its DDL failed, it is missing): nothing was applied.
    Blocked { table: TableId, reason: String },
    /// The change at `index` is refused on its own (its data): nothing was applied; without it
    /// the rest may be. `missing_row`: for a row it refers to (a foreign key), which may come.
    Rejected {
        index: usize,
        reason: String,
        missing_row: bool,
    },
    /// Anything else: transient (an outage) or not.
    Failed(SinkError),
}

/// The sink and the apply in flight.
pub(crate) struct Applier<S> {
    /// `None` while a batch is being applied: the apply in flight owns it.
    sink: Option<S>,
    inflight: Option<InFlight<S>>,
}

impl<S: Sink + 'static> Applier<S> {
    pub fn new(sink: S) -> Applier<S> {
        Applier {
            sink: Some(sink),
            inflight: None,
        }
    }

    /// Whether a batch is being applied.
    pub fn is_busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// The sink, which is here whenever no apply is in flight: every use of it settles the
    /// apply in flight first.
    pub fn sink(&mut self) -> &mut S {
        self.sink
            .as_mut()
            .expect("the sink is used only once the apply in flight is settled")
    }

    /// Sends a batch to the sink and returns at once; the apply goes on while the next batch
    /// is collected, and [`Applier::finished`] gives its outcome.
    pub fn start(&mut self, mut pending: Pending) {
        pending.batch.consumed = consumed_list(&pending.consumed);
        let mut sink = self.sink.take().expect("one apply in flight at a time");
        let span = tracing::Span::current();
        self.inflight = Some(tokio::spawn(
            async move {
                let result = sink.apply(&pending.batch).await;
                Finished {
                    sink,
                    pending,
                    result,
                }
            }
            .instrument(span),
        ));
    }

    /// Waits for the apply in flight (forever when there is none, for `select!`); the sink is
    /// back afterwards. Returns the batch and what its apply came to.
    pub async fn finished(
        &mut self,
    ) -> Result<(Pending, Result<ApplyOutcome, SinkError>), RouterError> {
        let Some(apply) = self.inflight.as_mut() else {
            return std::future::pending().await;
        };
        let done = apply.await;
        self.inflight = None;
        let done =
            done.map_err(|e| RouterError::Definite(format!("the sink's apply task failed: {e}")))?;
        self.sink = Some(done.sink);
        Ok((done.pending, done.result))
    }

    /// Applies `batch` once (or takes `first`, the outcome of an apply of it that already
    /// ran); when the sink refuses its data, applies it again in pieces to tell a batch that
    /// fails only as a whole from a change refused on its own.
    pub async fn attempt(
        &mut self,
        batch: &Batch,
        first: Option<Result<ApplyOutcome, SinkError>>,
    ) -> Attempt {
        let result = match first {
            Some(result) => result,
            None => self.sink().apply(batch).await,
        };
        match result {
            Ok(outcome) => Attempt::Done(outcome),
            Err(SinkError::Table { table, message }) => Attempt::Blocked {
                table,
                reason: message,
            },
            Err(e) if e.rejects_a_row() => match self.sink().apply_in_pieces(batch).await {
                Ok(Pieces::Applied(outcome)) => {
                    warn!(error = %e.detail(), changes = batch.changes.len(), "the sink refused the batch as a whole but no change on its own; it was applied in pieces, in order");
                    Attempt::Done(outcome)
                }
                Ok(Pieces::Rejected {
                    index,
                    reason,
                    missing_row,
                }) => Attempt::Rejected {
                    index,
                    reason,
                    missing_row,
                },
                Err(SinkError::Table { table, message }) => Attempt::Blocked {
                    table,
                    reason: message,
                },
                Err(e) => Attempt::Failed(e),
            },
            Err(e) => Attempt::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory::MemorySink;
    use crate::testing::{insert, orders, pending};

    fn applier(sink: MemorySink) -> Applier<MemorySink> {
        Applier::new(sink)
    }

    #[tokio::test]
    async fn a_pipelined_apply_gives_the_sink_back_with_its_outcome() {
        let mut a = applier(MemorySink::default());
        a.start(pending(vec![insert(0, 1, 1), insert(0, 2, 2)]));
        assert!(a.is_busy());
        let (batch, result) = a.finished().await.unwrap();
        assert_eq!(result.unwrap().applied, 2);
        assert_eq!(batch.batch.changes.len(), 2);
        assert!(!a.is_busy());
        // The sink is back, with the offsets recorded beside the rows.
        assert_eq!(a.sink().offsets[&("t".to_string(), 0)], 2);
        // Applied again (a replay), nothing is written twice.
        let again = pending(vec![insert(0, 1, 1), insert(0, 2, 2)]);
        match a.attempt(&again.batch, None).await {
            Attempt::Done(o) => assert_eq!((o.applied, o.skipped), (0, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.sink().writes.len(), 2);
    }

    #[tokio::test]
    async fn a_change_refused_on_its_own_is_named_and_the_rest_applies_without_it() {
        let mut a = applier(MemorySink {
            refused: Some(7),
            ..MemorySink::default()
        });
        let mut p = pending(vec![insert(0, 1, 1), insert(0, 2, 7), insert(0, 3, 3)]);
        let index = match a.attempt(&p.batch, None).await {
            Attempt::Rejected { index, .. } => index,
            other => panic!("{other:?}"),
        };
        assert_eq!(index, 1);
        assert!(
            a.sink().writes.is_empty(),
            "nothing applied with the refused change"
        );
        p.batch.changes.remove(index);
        assert!(matches!(a.attempt(&p.batch, None).await, Attempt::Done(_)));
        let ids: Vec<i64> = a.sink().writes.iter().map(|(_, k)| *k).collect();
        assert_eq!(ids, [1, 3]);
    }

    #[tokio::test]
    async fn a_batch_refused_only_as_a_whole_is_applied_in_pieces() {
        let mut a = applier(MemorySink {
            whole_batches_fail: true,
            ..MemorySink::default()
        });
        let p = pending(vec![insert(0, 1, 1), insert(0, 2, 2)]);
        match a.attempt(&p.batch, None).await {
            Attempt::Done(o) => assert_eq!(o.applied, 2),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_table_blocks_it_and_an_outage_is_transient() {
        let mut a = applier(MemorySink {
            missing: [orders()].into(),
            ..MemorySink::default()
        });
        let p = pending(vec![insert(0, 1, 1)]);
        match a.attempt(&p.batch, None).await {
            Attempt::Blocked { table, .. } => assert_eq!(table, orders()),
            other => panic!("{other:?}"),
        }
        a.sink().missing.clear();
        a.sink().down = true;
        match a.attempt(&p.batch, None).await {
            Attempt::Failed(e) => assert!(e.is_transient(), "{e}"),
            other => panic!("{other:?}"),
        }
        // The outcome of a pipelined apply is taken as it was, not applied again.
        let first = Err(SinkError::Definite("disk full".into()));
        match a.attempt(&p.batch, Some(first)).await {
            Attempt::Failed(e) => assert!(!e.is_transient()),
            other => panic!("{other:?}"),
        }
    }
}
