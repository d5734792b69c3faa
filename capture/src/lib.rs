//! `sluice-capture` tails source replication logs and publishes every committed row change to
//! Kafka as an Avro event, one topic per table.
//!
//! It owns the engines — [`postgres`] (walsender client, pgoutput decoder, slot and
//! publication, snapshot, capture loop) and [`mysql`] (config, positions, preflight, catalog,
//! snapshot, binlog stream, each in a file of its own) — and what they share: the Kafka
//! [`publisher`] that tracks acknowledgements, so that the source position advances only past
//! events Kafka has acknowledged; the [`state`] record of snapshot progress; source
//! [`epoch`]s; the [`spill`] of changes held until their transaction commits; the reconnect
//! loop. It does not own event encoding (`sluice-schemas`) or anything downstream of Kafka.

pub mod epoch;
pub mod error;
pub mod metrics;
pub mod mysql;
pub mod postgres;
pub mod publisher;
mod retry;
pub mod source;
pub mod spill;
pub mod state;
/// TLS to the source databases (shared with the sinks).
pub use sluice_connect::tls;

pub use error::CaptureError;
pub use publisher::{Publisher, PublisherSettings};

/// What every capture starts from, whatever its source kind (`C` is the source's config);
/// each engine adds `run` for its own config type.
pub struct Capture<C> {
    name: String,
    config: C,
    transport: sluice_connect::transport::Transport,
    settings: PublisherSettings,
    password: Option<String>,
}

impl<C> Capture<C> {
    pub fn new(
        name: &str,
        config: C,
        transport: sluice_connect::transport::Transport,
        settings: PublisherSettings,
        password: Option<String>,
    ) -> Capture<C> {
        Capture {
            name: name.to_string(),
            config,
            transport,
            settings,
            password,
        }
    }
}
