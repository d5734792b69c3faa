//! The service harness Sluice's tests share: real PostgreSQL, MariaDB, Apache Kafka (KRaft, from
//! Maven Central's jars) and Tansu (a second Kafka-protocol broker), each started on a free port in its own temporary directory and
//! stopped when its guard drops — also when a test panics. Children get `PR_SET_PDEATHSIG`, so a
//! killed test process does not leave servers behind.
//!
//! It also serves a Schema Registry that follows Confluent's documented REST API
//! ([`SchemaRegistry`]): no real one can be installed on our machines.
//!
//! Binaries are found on `PATH` or in the usual Debian locations; override with
//! `SLUICE_PG_BIN` (directory of `initdb`/`postgres`), `SLUICE_MARIADB_BIN` and `SLUICE_TANSU`.

// Spawning children with a parent-death signal and as another user needs `pre_exec`/libc.
#![allow(unsafe_code)]

mod certs;
pub mod compare;
mod kafka;
mod mariadb;
mod pipeline;
mod postgres;
mod process;
mod registry;
mod sluice;
mod tansu;

pub use certs::TestCerts;
pub use kafka::{Broker, Kafka, KAFKA_VERSION};
pub use mariadb::MariaDb;
pub use pipeline::{wait_for_rows, Pipeline, PipelineBuilder};
pub use postgres::{pg_major, ApplyLog, Postgres};
pub use process::{free_port, output_of, wait_until, ChildGuard};
pub use registry::{RegistryTls, SchemaRegistry};
pub use sluice::{http_get, metric_value, try_http_get, SluiceProcess};
pub use tansu::{Tansu, TansuStorage};

/// Result type of the harness: failures to start a service are reported with what was run.
pub type Result<T> = std::result::Result<T, String>;
