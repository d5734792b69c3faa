//! `sluice-sinks` writes row changes into sink databases, exactly once in effect.
//!
//! It owns the [`Sink`] trait and its implementations ([`postgres::PostgresSink`],
//! [`mysql::MysqlSink`]), and what both do with a batch before writing it (`plan`). A sink
//! receives batches from the router, applies them in one transaction together with the
//! consumed Kafka offsets and the highest applied source position per topic-partition (table
//! `sluice_offsets`), and skips changes it has already applied. It does not consume Kafka or
//! decode Avro (that is `sluice-router`).

use std::future::Future;
use std::sync::Arc;

use serde::Deserialize;
use sluice_schemas::{Position, RowChange, TableSchema};

/// One reason a sink table cannot take a mapping scheme's rows, with the fix
/// (`sluice schemes check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetProblem {
    /// `table` or the column's name.
    pub at: String,
    pub message: String,
    pub fix: String,
}

pub mod error;
pub mod metrics;
pub mod mysql;
mod plan;
pub mod postgres;
pub mod provisional;
mod skeleton;

pub use error::SinkError;

/// `sinks.<name>.column_types`; how a sink follows a source column whose type changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnTypes {
    #[default]
    Widen,
    Alter,
    Keep,
}

/// `sinks.<name>.dropped_columns`; what a sink does with a column the source dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DroppedColumns {
    #[default]
    Keep,
    Drop,
}

/// A place in a topic: where a change was read from, the last offset a batch consumed from a
/// topic-partition (whether or not it produced a change: tombstones, dead-lettered messages),
/// or where a partition held at a barrier is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// One change to apply, decoded from a Kafka message.
#[derive(Debug, Clone)]
pub struct SinkChange {
    /// The change, of the source table's schema (the writer schema's columns);
    /// [`sluice_schemas::Datum::Unchanged`] columns must be left as they are.
    pub row: RowChange,
    pub position: Position,
    pub origin: Origin,
    /// For a table-wide change (a truncate) published to every partition of its topic: how
    /// many partitions there are. The sink applies it once each has reached it, and holds a
    /// partition that has until then (see [`ApplyOutcome::held`]).
    pub barrier: Option<i32>,
}

sluice_schemas::carries_row_change!(SinkChange);

/// A batch: changes in consumption order, and the consumed offsets to record with them.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub changes: Vec<SinkChange>,
    pub consumed: Vec<Origin>,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes written.
    pub applied: usize,
    /// Changes skipped because the sink had already applied them (replays).
    pub skipped: usize,
    /// Partitions waiting at a barrier (a truncate not every partition has reached): nothing
    /// of theirs after the barrier was applied or recorded. The router reads each again from
    /// `offset` a little later, until the barrier is complete.
    pub held: Vec<Origin>,
}

/// What came of applying a refused batch in pieces ([`Sink::apply_in_pieces`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pieces {
    /// Every piece applied, in order, and committed: the batch failed only as a whole (a
    /// unique-value swap collapsed into one statement, rows of tables bound by a foreign key
    /// written in the wrong order).
    Applied(ApplyOutcome),
    /// The change at `index` of `batch.changes` is refused on its own, after the changes
    /// before it: nothing was committed. `missing_row`: it refers to a row the sink lacks or
    /// deletes a row others refer to (a foreign key), which the changes of another table
    /// still on their way may bring or remove.
    Rejected {
        index: usize,
        reason: String,
        missing_row: bool,
    },
}

/// A table-wide change (a truncate at `position` on `topic`) that not every partition of the
/// topic has reached yet: `arrived` have, out of `partitions`. Kept in the sink's
/// `sluice_barriers` with the offsets, so routers sharing the partitions see it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub topic: Arc<str>,
    pub position: Position,
    pub partitions: i32,
    pub arrived: Vec<i32>,
}

/// What a sink has durably recorded for one topic-partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProgress {
    /// The last consumed offset; consumption resumes at `offset + 1`.
    pub offset: i64,
    /// The highest source position applied.
    pub position: Option<Position>,
}

