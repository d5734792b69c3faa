//! Consumer lag and broker reachability, read from librdkafka's statistics
//! (`statistics.interval.ms`).

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
}

impl LagContext {
    pub fn new(liveness: Arc<Liveness>) -> LagContext {
        LagContext {
            seen: Mutex::new(HashMap::new()),
            liveness,
        }
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
    }
}

impl ConsumerContext for LagContext {}
