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
    /// Per partition, the fetch position and lag of the previous statistics report.
    last_fetch: Mutex<HashMap<(String, i32), (i64, i64)>>,
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
            last_fetch: Mutex::new(HashMap::new()),
            stalled: Mutex::new(Vec::new()),
        }
    }

    /// Partitions whose fetch position did not move between two statistics reports although
    /// messages wait after it: `(topic, partition, position, low watermark)`. Kafka never
    /// leaves a partition so; Tansu 0.6 does when a fetch starts inside a record batch (it
    /// answers with nothing, and the client asks again for the same offset).
    pub fn take_stalled(&self) -> Vec<(String, i32, i64, i64)> {
        std::mem::take(&mut *self.stalled.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
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
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in &statistics.topics {
            for p in topic.partitions.values().filter(|p| p.partition >= 0) {
                let key = (name.clone(), p.partition);
                let now = (p.next_offset, p.consumer_lag);
                // Nothing queued for the application either: the router is not just slow to
                // take what was fetched.
                if p.fetch_state == "active"
                    && p.next_offset >= 0
                    && p.consumer_lag > 0
                    && p.fetchq_cnt == 0
                {
                    if last.get(&key) == Some(&now) {
                        stalled.push((name.clone(), p.partition, p.next_offset, p.lo_offset));
                    }
                    last.insert(key, now);
                } else {
                    last.remove(&key);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                revoked.push((e.topic().to_string(), e.partition()));
            }
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked by a rebalance"
            );
        }
    }
}
