//! Reading partitions on without gaps, and recovering fetches that stall inside a record
//! batch (both for brokers such as Tansu 0.6; Apache Kafka never needs them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};

use crate::metrics as m;

/// Reading a partition on without a gap. After the last message taken (or, on assignment,
/// after the offset the sink stored) the next must be the one after it. A message past that
/// means the broker skipped messages — Tansu 0.6's memory storage answers a fetch that starts
/// inside a record batch with the batches after it, and librdkafka fetches from such an offset
/// after every pause, seek and assignment — or that the offsets do not exist. Nothing past the
/// gap is taken: the partition is read again from 1 message before it, then 8, 64… A broker
/// that answers from a batch boundary delivers a message before the gap; if the gap is still
/// there after that (or after reading from offset 0), the offsets do not exist, and that is
/// logged as an error and counted before the router goes on.
#[derive(Debug, Default)]
pub(crate) struct Gaps {
    probes: HashMap<(Arc<str>, i32), GapProbe>,
}

#[derive(Debug)]
struct GapProbe {
    /// The offset the partition must go on from.
    expect: i64,
    /// How far before `expect` the last read-again started.
    step: i64,
    from: i64,
    /// A message before `expect` arrived since that read-again began.
    through: bool,
}

impl Gaps {
    /// A message at or below the last one taken arrived.
    pub fn before(&mut self, key: &(Arc<str>, i32)) {
        if let Some(probe) = self.probes.get_mut(key) {
            probe.through = true;
        }
    }

    /// A partition this router no longer owns.
    pub fn forget(&mut self, key: &(Arc<str>, i32)) {
        self.probes.remove(key);
    }

    /// The message the partition had to go on from was taken.
    pub fn taken(&mut self, key: &(Arc<str>, i32)) {
        if !self.probes.is_empty() {
            self.probes.remove(key);
        }
    }

    /// A message at `offset` arrived where `expect` had to: `None` to take it (the offsets
    /// between do not exist), or the offset to read the partition again from.
    pub fn past(&mut self, key: &(Arc<str>, i32), expect: i64, offset: i64) -> Option<i64> {
        let (topic, partition) = (&key.0, key.1);
        let probe = self.probes.entry(key.clone()).or_insert(GapProbe {
            expect,
            step: 0,
            from: expect,
            through: false,
        });
        if probe.expect != expect {
            *probe = GapProbe {
                expect,
                step: 0,
                from: expect,
                through: false,
            };
        }
        if probe.through || (probe.step > 0 && probe.from == 0) {
            error!(%topic, partition, from = expect, to = offset - 1, "offsets missing on the broker: deleted by retention before this router read them, compacted away, or transaction markers; whatever they held is not applied");
            metrics::counter!(m::OFFSET_GAPS_TOTAL, "topic" => topic.to_string(), "kind" => "absent")
                .increment(1);
            self.probes.remove(key);
            return None;
        }
        probe.step = if probe.step == 0 {
            1
        } else {
            probe.step.saturating_mul(8)
        };
        probe.from = (expect - probe.step).max(0);
        probe.through = false;
        warn!(%topic, partition, expected = expect, arrived = offset, from = probe.from, "the broker skipped messages (a fetch that starts inside a record batch, as Tansu 0.6's memory storage answers it); reading the partition again from earlier");
        metrics::counter!(m::OFFSET_GAPS_TOTAL, "topic" => topic.to_string(), "kind" => "read_again")
            .increment(1);
        Some(probe.from)
    }
}

/// How far back each stall recovery of a partition reads: 1 message, then 8, 64… while
/// stalls of that partition recur within [`StallSteps::RECUR`] of each other (each seek moves
/// the position, so the stall offset itself cannot tell a recurrence), and 1 again once the
/// partition went that long without one.
#[derive(Debug, Default)]
pub(crate) struct StallSteps {
    last: HashMap<(String, i32), (std::time::Instant, i64)>,
}

impl StallSteps {
    const RECUR: Duration = Duration::from_secs(60);

    pub fn next(&mut self, key: (String, i32), now: std::time::Instant) -> i64 {
        let step = match self.last.get(&key) {
            Some((at, step)) if now.duration_since(*at) < Self::RECUR => step.saturating_mul(8),
            _ => 1,
        };
        self.last.insert(key, (now, step));
        step
    }
}

#[cfg(test)]
mod tests {
    use super::{Gaps, StallSteps};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_gap_is_read_again_from_further_back_until_a_message_before_it_arrives() {
        let key: (Arc<str>, i32) = (Arc::from("t"), 0);
        let mut gaps = Gaps::default();
        // Offset 100 was due, 120 came (a broker that skipped the rest of a record batch):
        // read again from 1, then 8, then 64 messages before it.
        assert_eq!(gaps.past(&key, 100, 120), Some(99));
        assert_eq!(gaps.past(&key, 100, 120), Some(92));
        assert_eq!(gaps.past(&key, 100, 120), Some(36));
        // From 36 the broker answered from a batch boundary: a message before 100 arrived, so
        // a jump past 100 now is offsets that do not exist, taken.
        gaps.before(&key);
        assert_eq!(gaps.past(&key, 100, 120), None);
        // A gap somewhere else starts over, and offset 0 is as far back as it goes: a jump
        // after reading from there is taken too.
        assert_eq!(gaps.past(&key, 5, 9), Some(4));
        assert_eq!(gaps.past(&key, 5, 9), Some(0));
        assert_eq!(gaps.past(&key, 5, 9), None);
        // The due message arriving ends a probe.
        assert_eq!(gaps.past(&key, 50, 60), Some(49));
        gaps.taken(&key);
        assert!(gaps.probes.is_empty());
    }

    #[test]
    fn stall_steps_grow_while_stalls_recur_wherever_the_seek_left_the_position() {
        let mut steps = StallSteps::default();
        let key = || ("t".to_string(), 0);
        let t0 = Instant::now();
        let taken: Vec<i64> = (0..4)
            .map(|i| steps.next(key(), t0 + Duration::from_secs(10 * i)))
            .collect();
        assert_eq!(taken, [1, 8, 64, 512]);
        // A minute without a stall: back to one message.
        assert_eq!(steps.next(key(), t0 + Duration::from_secs(200)), 1);
        // Partitions count apart.
        assert_eq!(steps.next(("t".to_string(), 1), t0), 1);
    }
}
