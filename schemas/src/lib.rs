//! `sluice-schemas` owns the shape of a change as it travels through Sluice.
//!
//! - [`event`]: the change-event model ([`ChangeEvent`], [`Op`], [`Position`], [`Datum`]) that
//!   capture produces and the router consumes;
//! - [`table`]: table schemas as declared by the source catalog ([`TableSchema`], [`Column`],
//!   [`SqlType`]) and their mapping onto Avro types;
//! - [`avro`]: the Debezium-compatible Avro envelope, its encoding with Avro single-object
//!   framing, and decoding back into rows;
//! - [`compat`]: the compatibility policy between versions of a table's schema;
//! - [`resolve`]: Avro schema resolution with reasons in words, for the compatibility policy
//!   and mapping schemes;
//! - [`scheme`]: mapping schemes (reader schemas with `sluice.` attributes): parse, check
//!   against a writer schema, apply to changes;
//! - [`liveness`]: what every component reports to its process's `/readyz` (connected, and
//!   whether pending work moves).
//!
//! It talks to no database, broker or registry itself and depends on no driver or client
//! (`sluice-connect` reaches them): capture publishes the schemas it builds here and the
//! router loads them (see `sluice-capture` and `sluice-router`).

pub mod avro;
mod avro_read;
pub mod compat;
pub mod dberror;
pub mod decimal;
pub mod event;
pub mod liveness;
pub mod pgtext;
pub mod resolve;
pub mod scheme;
pub mod table;

pub use avro::{AvroError, EnvelopeCodec, SchemaFingerprint};
pub use event::{ChangeEvent, Datum, Op, Position, RowChange, SourceInfo, TxInfo};
pub use table::{Column, LegacyTopic, SqlType, TableId, TableSchema};
