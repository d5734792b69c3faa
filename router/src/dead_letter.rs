//! The dead-letter topic: where a message goes that cannot be applied (undecodable, refused by
//! a mapping scheme or by the sink), unchanged, with why and whence in its headers.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tracing::warn;

use crate::metrics as m;
use crate::pending::Raw;
use crate::RouterError;

/// The writer of one dead-letter topic (an idempotent producer).
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(client_config: &ClientConfig, topic: &str) -> Result<DeadLetters, RouterError> {
        Ok(DeadLetters {
            producer: client_config
                .clone()
                .set("enable.idempotence", "true")
                .create()?,
            topic: topic.to_string(),
        })
    }

    /// Writes `msg` to the dead-letter topic with the reason and its origin in headers, and
    /// waits for Kafka to acknowledge it before the offset can be recorded as consumed.
    pub async fn send(&self, msg: &Raw, reason: &str, detail: &str) -> Result<(), RouterError> {
        warn!(
            topic = %msg.topic,
            partition = msg.partition,
            offset = msg.offset,
            reason,
            detail,
            "dead-lettering message"
        );
        metrics::counter!(m::DLQ_TOTAL, "topic" => msg.topic.to_string(), "reason" => reason.to_string()).increment(1);
        let partition = msg.partition.to_string();
        let offset = msg.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "sluice.dlq.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "sluice.dlq.detail",
                value: Some(detail),
            })
            .insert(Header {
                key: "sluice.dlq.topic",
                value: Some(msg.topic.as_ref()),
            })
            .insert(Header {
                key: "sluice.dlq.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "sluice.dlq.offset",
                value: Some(&offset),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &msg.key {
            record = record.key(k);
        }
        if let Some(p) = &msg.payload {
            record = record.payload(p);
        }
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|(e, _)| RouterError::Kafka(format!("write to dead-letter topic: {e}")))
    }
}
