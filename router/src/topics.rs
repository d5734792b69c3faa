//! The topics a router needs, created at start-up where they are missing.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use sluice_schemas::liveness::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;
use crate::router::RouterSettings;
use crate::RouterError;

/// Creates the topics the router reads and writes (the table topics, the schema topic, the
/// dead-letter topic) where they do not exist yet.
pub(crate) async fn ensure(
    client_config: &ClientConfig,
    settings: &RouterSettings,
) -> Result<(), RouterError> {
    refuse_legacy_topics(client_config, settings).await?;
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
    let factor = settings.replication_factor;
    let rf = || TopicReplication::Fixed(factor);
    let mut topics: Vec<NewTopic<'_>> = settings
        .topics
        .iter()
        .map(|t| NewTopic::new(t, settings.partitions, rf()))
        .collect();
    topics.push(NewTopic::new(&settings.schema_topic, 1, rf()).set("cleanup.policy", "compact"));
    topics.push(NewTopic::new(&settings.dead_letter_topic, 1, rf()));
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(topics.iter(), &opts).await? {
        match r {
            Ok(t) => info!(topic = %t, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // What no retry changes: a permission, or a setting the cluster refuses.
            Err((
                t,
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidTopic),
            )) => {
                return Err(RouterError::Definite(format!(
                    "create topic {t}: {code}; create it yourself, or grant the router's \
                     Kafka user CREATE on the cluster, or fix kafka.partitions / \
                     kafka.replication_factor"
                )))
            }
            Err((t, code)) => return Err(RouterError::Kafka(format!("create topic {t}: {code}"))),
        }
    }
    Ok(())
}

/// Refuses to create a table's topic while the topic it had before topic names carried the
/// source exists ([`sluice_schemas::LegacyTopic`]): created by the router, the new topic would
/// let capture publish there and the old topic's unread tail would never reach the sink.
async fn refuse_legacy_topics(
    client_config: &ClientConfig,
    settings: &RouterSettings,
) -> Result<(), RouterError> {
    if settings.legacy_topics.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = client_config.create()?;
    // A short wait: librdkafka's call cannot be cancelled, and a shutdown (a broker refusing
    // Sluice's credentials stops the process) waits for it; the check is retried anyway.
    let topics: HashSet<String> = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect())
    })
    .await
    .map_err(|e| RouterError::Kafka(format!("list topics: {e}")))??;
    for legacy in &settings.legacy_topics {
        if let Some(refusal) = legacy.refusal(|t| topics.contains(t)) {
            return Err(RouterError::Definite(refusal));
        }
    }
    Ok(())
}

/// [`ensure`], retried with backoff while the broker is unavailable (a
/// router may start before its broker, or during a broker restart): the broker is shown
/// disconnected in `/readyz` and each failure is logged and counted. `false` when shut
/// down meanwhile.
pub(crate) async fn ensure_with_retry(
    client_config: &ClientConfig,
    settings: &RouterSettings,
    shutdown: &CancellationToken,
) -> Result<bool, RouterError> {
    let mut backoff = Backoff::default();
    loop {
        match ensure(client_config, settings).await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                settings.liveness.set_connected("broker", false);
                metrics::counter!(m::ERRORS_TOTAL, "sink" => settings.sink_name.clone(), "kind" => "transient").increment(1);
                let wait = backoff.next_wait();
                warn!(error = %e, retry_in = ?wait, "the broker did not answer topic creation at start-up; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}
