//! The consumer's context: consumer lag and broker reachability, read from librdkafka's
//! statistics (`statistics.interval.ms`), and the partitions rebalances take away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::ConsumerContext;
use rdkafka::{ClientContext, Statistics};
use sluice_schemas::liveness::Liveness;

use crate::metrics as m;

/// The consumer's context: turns each statistics report into the consumer-lag gauge and tells
/// the router's liveness whether any broker is up.
pub struct LagContext {
    /// Topics reported before, so a topic whose partitions were all revoked drops to 0 rather
    /// than keeping its last lag.
    seen: Mutex<HashMap<String, metrics::Gauge>>,
    liveness: Arc<Liveness>,
    /// Partitions revoked by rebalances since the router last looked.
    revoked: Mutex<Vec<(String, i32)>>,
    /// Per partition, the fetch position and lag of the previous statistics report; per
    /// broker, the Fetch requests sent so far.
    last_fetch: Mutex<FetchHistory>,
    /// Partitions whose fetching stopped with messages after it, at this offset, since the
    /// router last looked (see [`LagContext::take_stalled`]).
    stalled: Mutex<Vec<(String, i32, i64, i64)>>,
}

impl LagContext {
    pub fn new(liveness: Arc<Liveness>) -> LagContext {
        LagContext {
            seen: Mutex::new(HashMap::new()),
            liveness,
            revoked: Mutex::new(Vec::new()),
            last_fetch: Mutex::new(FetchHistory::default()),
            stalled: Mutex::new(Vec::new()),
        }
    }

