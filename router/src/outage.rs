//! Waiting out an outage of the sink or the schema registry without losing the group.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::liveness::Backoff;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::feed::Feed;
use crate::metrics as m;
use crate::router::RouterSettings;
use crate::RouterError;

/// Retrying through an outage of the sink or the schema registry: consumption is paused from
/// the first failure (memory stays at what the router holds) while the consumer goes on being
/// polled, which keeps the group membership, rebalances and statistics (the consumer-lag
/// gauge) going. A shutdown ends the wait ([`RouterError::Interrupted`]).
pub(crate) struct Outage {
    /// What is out, as `/readyz` names it: `sink` or `registry`.
    what: &'static str,
    backoff: Backoff,
    pub paused: bool,
}

impl Outage {
    pub fn of(what: &'static str) -> Outage {
        Outage {
            what,
            backoff: Backoff::starting_at(Duration::from_millis(200)),
            paused: false,
        }
    }

    /// After a transient error: reports it, pauses, and waits out the backoff (or until
    /// shutdown, which interrupts).
    pub async fn wait(
        &mut self,
        settings: &RouterSettings,
        consumer: &impl Feed,
        error: &(dyn std::fmt::Display + Sync),
        doing: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), RouterError> {
        if shutdown.is_cancelled() {
            return Err(RouterError::Interrupted(self.what));
        }
        settings.liveness.set_connected(self.what, false);
        metrics::counter!(m::ERRORS_TOTAL, "sink" => settings.sink_name.clone(), "kind" => "transient")
            .increment(1);
        let wait = self.backoff.next_wait();
        warn!(%error, retry_in = ?wait, "{} unavailable while {doing}; retrying", self.what);
        if !self.paused {
            consumer.pause(&consumer.assignment()?)?;
            self.paused = true;
        }
        tokio::select! {
            polled = poll_paused(consumer, wait) => polled,
            _ = shutdown.cancelled() => Err(RouterError::Interrupted(self.what)),
        }
    }

    /// The sink answered: resumes consumption if it was paused (but not of the partitions
    /// of blocked tables).
    pub fn over(
        &self,
        settings: &RouterSettings,
        consumer: &impl Feed,
        paused_on_purpose: &HashSet<(Arc<str>, i32)>,
    ) -> Result<(), RouterError> {
        if self.paused {
            let mut tpl = TopicPartitionList::new();
            for e in consumer.assignment()?.elements() {
                if !paused_on_purpose.contains(&(Arc::from(e.topic()), e.partition())) {
                    tpl.add_partition(e.topic(), e.partition());
                }
            }
            consumer.resume(&tpl)?;
            info!("the {} answers again; consumption resumed", self.what);
            settings.liveness.set_connected(self.what, true);
        } else if self.what == "sink" {
            settings.liveness.set_connected("sink", true);
        }
        Ok(())
    }
}

/// Polls a paused consumer for `how_long`, serving its events. Paused partitions deliver
/// nothing; a partition assigned meanwhile is not paused, so a message from it is rewound
/// (sought back to) and its partition paused too: it is read again after the resume.
async fn poll_paused(consumer: &impl Feed, how_long: Duration) -> Result<(), RouterError> {
    let until = Instant::now() + how_long;
    loop {
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) => warn!(error = %e, "consumer error"),
            Ok(Ok(msg)) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(msg.topic(), msg.partition());
                consumer.pause(&tpl)?;
                consumer.seek(
                    msg.topic(),
                    msg.partition(),
                    Offset::Offset(msg.offset()),
                    Duration::from_secs(10),
                )?;
            }
        }
    }
}
