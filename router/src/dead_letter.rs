//! The dead-letter topic: where a message goes that cannot be applied (undecodable, refused by
//! a mapping scheme or by the sink), unchanged, with why and whence in its headers. In local
//! mode, `dead-letters.jsonl` in the state directory, one JSON object per message.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_connect::local::{hex, Local};
use sluice_connect::transport::Transport;
use tracing::warn;

use crate::metrics as m;
use crate::pending::Raw;
use crate::RouterError;

/// Where dead letters are written.
enum Writer {
    /// An idempotent producer to the dead-letter topic.
    Kafka(FutureProducer),
    Local(std::sync::Arc<Local>),
}

/// The writer of one dead-letter topic.
pub(crate) struct DeadLetters {
    writer: Writer,
    topic: String,
}

impl DeadLetters {
    pub fn new(transport: &Transport, topic: &str) -> Result<DeadLetters, RouterError> {
        let writer = match transport {
            Transport::Kafka(config) => {
                Writer::Kafka(config.clone().set("enable.idempotence", "true").create()?)
            }
            Transport::Local(local) => Writer::Local(local.clone()),
        };
        Ok(DeadLetters {
            writer,
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
        let producer = match &self.writer {
            Writer::Kafka(producer) => producer,
            Writer::Local(local) => {
                let record = serde_json::json!({
                    "reason": reason,
                    "detail": detail,
                    "topic": &*msg.topic,
                    "offset": msg.offset,
                    "key_hex": msg.key.as_deref().map(hex),
                    "payload_hex": msg.payload.as_deref().map(hex),
                    "at_ms": sluice_schemas::event::unix_now_us() / 1000,
                });
                let local = local.clone();
                // A file appended and synced: off the async threads.
                return tokio::task::spawn_blocking(move || local.dead_letter(&record))
                    .await
                    .map_err(|e| RouterError::Kafka(format!("write a dead letter: {e}")))?
                    .map_err(|e| RouterError::Kafka(format!("write a dead letter: {e}")));
            }
        };
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
        producer
            .send(record, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|(e, _)| RouterError::Kafka(format!("write to dead-letter topic: {e}")))
    }
}
