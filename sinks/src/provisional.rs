//! A source transaction applied while it is still in progress (local mode, PostgreSQL
//! capture streaming a large transaction): its changes are written into a sink transaction of
//! its own, on a connection of its own, as they arrive, and that transaction commits — with
//! the offsets and the transaction's commit position — only once the source transaction
//! committed and everything before it reached the sink. So the sink holds a large transaction
//! moments after its commit instead of applying all of it then.
//!
//! Nothing of it is visible at the sink before the commit (it is an open transaction), and an
//! abort at the source rolls it back; a subtransaction rolled back at the source is rolled
//! back to its savepoint. Whatever goes wrong — a change the sink refuses, a session left
//! waiting for this transaction's row locks, a lost connection — only *fails* it: it is rolled
//! back and the router says so to capture, which then publishes the transaction as it always
//! did, after its commit. See ARCHITECTURE.md, "Transactions applied while in progress".

use std::sync::{Arc, Mutex};

use sluice_schemas::Position;
use tokio::sync::{mpsc, oneshot};

use crate::{Origin, SinkChange};

/// What the router asks of an open provisional transaction, in order.
#[derive(Debug)]
pub enum Step {
    /// Write these changes (all of one subtransaction) into the open transaction.
    Apply(Vec<SinkChange>),
    /// A subtransaction's first change comes next: a savepoint to roll it back to.
    Savepoint(u32),
    /// The subtransaction was rolled back at the source: so is everything written since its
    /// savepoint (its changes and those of the subtransactions inside it).
    RollBackTo(u32),
    /// The source transaction committed at `position` and everything before it is in the
    /// sink: record each `ends` (a topic's commit marker and its offset) and commit — unless
    /// the sink has applied `position` already (capture read the transaction again after a
    /// restart), then roll back.
    Commit {
        ends: Vec<Origin>,
        position: Position,
        reply: oneshot::Sender<Result<Ended, String>>,
    },
}

/// How a provisional transaction that reached its commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Committed with `rows` changes.
    Committed { rows: usize },
    /// The sink had it already: rolled back.
    Replay,
}

/// An open provisional transaction: its worker task owns a sink connection of its own.
pub struct Provisional {
    steps: mpsc::Sender<Step>,
    failed: Arc<Mutex<Option<String>>>,
}

impl Provisional {
    /// `steps` feed the worker that holds the transaction; it writes into `failed` why it
    /// gave the transaction up.
    pub fn new(steps: mpsc::Sender<Step>, failed: Arc<Mutex<Option<String>>>) -> Provisional {
        Provisional { steps, failed }
    }

    /// Why the transaction was given up (rolled back), if it was.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Hands the worker its next step (waiting while it is two steps behind); `false` once the
    /// worker has stopped.
    pub async fn send(&self, step: Step) -> bool {
        self.steps.send(step).await.is_ok()
    }
}

/// Marks a provisional transaction given up, keeping the first reason.
pub(crate) fn give_up(failed: &Mutex<Option<String>>, reason: String) {
    let mut f = failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if f.is_none() {
        tracing::info!(reason = %reason, "a transaction applied while in progress is rolled back; it is applied after its commit instead");
        *f = Some(reason);
    }
}

/// After the transaction was given up: the worker answers a commit with why, and drops the
/// rest, until the router lets it go.
pub(crate) async fn refuse_the_rest(
    steps: &mut mpsc::Receiver<Step>,
    failed: &Mutex<Option<String>>,
) {
    while let Some(step) = steps.recv().await {
        if let Step::Commit { reply, .. } = step {
            let why = failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            let _ = reply.send(Err(why));
        }
    }
}
