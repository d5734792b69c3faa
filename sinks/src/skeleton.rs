//! What every sink does with a batch, written once: in one transaction, claim and lock the
//! offsets rows of the batch's partitions (a topic's every row when a barrier is reached),
//! drop what is applied already and plan the rest ([`crate::plan`]), write it, record the new
//! offsets and positions, clear the barriers every partition has reached; and for a batch the
//! database refuses, the pieces it is applied in, each under a savepoint. A database brings its
//! SQL as a [`Dialect`]; DDL happens inside `write` (PostgreSQL) or before the transaction
//! (MySQL, where DDL commits implicitly).

use std::sync::Arc;
use std::time::Instant;

use sluice_schemas::Position;
use tracing::{debug, info};

use crate::metrics as m;
use crate::plan::{self, Applied, OlderKey, Plan};
use crate::{ApplyOutcome, Batch, SinkError, StoredProgress};

/// A partition's offsets row: the last offset consumed, the highest position applied, and the
/// barrier it waits at.
pub(crate) type OffsetsRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// What a savepoint statement does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Savepoint {
    Set,
    Release,
    RollBackTo,
}

impl Savepoint {
    pub fn sql(self) -> &'static str {
        match self {
            Savepoint::Set => "SAVEPOINT sluice_piece",
            Savepoint::Release => "RELEASE SAVEPOINT sluice_piece",
            Savepoint::RollBackTo => "ROLLBACK TO SAVEPOINT sluice_piece",
        }
    }
}

/// One database's statements for the skeleton, run in its transaction `Tx`.
pub(crate) trait Dialect<Tx: Send>: Send {
    /// The sink's name, for logs and metric labels.
    fn sink_name(&self) -> &str;

    /// Locks every partition's offsets row of `topic` in partition order; returns each one's
    /// partition and barrier.
    async fn lock_topic(
        &mut self,
        tx: &mut Tx,
        topic: &str,
    ) -> Result<Vec<(i32, Option<Vec<u8>>)>, SinkError>;

    /// Creates the partition's offsets row where it is missing, and locks it.
    async fn claim(
        &mut self,
        tx: &mut Tx,
        topic: &str,
        partition: i32,
    ) -> Result<OffsetsRow, SinkError>;

