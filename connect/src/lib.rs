//! `sluice-connect`: how Sluice reaches the services around it, kept out of the model crate
//! (`sluice-schemas`) so that the model depends on no driver or client.
//!
//! - [`tls`]: rustls for every database connection, sources and sinks alike (PostgreSQL and
//!   MySQL/MariaDB), with the `[…tls]` settings and the errors that say what to check.
//! - [`headers`]: reading a change message's position and barrier headers.
//! - [`registry`]: the Confluent-compatible Schema Registry client and Confluent framing.
//! - [`transport`]: which transport a process runs on ([`transport::Transport`]: Kafka, or
//!   local mode's in-process one), reading Sluice's control topics (schemas, capture state)
//!   to their end, and the schema topic's layout.
//! - [`local`]: local mode's transport — change messages handed from capture to routers in
//!   memory, acknowledged once every router's sink committed them; control records in files.

pub mod headers;
pub mod local;
pub mod registry;
pub mod tls;
pub mod transport;
