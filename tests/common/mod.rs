//! Reading a change topic the way a consumer would, for tests that check what reached Kafka:
//! partition 0 from the beginning, each event decoded with the router's own [`SchemaStore`].

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sluice_router::schemas::SchemaStore;
use sluice_schemas::avro::DecodedEvent;
use sluice_schemas::{Position, TableSchema};

/// One decoded event with its position header and the table version it was written with.
pub struct ReadEvent {
    pub position: Position,
    /// The schema id of a Confluent-framed message (`None` for single-object framing).
    pub framing_id: Option<u32>,
    pub table: Arc<TableSchema>,
    pub event: DecodedEvent,
}

pub struct TopicReader {
    consumer: BaseConsumer,
    schemas: SchemaStore,
    runtime: tokio::runtime::Runtime,
}

impl TopicReader {
    /// A reader of `topic`, its schemas read from the schema topic of `namespace` (the test's
    /// `Broker::namespace`).
    pub fn new(bootstrap: &str, namespace: &str, topic: &str) -> TopicReader {
        TopicReader::with_registry(bootstrap, namespace, topic, None)
    }

    /// A reader that also resolves Confluent-framed messages through `registry`.
    pub fn with_registry(
        bootstrap: &str,
        namespace: &str,
        topic: &str,
        registry: Option<Arc<sluice_connect::registry::Registry>>,
    ) -> TopicReader {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", format!("test-reader-{topic}"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        TopicReader {
            consumer,
            schemas: SchemaStore::new(
                sluice_connect::transport::Transport::Kafka(config),
                format!("{namespace}_sluice_schemas"),
                registry,
            ),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// The next event, or `None` when nothing arrives within `wait` (tombstones are skipped).
    pub fn next(&mut self, wait: Duration) -> Option<ReadEvent> {
        let msg = loop {
            let msg = poll_message(&self.consumer, wait)?;
            if msg.payload().is_some() {
                break msg;
            }
        };
        let payload = msg.payload()?;
        let position =
            sluice_connect::headers::position(&msg).expect("every event carries its position");
        let (decoder, datum) = self
            .runtime
            .block_on(self.schemas.resolve(payload))
            .unwrap()
            .expect("the schema is registered before its first event");
        Some(ReadEvent {
            position,
            framing_id: sluice_connect::registry::parse_confluent(payload).map(|(id, _)| id),
            table: decoder.table.clone(),
            event: decoder.decode(datum).unwrap(),
        })
    }
}

/// One message as it is: its headers (name → UTF-8 text) and payload.
pub struct RawMessage {
    pub offset: i64,
    pub headers: std::collections::BTreeMap<String, String>,
    pub payload: Option<Vec<u8>>,
}

/// Every message of partition 0 of `topic` that arrives until none comes for `quiet`.
pub fn read_raw(bootstrap: &str, topic: &str, quiet: Duration) -> Vec<RawMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while let Some(msg) = poll_message(&consumer, quiet) {
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(RawMessage {
            offset: msg.offset(),
            headers,
            payload: msg.payload().map(<[u8]>::to_vec),
        });
    }
    out
}

/// The next message within `wait`. `BaseConsumer::poll` also returns `None` early when it
/// consumed an event that is not a message (an offset commit, a rebalance), which a reader must
/// not take for "nothing more came".
fn poll_message(
    consumer: &BaseConsumer,
    wait: Duration,
) -> Option<rdkafka::message::BorrowedMessage<'_>> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if let Some(msg) = consumer.poll(left) {
            return Some(msg.unwrap());
        }
        if left.is_zero() {
            return None;
        }
    }
}