    /// Partitions whose fetch position did not move between two statistics reports although
    /// messages wait after it, while their broker answered several fetches meanwhile:
    /// `(topic, partition, position, low watermark)`. Kafka never leaves a partition so;
    /// Tansu 0.6 does when a fetch starts inside a record batch (it answers at once with
    /// nothing, and the client asks again for the same offset). A fetch the broker is slow
    /// to answer is not a stall: the client sends no other fetch to it meanwhile.
    pub fn take_stalled(&self) -> Vec<(String, i32, i64, i64)> {
        std::mem::take(
            &mut *self
                .stalled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(
            &mut *self
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Messages behind the end of the log, summed over this consumer's partitions of one topic.
/// `None` when librdkafka does not know it yet for any partition (not assigned, or no fetch
/// or commit yet).
fn topic_lag(topic: &rdkafka::statistics::Topic) -> Option<i64> {
    let lags: Vec<i64> = topic
        .partitions
        .values()
        // Partition -1 is librdkafka's internal "unassigned" queue.
        .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
        .map(|p| p.consumer_lag)
        .collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let broker_up = statistics.brokers.values().any(|b| b.state == "UP");
        self.liveness.set_connected("broker", broker_up);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut reported = Vec::new();
        for (name, topic) in &statistics.topics {
            if let Some(lag) = topic_lag(topic) {
                let gauge = seen
                    .entry(name.clone())
                    .or_insert_with(|| metrics::gauge!(m::CONSUMER_LAG, "topic" => name.clone()));
                gauge.set(lag as f64);
                reported.push(name.as_str());
            }
        }
        for (name, gauge) in seen.iter() {
            if !reported.contains(&name.as_str()) {
                gauge.set(0.0);
            }
        }
        drop(seen);
        // Work waits for this router while an active (not paused) partition has messages
        // after what it consumed: /readyz then expects batches to keep committing.
        let backlog = statistics.topics.values().any(|t| {
            t.partitions
                .values()
                .any(|p| p.partition >= 0 && p.fetch_state == "active" && p.consumer_lag > 0)
        });
        self.liveness.set_backlog(backlog);
        let samples: Vec<FetchSample> = statistics
            .topics
            .iter()
            .flat_map(|(name, topic)| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0)
                    .map(move |p| FetchSample {
                        topic: name.clone(),
                        partition: p.partition,
                        active: p.fetch_state == "active",
                        position: p.next_offset,
                        lag: p.consumer_lag,
                        queued: p.fetchq_cnt,
                        leader: p.leader,
                        low: p.lo_offset,
                    })
            })
            .collect();
        let fetches: HashMap<i32, i64> = statistics
            .brokers
            .values()
            .map(|b| (b.nodeid, b.req.get("Fetch").copied().unwrap_or(0)))
            .collect();
        let found = self
            .last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stalled(&samples, &fetches);
        self.stalled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(found);
    }
}

/// Fetches the broker must have answered between two reports, with a partition's position
/// standing still, before that partition counts as stalled.
const EMPTY_FETCHES_FOR_A_STALL: i64 = 3;

/// One partition in one statistics report.
#[derive(Debug, Clone)]
struct FetchSample {
    topic: String,
    partition: i32,
    /// Being fetched (not paused, not stopped).
    active: bool,
    position: i64,
    lag: i64,
    /// Messages fetched and not yet taken by the router.
    queued: i64,
    leader: i32,
    low: i64,
}

/// What the previous statistics report said, to tell a stalled fetch from a slow one.
#[derive(Debug, Default)]
struct FetchHistory {
    /// Per partition: position and lag.
    partitions: HashMap<(String, i32), (i64, i64)>,
    /// Per broker: Fetch requests sent so far.
    fetches: HashMap<i32, i64>,
}

impl FetchHistory {
    /// The partitions stalled since the last report: an active fetch with messages after it,
    /// nothing queued for the router (it is not just slow to take them), the same position
    /// and lag as last time, and the partition's broker answered several fetches meanwhile
    /// (so the position stands still because the answers were empty, not because a fetch
    /// is taking long).
    fn stalled(
        &mut self,
        samples: &[FetchSample],
        fetches: &HashMap<i32, i64>,
    ) -> Vec<(String, i32, i64, i64)> {
        let mut out = Vec::new();
        for p in samples {
            let key = (p.topic.clone(), p.partition);
            let now = (p.position, p.lag);
            if !(p.active && p.position >= 0 && p.lag > 0 && p.queued == 0) {
                self.partitions.remove(&key);
                continue;
            }
            let answered = match (fetches.get(&p.leader), self.fetches.get(&p.leader)) {
                (Some(now), Some(before)) => now - before,
                _ => 0,
            };
            if self.partitions.get(&key) == Some(&now) && answered >= EMPTY_FETCHES_FOR_A_STALL {
                out.push((p.topic.clone(), p.partition, p.position, p.low));
            }
            self.partitions.insert(key, now);
        }
        self.fetches.clone_from(fetches);
        out
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in tpl.elements() {
                revoked.push((e.topic().to_string(), e.partition()));
            }
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked by a rebalance"
            );
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(tpl) = rebalance {
            if tpl.count() > 0 {
                let list: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(
                    partitions = tpl.count(),
                    assigned = %list.join(","),
                    "partitions assigned by a rebalance"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(position: i64) -> FetchSample {
        FetchSample {
            topic: "t".into(),
            partition: 0,
            active: true,
            position,
            lag: 10,
            queued: 0,
            leader: 1,
            low: 0,
        }
    }

    #[test]
    fn a_fetch_answered_empty_again_and_again_is_a_stall() {
        let mut history = FetchHistory::default();
        let at = |n| HashMap::from([(1, n)]);
        assert!(history.stalled(&[sample(5)], &at(100)).is_empty());
        // Same position, 40 fetches answered since: the broker answers with nothing.
        assert_eq!(
            history.stalled(&[sample(5)], &at(140)),
            [("t".to_string(), 0, 5, 0)]
        );
    }

    #[test]
    fn a_slow_fetch_is_not_a_stall() {
        let mut history = FetchHistory::default();
        let at = |n| HashMap::from([(1, n)]);
        assert!(history.stalled(&[sample(5)], &at(100)).is_empty());
        // One fetch outstanding for the whole interval (a busy broker): no new request.
        assert!(history.stalled(&[sample(5)], &at(101)).is_empty());
        assert!(history.stalled(&[sample(5)], &at(101)).is_empty());
    }

    #[test]
    fn a_moving_paused_or_caught_up_partition_is_not_a_stall() {
        let mut history = FetchHistory::default();
        let at = |n| HashMap::from([(1, n)]);
        history.stalled(&[sample(5)], &at(0));
        assert!(history.stalled(&[sample(6)], &at(50)).is_empty());
        let paused = FetchSample {
            active: false,
            ..sample(6)
        };
        assert!(history.stalled(&[paused], &at(100)).is_empty());
        let caught_up = FetchSample {
            lag: 0,
            ..sample(6)
        };
        assert!(history
            .stalled(std::slice::from_ref(&caught_up), &at(150))
            .is_empty());
        assert!(history.stalled(&[caught_up], &at(200)).is_empty());
    }
}
