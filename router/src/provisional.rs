//! The router's side of transactions applied while still in progress at the source (local
//! mode; see `sluice_sinks::provisional`): per source transaction, the open sink transaction
//! its changes go into, the changes collected for it, and its commit markers as they arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use sluice_sinks::postgres::Opener;
use sluice_sinks::provisional::Provisional;
use sluice_sinks::{Origin, SinkChange};

/// A source transaction's identity: the source and its xid.
pub(crate) type TxKey = (String, u32);

/// One source transaction held open at the sink.
pub(crate) struct Open {
    /// `None` once given up (`failed` says why) or before it could be opened.
    pub handle: Option<Provisional>,
    pub failed: Option<String>,
    /// Changes collected and not yet sent, all of `pending_subxid`.
    pub pending: Vec<SinkChange>,
    pub pending_subxid: u32,
    /// Subtransactions with a savepoint.
    pub savepoints: HashSet<u32>,
    /// Subtransactions rolled back (each is told once).
    pub aborted: HashSet<u32>,
    /// The next change's origin offset (its own numbering: these changes take no offsets).
    pub next_offset: i64,
    /// Topics it changed.
    pub topics: HashSet<Arc<str>>,
    /// Its commit markers received so far.
    pub markers: Vec<Origin>,
    pub since: Instant,
}

impl Open {
    pub fn new(xid: u32, handle: Result<Provisional, String>) -> Open {
        let (handle, failed) = match handle {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(e)),
        };
        Open {
            handle,
            failed,
            pending: Vec::new(),
            pending_subxid: xid,
            savepoints: HashSet::new(),
            aborted: HashSet::new(),
            next_offset: 0,
            topics: HashSet::new(),
            markers: Vec::new(),
            since: Instant::now(),
        }
    }

    /// Why it cannot commit, if it cannot: given up here, or by its worker.
    pub fn failure(&mut self) -> Option<String> {
        if self.failed.is_none() {
            if let Some(why) = self.handle.as_ref().and_then(Provisional::failed) {
                self.fail(why);
            }
        }
        self.failed.clone()
    }

    /// Gives it up: the worker's transaction is rolled back (its handle dropped) and nothing
    /// more is collected.
    pub fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        self.handle = None;
        self.pending = Vec::new();
    }
}

/// Every transaction this router holds open, and what opens more.
pub(crate) struct InProgress {
    pub opener: Opener,
    pub open: HashMap<TxKey, Open>,
    /// Per source, the capture session whose transactions are open: a capture that restarted
    /// streams them again from their start, so the older session's are let go.
    pub sessions: HashMap<String, u64>,
}

impl InProgress {
    pub fn new(opener: Opener) -> InProgress {
        InProgress {
            opener,
            open: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// Notes the session a message of `source` came from; transactions of an earlier session
    /// of it are let go (rolled back). Returns how many.
    pub fn session(&mut self, source: &str, session: u64) -> usize {
        // (Every change of a transaction says its session: no allocation for the same one.)
        if self.sessions.get(source) == Some(&session) {
            return 0;
        }
        match self.sessions.insert(source.to_string(), session) {
            Some(before) if before != session => {
                let stale: Vec<TxKey> = self
                    .open
                    .keys()
                    .filter(|(s, _)| s == source)
                    .cloned()
                    .collect();
                for k in &stale {
                    self.open.remove(k);
                }
                stale.len()
            }
            _ => 0,
        }
    }
}