    /// Writes one table's planned changes; returns how many.
    async fn write(&mut self, tx: &mut Tx, plan: Plan<'_>) -> Result<usize, SinkError>;

    /// Whether the plan written last was of a table version older than one the sink
    /// followed, under another key (see [`OlderKey`]).
    fn older_key(&mut self) -> Option<OlderKey> {
        None
    }

    /// Records a partition's new offset and position, and the barrier it now waits at.
    async fn record(
        &mut self,
        tx: &mut Tx,
        topic: &str,
        partition: i32,
        progress: &StoredProgress,
        barrier: Option<&Position>,
    ) -> Result<(), SinkError>;

    /// Clears a barrier every partition of `topic` has reached.
    async fn clear_barrier(
        &mut self,
        tx: &mut Tx,
        topic: &str,
        barrier: &Position,
    ) -> Result<(), SinkError>;

    async fn savepoint(&mut self, tx: &mut Tx, what: Savepoint) -> Result<(), SinkError>;

    /// A transaction failed or a piece was rolled back: what was learnt in it (tables created
    /// or altered) is gone again.
    fn forget(&mut self) {}
}

/// Applies `batch` in `tx`: claims and locks the offsets rows, skips what is applied already,
/// writes the rest, and records offsets, positions and barriers. Does not commit.
pub(crate) async fn apply_in<Tx: Send, D: Dialect<Tx>>(
    d: &mut D,
    tx: &mut Tx,
    batch: &Batch,
) -> Result<(ApplyOutcome, Applied), SinkError> {
    let mut stored = std::collections::HashMap::new();
    let copies = plan::barriers_in(batch);
    let mut waiting = Vec::new();
    let mut locked_topic: Option<Arc<str>> = None;
    // A stable lock order avoids deadlocks between routers sharing a sink.
    for (topic, partition) in plan::partitions(batch) {
        if copies.iter().any(|(t, _, _)| *t == topic) && locked_topic.as_deref() != Some(&*topic) {
            // A barrier reached: every partition's row of the topic is locked (in partition
            // order, as everywhere), so routers sharing the topic count its arrivals one at a
            // time.
            for (p, barrier) in d.lock_topic(tx, &topic).await? {
                if let Some(b) = barrier {
                    waiting.push((topic.clone(), p, Position(b)));
                }
            }
            locked_topic = Some(topic.clone());
        }
        let (offset, position, barrier) = d.claim(tx, &topic, partition).await?;
        if let Some(b) = barrier {
            if locked_topic.as_deref() != Some(&*topic) {
                waiting.push((topic.clone(), partition, Position(b)));
            }
        }
        stored.insert(
            (topic, partition),
            StoredProgress {
                offset,
                position: position.map(Position),
            },
        );
    }
    let barriers = plan::stored_barriers(&copies, waiting);
    let sorted = plan::sort(batch, stored, barriers);
    let mut outcome = ApplyOutcome {
        applied: 0,
        skipped: sorted.skipped,
        held: sorted.held.clone(),
    };
    let mut counts = Applied::default();
    for step in sorted.steps {
        counts.add(&step);
        outcome.applied += d.write(tx, step).await?;
        counts.older_key(d.older_key());
    }
    for ((topic, partition), progress) in &sorted.progress {
        let barrier = plan::waits_at(&sorted.barriers, topic, *partition);
        d.record(tx, topic, *partition, progress, barrier).await?;
    }
    for (barrier, _) in sorted.barriers.iter().filter(|(_, complete)| *complete) {
        // Complete: every partition it held goes on.
        d.clear_barrier(tx, &barrier.topic, &barrier.position)
            .await?;
        info!(sink = %d.sink_name(), topic = %barrier.topic, partitions = barrier.partitions, "truncate applied: every partition reached it");
    }
    debug!(
        applied = outcome.applied,
        skipped = outcome.skipped,
        "batch applied"
    );
    Ok((outcome, counts))
}

/// Writes `batch`'s changes in `tx` without looking at or recording offsets: a transaction
/// applied while in progress at the source ([`crate::provisional`]), whose offsets and
/// position are recorded once, at its commit. Its changes' origins are numbered by the router
/// from 0 and their positions rise, so each is written, in order, per key.
pub(crate) async fn write_only<Tx: Send, D: Dialect<Tx>>(
    d: &mut D,
    tx: &mut Tx,
    batch: &Batch,
) -> Result<(usize, Applied), SinkError> {
    let stored = plan::partitions(batch)
        .into_iter()
        .map(|k| {
            (
                k,
                StoredProgress {
                    offset: -1,
                    position: None,
                },
            )
        })
        .collect();
    let sorted = plan::sort(batch, stored, Vec::new());
    let mut counts = Applied::default();
    let mut written = 0;
    for step in sorted.steps {
        counts.add(&step);
        written += d.write(tx, step).await?;
        counts.older_key(d.older_key());
    }
    Ok((written, counts))
}

/// What applying a refused batch in pieces came to, before commit.
pub(crate) enum InPieces {
    /// Every piece applied, in order: commit, then [`split_applied`].
    Applied {
        outcome: ApplyOutcome,
        counts: Applied,
        pieces: u64,
    },
    /// The change at `index` is refused on its own: roll back. (`missing_row` as in
    /// [`crate::Pieces::Rejected`].)
    Rejected {
        index: usize,
        reason: String,
        missing_row: bool,
    },
}

/// Applies `batch` in `tx` as pieces, in source order — halves, each under a savepoint, a
/// refused piece split again (see [`plan::Splitter`]) — until every piece is applied or a
/// change is refused on its own. Does not commit.
pub(crate) async fn in_pieces<Tx: Send, D: Dialect<Tx>>(
    d: &mut D,
    tx: &mut Tx,
    batch: &Batch,
) -> Result<InPieces, SinkError> {
    let mut total = ApplyOutcome::default();
    let mut counts = Applied::default();
    let mut splitter = plan::Splitter::new(batch);
    let mut pieces = 0u64;
    while let Some((lo, hi)) = splitter.next() {
        let piece = splitter.piece(batch, lo, hi);
        d.savepoint(tx, Savepoint::Set).await?;
        pieces += 1;
        match apply_in(d, tx, &piece).await {
            Ok((outcome, applied)) => {
                d.savepoint(tx, Savepoint::Release).await?;
                plan::Splitter::merge(&mut total, outcome);
                counts.merge(applied);
            }
            Err(e) if e.rejects_a_row() => {
                d.savepoint(tx, Savepoint::RollBackTo).await?;
                d.forget();
                if let Some(index) = splitter.refused(lo, hi) {
                    debug!(sink = %d.sink_name(), pieces, index, "found the change the sink refuses");
                    return Ok(InPieces::Rejected {
                        index,
                        reason: e.detail(),
                        missing_row: e.refers_to_a_missing_row(),
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
    // What was consumed past the last change (tombstones, dead letters).
    let tail = Batch {
        changes: Vec::new(),
        consumed: batch.consumed.clone(),
    };
    let (outcome, applied) = apply_in(d, tx, &tail).await?;
    plan::Splitter::merge(&mut total, outcome);
    counts.merge(applied);
    Ok(InPieces::Applied {
        outcome: total,
        counts,
        pieces,
    })
}

/// The metrics of a committed batch.
pub(crate) fn committed(
    sink: &str,
    started: Instant,
    batch: &Batch,
    outcome: &ApplyOutcome,
    counts: Applied,
) {
    counts.record(sink);
    metrics::histogram!(m::BATCH_DURATION_SECONDS, "sink" => sink.to_string())
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::BATCH_ROWS, "sink" => sink.to_string())
        .record(batch.changes.len() as f64);
    if outcome.skipped > 0 {
        metrics::counter!(m::EVENTS_SKIPPED_TOTAL, "sink" => sink.to_string())
            .increment(outcome.skipped as u64);
    }
}

/// The log line and metrics of a batch committed in pieces.
pub(crate) fn split_applied(
    sink: &str,
    started: Instant,
    batch: &Batch,
    outcome: &ApplyOutcome,
    counts: Applied,
    pieces: u64,
) {
    counts.record(sink);
    info!(
        sink,
        changes = batch.changes.len(),
        pieces,
        "a batch refused as a whole (no change refused on its own) was applied in pieces, in order"
    );
    metrics::counter!(m::BATCHES_SPLIT_TOTAL, "sink" => sink.to_string()).increment(1);
    metrics::histogram!(m::BATCH_DURATION_SECONDS, "sink" => sink.to_string())
        .record(started.elapsed().as_secs_f64());
    if outcome.skipped > 0 {
        metrics::counter!(m::EVENTS_SKIPPED_TOTAL, "sink" => sink.to_string())
            .increment(outcome.skipped as u64);
    }
}