/// A sink database.
///
/// Contract:
/// - `apply` is atomic: the batch's changes and its consumed offsets and positions are
///   committed in one transaction, or nothing is.
/// - Batches may be replayed (router crash after commit, capture replays after its own crash):
///   a change whose offset is at or below the stored offset of its topic-partition, or whose
///   source position is not above the highest position applied for it, is skipped. So a
///   change takes effect once. Changes of one message (a mapping scheme may route one source
///   change into several tables) share its offset and position and are all applied.
/// - Within a batch, changes take effect in order per key; the final state of each row is what
///   the last change says. Columns marked [`sluice_schemas::Datum::Unchanged`] keep their stored value.
/// - A change whose data the database refuses (a constraint, a value out of range) fails the
///   whole batch; [`Sink::apply_in_pieces`] then either applies it in pieces, in order (the
///   batch failed only as a whole), or names the change refused on its own, so the router can
///   dead-letter it and apply the rest.
pub trait Sink: Send {
    /// Applies a batch; see the trait's contract.
    fn apply(
        &mut self,
        batch: &Batch,
    ) -> impl Future<Output = Result<ApplyOutcome, SinkError>> + Send;

    /// After `apply` failed with an error that [`SinkError::rejects_a_row`]: applies the
    /// batch in one transaction as pieces, in order — halves, each under a savepoint, a refused
    /// piece split again — so a change refused on its own is isolated in O(log n) applies
    /// (then nothing is committed), and a batch that fails only as a whole is committed piece
    /// by piece, which for single changes is the source's own order.
    fn apply_in_pieces(
        &mut self,
        batch: &Batch,
    ) -> impl Future<Output = Result<Pieces, SinkError>> + Send;

    /// The progress stored for a topic-partition, to resume consumption from.
    fn progress(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<StoredProgress>, SinkError>> + Send;

    /// What opens transactions applied while still in progress at the source
    /// ([`provisional`]), for a sink that can hold one open beside its batches.
    fn opener(&self) -> Option<postgres::Opener> {
        None
    }
}

/// Any configured sink, for a router that does not know its kind at compile time.
pub enum AnySink {
    Postgres(postgres::PostgresSink),
    Mysql(mysql::MysqlSink),
}

impl AnySink {
    /// Raises a partition's applied position (see `PostgresSink::raise_position`).
    pub async fn raise_position(
        &mut self,
        topic: &str,
        partition: i32,
        position: &Position,
    ) -> Result<(), SinkError> {
        match self {
            AnySink::Postgres(s) => s.raise_position(topic, partition, position).await,
            AnySink::Mysql(s) => s.raise_position(topic, partition, position).await,
        }
    }

    /// What keeps the sink's table for a scheme's `target` from taking its rows.
    pub async fn check_target(
        &mut self,
        target: &TableSchema,
    ) -> Result<Vec<TargetProblem>, SinkError> {
        match self {
            AnySink::Postgres(s) => s.check_target(target).await,
            AnySink::Mysql(s) => s.check_target(target).await,
        }
    }
}

impl Sink for AnySink {
    async fn apply(&mut self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
        match self {
            AnySink::Postgres(s) => s.apply(batch).await,
            AnySink::Mysql(s) => s.apply(batch).await,
        }
    }

    async fn apply_in_pieces(&mut self, batch: &Batch) -> Result<Pieces, SinkError> {
        match self {
            AnySink::Postgres(s) => s.apply_in_pieces(batch).await,
            AnySink::Mysql(s) => s.apply_in_pieces(batch).await,
        }
    }

    async fn progress(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredProgress>, SinkError> {
        match self {
            AnySink::Postgres(s) => s.progress(topic, partition).await,
            AnySink::Mysql(s) => s.progress(topic, partition).await,
        }
    }

    /// PostgreSQL sinks hold provisional transactions; MySQL/MariaDB sinks take such a
    /// transaction after its commit.
    fn opener(&self) -> Option<postgres::Opener> {
        match self {
            AnySink::Postgres(s) => Some(s.opener()),
            AnySink::Mysql(_) => None,
        }
    }
}
