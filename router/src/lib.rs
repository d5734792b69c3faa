//! `sluice-router` consumes change topics, decodes the Avro events, batches them and applies
//! them to a sink, exactly once in effect.
//!
//! It owns the Kafka consumer group, writer-schema loading from the schema topic or registry
//! ([`schemas`]), mapping schemes and their hot reload ([`mapper`]), the batching loop
//! ([`router`]) and the dead-letter topic. Exactly-once rests on the sink: every
//! batch commits its rows together with the consumed offsets and applied positions (see
//! `sluice_sinks::Sink`); Kafka's own committed offsets are only a hint for where to resume.

mod applier;
mod dead_letter;
pub mod error;
mod feed;
mod gaps;
mod holds;
mod lag;
pub mod mapper;
pub mod metrics;
mod outage;
mod pending;
mod provisional;
mod reading;
pub mod router;
pub mod schemas;
#[cfg(test)]
mod testing;
mod topics;

pub use error::RouterError;
pub use mapper::Mapper;
pub use router::{BatchSettings, Router, RouterSettings};
