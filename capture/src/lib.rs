//! `sluice-capture` tails source replication logs and publishes every committed row change to
//! Kafka as an Avro event, one topic per table.
//!
//! It owns the PostgreSQL engine ([`postgres`]: walsender client, pgoutput decoder, slot and
//! publication management, the capture loop) and the Kafka [`publisher`] that tracks
//! acknowledgements, so that the source position advances only past events Kafka has
//! acknowledged. It does not own event encoding (`sluice-schemas`) or anything downstream of
//! Kafka.

pub mod error;
pub mod metrics;
pub mod mysql;
pub mod postgres;
pub mod publisher;
mod retry;
pub mod tls;

pub use error::CaptureError;
pub use publisher::{Publisher, PublisherSettings};
