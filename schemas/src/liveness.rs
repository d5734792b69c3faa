//! What each component tells the process's `/readyz`: whether it is connected to what it
//! reads and writes, and whether work it holds is moving.
//!
//! A component is *stalled* when it has had work pending (events awaiting Kafka's
//! acknowledgement, a batch not yet committed to the sink) for longer than the stall timeout
//! without finishing any of it. An idle component is never stalled: with nothing to do there is
//! no progress to expect.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shared between a component (which reports) and the HTTP endpoint (which reads).
#[derive(Debug)]
pub struct Liveness {
    name: String,
    /// What the component depends on (`source`, `broker`, `sink`) and whether it is reached.
    connected: Mutex<Vec<(&'static str, bool)>>,
    pending: AtomicBool,
    /// Work waits upstream (see [`Liveness::set_backlog`]).
    backlog: AtomicBool,
    /// Unix milliseconds of the last finished work, or of the moment work became pending.
    last_progress_ms: AtomicI64,
}

/// Why a component is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Not connected to these.
    Disconnected(Vec<&'static str>),
    Stalled {
        for_ms: i64,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Liveness {
    /// A component that depends on `needs` and has reached none of them yet.
    pub fn new(name: impl Into<String>, needs: &[&'static str]) -> Liveness {
        Liveness {
            name: name.into(),
            connected: Mutex::new(needs.iter().map(|n| (*n, false)).collect()),
            pending: AtomicBool::new(false),
            backlog: AtomicBool::new(false),
            last_progress_ms: AtomicI64::new(now_ms()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `what` (one of the needs given to [`Liveness::new`]) is reached.
    pub fn set_connected(&self, what: &'static str, connected: bool) {
        let mut all = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match all.iter_mut().find(|(n, _)| *n == what) {
            Some(entry) => entry.1 = connected,
            None => all.push((what, connected)),
        }
    }

    /// Work is (or is no longer) waiting. Becoming pending starts the stall clock.
    pub fn set_pending(&self, pending: bool) {
        if pending && !self.pending.swap(true, Ordering::Relaxed) {
            self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
        } else if !pending {
            self.pending.store(false, Ordering::Relaxed);
        }
    }

    /// Work waits upstream of the component (a consumer's lag), reported by whoever reads
    /// it: while there is a backlog, progress is expected as for pending work. (A second
    /// flag, so the component's own [`Liveness::set_pending`] and the backlog's reader each
    /// own one.)
    pub fn set_backlog(&self, backlog: bool) {
        if backlog
            && !self.backlog.swap(true, Ordering::Relaxed)
            && !self.pending.load(Ordering::Relaxed)
        {
            self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
        } else if !backlog {
            self.backlog.store(false, Ordering::Relaxed);
        }
    }

    /// Some pending work finished.
    pub fn progressed(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `Ok` when connected and not stalled for longer than `stall_after`.
    pub fn check(&self, stall_after: Duration) -> Result<(), NotReady> {
        let missing: Vec<&'static str> = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, up)| !up)
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(NotReady::Disconnected(missing));
        }
        if self.pending.load(Ordering::Relaxed) || self.backlog.load(Ordering::Relaxed) {
            let idle = now_ms() - self.last_progress_ms.load(Ordering::Relaxed);
            if idle > stall_after.as_millis() as i64 {
                return Err(NotReady::Stalled { for_ms: idle });
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Disconnected(to) => write!(f, "not connected to {}", to.join(", ")),
            NotReady::Stalled { for_ms } => {
                write!(f, "work pending without progress for {} s", for_ms / 1000)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_ready_pending_without_progress_is_stalled() {
        let l = Liveness::new("capture x", &["source", "broker"]);
        assert_eq!(
            l.check(Duration::ZERO),
            Err(NotReady::Disconnected(vec!["source", "broker"]))
        );
        l.set_connected("source", true);
        assert_eq!(
            l.check(Duration::ZERO).unwrap_err().to_string(),
            "not connected to broker"
        );
        l.set_connected("broker", true);
        assert_eq!(l.check(Duration::ZERO), Ok(()));
        // Pending since long ago: stalled once past the timeout, not before.
        l.set_pending(true);
        l.last_progress_ms
            .store(now_ms() - 5_000, Ordering::Relaxed);
        assert!(matches!(
            l.check(Duration::from_secs(1)),
            Err(NotReady::Stalled { for_ms }) if for_ms >= 5_000
        ));
        assert_eq!(l.check(Duration::from_secs(60)), Ok(()));
        l.progressed();
        assert_eq!(l.check(Duration::from_secs(1)), Ok(()));
        // Becoming pending again after idling restarts the clock rather than inheriting the
        // idle time.
        l.set_pending(false);
        l.last_progress_ms
            .store(now_ms() - 5_000, Ordering::Relaxed);
        l.set_pending(true);
        assert_eq!(l.check(Duration::from_secs(1)), Ok(()));
        l.set_connected("source", false);
        assert_eq!(
            l.check(Duration::from_secs(60)),
            Err(NotReady::Disconnected(vec!["source"]))
        );
    }

    #[test]
    fn a_backlog_without_progress_is_stalled_while_nothing_is_pending() {
        let l = Liveness::new("router", &["sink"]);
        l.set_connected("sink", true);
        l.set_backlog(true);
        assert_eq!(l.check(Duration::from_secs(1)), Ok(()));
        l.last_progress_ms
            .store(now_ms() - 5_000, Ordering::Relaxed);
        assert!(matches!(
            l.check(Duration::from_secs(1)),
            Err(NotReady::Stalled { .. })
        ));
        // Caught up: ready again.
        l.set_backlog(false);
        assert_eq!(l.check(Duration::from_secs(1)), Ok(()));
    }
}

/// How long a component waits before retrying what failed transiently (a reconnect, topic
/// creation, a sink write): 500 ms, doubling up to 30 s, and back to 500 ms after a
/// [`Backoff::reset`] (the retried thing worked for a while).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    /// A backoff whose first wait is `first` (still doubling up to 30 s).
    pub fn starting_at(first: Duration) -> Backoff {
        Backoff { next: first }
    }

    /// The wait before this retry; the next one waits twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }

    /// After success: the next failure is retried soon again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn doubles_to_thirty_seconds_and_starts_over_after_a_reset() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }
}
