//! `sluice-connect`: how Sluice reaches the services around it, kept out of the model crate
//! (`sluice-schemas`) so that the model depends on no driver or client.
//!
//! - [`tls`]: rustls for every database connection, sources and sinks alike (PostgreSQL and
//!   MySQL/MariaDB), with the `[…tls]` settings and the errors that say what to check.
//! - [`headers`]: reading a change message's position and barrier headers.
//! - [`registry`]: the Confluent-compatible Schema Registry client and Confluent framing.
//! - [`transport`]: reading Sluice's compacted control topics (schemas, capture state) to
//!   their end, and the schema topic's layout.

pub mod headers;
pub mod registry;
pub mod tls;
pub mod transport;
