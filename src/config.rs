//! The one TOML config file. Every field is documented here (this is the user's reference),
//! unknown keys are rejected with their path, and [`Config::validate`] names the field and the
//! fix. Secrets can come from the environment instead of the file:
//! `SLUICE_SOURCES_<NAME>_PASSWORD`, `SLUICE_SINKS_<NAME>_PASSWORD`, `SLUICE_KAFKA_PASSWORD`; and
//! `SLUICE_KAFKA_BOOTSTRAP_SERVERS` overrides `kafka.bootstrap_servers`, and
//! `SLUICE_ROUTER_FETCH_STALL_RECOVERY` `router.fetch_stall_recovery`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kafka::{KafkaSasl, KafkaTls};
use serde::Deserialize;
use sluice_capture::mysql::MysqlSourceConfig;
use sluice_capture::postgres::PostgresSourceConfig;
use sluice_capture::source::Source;
use sluice_connect::registry::{Registry, RegistrySettings};
use sluice_schemas::TableId;
use sluice_sinks::postgres::PostgresSinkConfig;

const DEFAULT_TOPIC_PREFIX: &str = "sluice";
const DEFAULT_SCHEMA_TOPIC: &str = "_sluice_schemas";
const DEFAULT_STATE_TOPIC: &str = "_sluice_capture_state";
const DEFAULT_DEAD_LETTER_TOPIC: &str = "_sluice_dead_letter";
const DEFAULT_PARTITIONS: i32 = 1;
const DEFAULT_REPLICATION_FACTOR: i32 = 1;
const DEFAULT_MAX_IN_FLIGHT: usize = 100_000;
const DEFAULT_GROUP_ID: &str = "sluice-router";
const DEFAULT_BATCH_MAX_ROWS: usize = 5_000;
const DEFAULT_BATCH_MAX_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_BATCH_MAX_DELAY_MS: u64 = 100;
const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// A configuration problem, with the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {path}: {message}")]
    Parse {
        file: PathBuf,
        path: String,
        message: String,
    },
    #[error("{file}: {}", .problems.join("\n  "))]
    Invalid {
        file: PathBuf,
        problems: Vec<String>,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka-protocol cluster events travel through. Without this section Sluice runs in
    /// local mode (see `local`).
    #[serde(default, rename = "kafka")]
    kafka_section: Option<KafkaConfig>,
    /// `[kafka]` as given, or its defaults in local mode (topic names still name things).
    #[serde(skip)]
    pub kafka: KafkaConfig,
    /// Local mode (`sluice run` with no `[kafka]` section): capture, mapping schemes and sinks
    /// in one process, with no broker.
    #[serde(default)]
    pub local: Option<LocalConfig>,
    /// Databases to capture, by name. The name appears in topics' `source.name`, metrics and logs.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Databases to write into, by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// The router: which topics go to which sink.
    #[serde(default)]
    pub router: Option<RouterConfig>,
    /// Metrics, health endpoints and logs.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// What SIGTERM/SIGINT waits for.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// How schemas travel (schema topic or Schema Registry) and how they may evolve.
    #[serde(default)]
    pub schemas: SchemasConfig,
    /// `sluice verify` on a schedule inside `sluice run` / `sluice route`.
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// The directory of the config file (relative paths in it are relative to this).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `[schemas]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    /// What each new version of a table's schema must stay compatible with, by Confluent's
    /// levels: `backward` (default: consumers with the new schema read older events),
    /// `forward`, `full`, their `_transitive` forms (against every earlier version, not only
    /// the latest), or `none`. A column added or dropped is compatible under all of them; a
    /// retype is compatible when Avro can read the old type as the new one (`int` → `bigint`,
    /// `numeric(10,2)` → `numeric(12,2)` under backward). A change that breaks the policy stops
    /// capture before the change is published, with what changed and how to proceed.
    #[serde(default)]
    pub compatibility: Option<String>,
    /// Per-table levels, by `schema.table` (PostgreSQL) or `database.table` (MySQL):
    /// `{ "public.orders" = "none" }`.
    #[serde(default)]
    pub compatibility_overrides: BTreeMap<String, String>,
    /// A Confluent Schema Registry (or Apicurio, Karapace, Redpanda: anything serving its REST
    /// API). With it, messages use Confluent's framing (magic byte 0 and the schema id) and
    /// subjects follow TopicNameStrategy (`<topic>-key`, `<topic>-value`); without it, Avro
    /// single-object encoding with every schema in `kafka.schema_topic`.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
}

/// `[schemas.registry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `http://host:8081` or `https://…` (a path prefix is kept).
    pub url: String,
    /// HTTP basic authentication user (Confluent Cloud: the API key); the password comes from
    /// `SLUICE_SCHEMAS_REGISTRY_PASSWORD`.
    #[serde(default)]
    pub username: Option<String>,
    /// PEM file of the CA certificates to trust for `https` (default: the public web roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for registries that require mutual TLS (both or neither).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Milliseconds a request may take.
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_registry_timeout_ms() -> u64 {
    10_000
}

impl SchemasConfig {
    /// The policy for every table; the names were checked by [`Config::validate`].
    pub fn policy(&self) -> sluice_schemas::compat::SchemaPolicy {
        sluice_schemas::compat::SchemaPolicy {
            default: self
                .compatibility
                .as_deref()
                .and_then(|c| c.parse().ok())
                .unwrap_or_default(),
            overrides: self
                .compatibility_overrides
                .iter()
                .filter_map(|(t, c)| Some((TableId::parse(t)?, c.parse().ok()?)))
                .collect(),
        }
    }

    /// The registry client, when one is configured.
    pub fn registry(&self) -> Result<Option<std::sync::Arc<Registry>>, String> {
        let Some(r) = &self.registry else {
            return Ok(None);
        };
        Registry::new(&RegistrySettings {
            url: r.url.clone(),
            username: r.username.clone(),
            password: std::env::var("SLUICE_SCHEMAS_REGISTRY_PASSWORD").ok(),
            ca_file: r.ca_file.clone(),
            cert_file: r.cert_file.clone(),
            key_file: r.key_file.clone(),
            timeout: std::time::Duration::from_millis(r.timeout_ms),
            attempts: 3,
        })
        .map(|r| Some(std::sync::Arc::new(r)))
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if let Some(c) = &self.compatibility {
            if let Err(e) = c.parse::<sluice_schemas::compat::Compatibility>() {
                problems.push(format!("schemas.compatibility: {e}"));
            }
        }
        for (table, c) in &self.compatibility_overrides {
            if TableId::parse(table).is_none() {
                problems.push(format!(
                    "schemas.compatibility_overrides: \"{table}\" is not a \"schema.table\" name"
                ));
            }
            if let Err(e) = c.parse::<sluice_schemas::compat::Compatibility>() {
                problems.push(format!("schemas.compatibility_overrides.\"{table}\": {e}"));
            }
        }
        if let Some(r) = &self.registry {
            if r.timeout_ms == 0 {
                problems.push("schemas.registry.timeout_ms must be > 0".into());
            }
            if let Err(e) = self.registry() {
                problems.push(e);
            }
        }
    }
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight work may take to drain after SIGTERM: capture waits this long for
    /// Kafka to acknowledge what it published (then confirms its checkpoint), the router
    /// finishes its batch. A process that has not stopped 5 s later exits non-zero.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// After a component stopped on a definite error, the process keeps serving `/metrics`
    /// (with `sluice_component_failed` = 1) and failing `/readyz` until `/metrics` has been
    /// read once, or this long, then exits non-zero, so that Prometheus sees the failure even
    /// from a process that fails at once on every start. Default 30000 (two scrapes at 15 s).
    #[serde(default = "default_linger_on_failure_ms")]
    pub linger_on_failure_ms: u64,
}

fn default_linger_on_failure_ms() -> u64 {
    30_000
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: default_drain_timeout_ms(),
            linger_on_failure_ms: default_linger_on_failure_ms(),
        }
    }
}

impl ShutdownConfig {
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn linger_on_failure(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.linger_on_failure_ms)
    }
}

/// `[verify]`: the router's process compares its sink with the sources now and then (what
/// `sluice verify` does), and exposes what it found as `sluice_verify_*` metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Seconds from the end of one run to the start of the next (or `schedule`).
    #[serde(default)]
    pub interval_s: Option<u64>,
    /// When runs start, as a cron expression in UTC (minute hour day-of-month month
    /// day-of-week, e.g. `"30 2 * * *"`; see `src/cron.rs`), instead of `interval_s`. A run
    /// still going at a time skips that time.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Seconds after start before the first run. Default: one interval, or the schedule's
    /// first time.
    #[serde(default)]
    pub first_after_s: Option<u64>,
    /// Only these source tables (`schema.table`). Default: every routed table.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables verified on a timing of their own (`[verify.table."public.orders"]` with
    /// `interval_s` or `schedule`, and optionally `first_after_s`), in runs of their own; the
    /// other tables keep `[verify]`'s.
    #[serde(default)]
    pub table: BTreeMap<String, VerifyTiming>,
    /// About how many rows a compared bucket holds. Default 1000.
    #[serde(default = "default_verify_bucket_rows")]
    pub bucket_rows: u64,
    /// How long a run may wait for the pipeline to apply what a differing row was read at
    /// (`sluice verify --settle-ms`), in milliseconds. Default 10000.
    #[serde(default = "default_verify_settle_ms")]
    pub settle_ms: u64,
    /// Tables compared at once. Default 1 (light on busy databases).
    #[serde(default = "default_verify_parallel")]
    pub parallel: usize,
    /// Repair what differs: the rows are sent through the pipeline again (as `sluice verify
    /// --repair` does). Default false: differences are reported and alerted on only.
    #[serde(default)]
    pub repair: bool,
    /// How long repaired rows may take to arrive, in milliseconds. Default 120000.
    #[serde(default = "default_verify_repair_wait_ms")]
    pub repair_wait_ms: u64,
    /// At most this many rows a second read from each database per table compared (as
    /// `sluice verify --max-rows-per-second`). Default: no limit.
    #[serde(default)]
    pub max_rows_per_second: Option<u64>,
}

/// When one table's scheduled verify runs (`[verify.table."<schema.table>"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyTiming {
    /// Seconds from the end of one run to the start of the next (or `schedule`).
    #[serde(default)]
    pub interval_s: Option<u64>,
    /// When runs start, as a cron expression in UTC.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Seconds after start before the first run.
    #[serde(default)]
    pub first_after_s: Option<u64>,
}

impl VerifyTiming {
    /// What is wrong with it, each naming `at` (the section) and the fix.
    fn problems(&self, at: &str) -> Vec<String> {
        match (&self.interval_s, &self.schedule) {
            (Some(0), _) => vec![format!("{at}.interval_s must be > 0 (e.g. 3600)")],
            (Some(_), Some(_)) => vec![format!(
                "[{at}] takes interval_s or schedule, not both: remove one"
            )],
            (None, None) => vec![format!(
                "[{at}] needs interval_s (seconds between runs, e.g. 3600) or schedule (a cron \
                 expression in UTC, e.g. \"30 2 * * *\")"
            )],
            (None, Some(cron)) => match crate::cron::Cron::parse(cron) {
                Err(e) => vec![format!("{at}.schedule: {e}")],
                Ok(_) => Vec::new(),
            },
            (Some(_), None) => Vec::new(),
        }
    }
}

impl VerifyConfig {
    /// `[verify]`'s own timing, which the tables without one of their own keep.
    pub fn timing(&self) -> VerifyTiming {
        VerifyTiming {
            interval_s: self.interval_s,
            schedule: self.schedule.clone(),
            first_after_s: self.first_after_s,
        }
    }
}

fn default_verify_repair_wait_ms() -> u64 {
    120_000
}

fn default_verify_bucket_rows() -> u64 {
    1_000
}
fn default_verify_settle_ms() -> u64 {
    10_000
}
fn default_verify_parallel() -> usize {
    1
}

/// `[local]`: local mode's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Where local mode keeps what Kafka's control topics hold in Kafka mode: each source's
    /// capture state (snapshot progress, source epoch) and the schemas it published, and
    /// `dead-letters.jsonl`. Keep it on a persistent volume: without it capture snapshots
    /// again. Relative to the config file's directory; default `sluice-state`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Changes capture may hand to the routers before their sinks commit them; capture waits
    /// beyond it (this bounds memory: a slow sink slows capture). Default 20000.
    #[serde(default = "default_local_max_in_flight")]
    pub max_in_flight: usize,
    /// A large transaction a PostgreSQL source streams while it is in progress (`streaming`)
    /// goes to the routers as it comes, and each PostgreSQL sink writes it into a transaction
    /// of its own, held open and committed once the source committed and everything before it
    /// reached the sink: the sink holds it moments after its commit instead of applying all of
    /// it then. Nothing of it is visible at the sink before that. Whatever keeps a sink from
    /// holding it (a MySQL/MariaDB sink, a session waiting for its row locks, a change the sink
    /// refuses) only means it is applied after its commit, as with `false`. Default `true`.
    #[serde(default = "default_true")]
    pub apply_in_progress: bool,
}

fn default_local_max_in_flight() -> usize {
    20_000
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            state_dir: None,
            max_in_flight: default_local_max_in_flight(),
            apply_in_progress: true,
        }
    }
}

/// Which transport the processes of a config run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Kafka,
    Local,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (librdkafka's `bootstrap.servers`).
    pub bootstrap_servers: String,
    /// The start of each source's topic prefix: a source's table topics are
    /// `<topic_prefix>.<source name>.<schema>.<table>` unless it sets its own
    /// `sources.<name>.topic_prefix`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Compacted topic holding every Avro schema, keyed by its fingerprint (registry-less mode).
    #[serde(default = "default_schema_topic")]
    pub schema_topic: String,
    /// Compacted topic holding each source's snapshot progress, keyed by source name.
    #[serde(default = "default_state_topic")]
    pub state_topic: String,
    /// Partitions of the table topics Sluice creates. Events are keyed by primary key, so
    /// order per row holds with any number.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics Sluice creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Follow every delete event with a tombstone (null value) so compacted topics drop the key.
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Events capture may have awaiting Kafka acknowledgement before it pauses reading the source.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// TLS to the brokers (`security.protocol` `ssl`, or `sasl_ssl` with `sasl`).
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (SCRAM-SHA-512/256, PLAIN); the password comes from
    /// `SLUICE_KAFKA_PASSWORD`.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties (timeouts, tuning), passed through as they are. Security
    /// properties belong in `tls` and `sasl` when those are set.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    /// Local mode's: no brokers; the topic names still name each table's stream (in the
    /// sink's `sluice_offsets`, in metrics) and the control records' files.
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: String::new(),
            topic_prefix: default_topic_prefix(),
            schema_topic: default_schema_topic(),
            state_topic: default_state_topic(),
            partitions: 1,
            replication_factor: default_replication_factor(),
            tombstones: false,
            max_in_flight: default_local_max_in_flight(),
            tls: None,
            sasl: None,
            properties: BTreeMap::new(),
        }
    }
}

/// `[sources.<name>]`, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// PostgreSQL through logical replication (pgoutput).
    Postgres(PostgresSourceConfig),
    /// MySQL/MariaDB through the binlog, as a replica.
    Mysql(MysqlSourceConfig),
}

/// Evaluates `$body` with `$s` bound to the source's own config, whichever its engine: the
/// one `match` on the engine (everything else goes through [`sluice_capture::source::Source`]).
macro_rules! with_source {
    ($config:expr, $s:ident => $body:expr) => {
        match $config {
            $crate::config::SourceConfig::Postgres($s) => $body,
            $crate::config::SourceConfig::Mysql($s) => $body,
        }
    };
}
pub(crate) use with_source;

impl SourceConfig {
    /// The configured tables, parsed.
    pub fn table_ids(&self) -> Result<Vec<TableId>, String> {
        with_source!(self, s => Source::table_ids(s))
    }

    /// `sources.<name>.topic_prefix`, when set.
    pub fn topic_prefix(&self) -> Option<&str> {
        with_source!(self, s => Source::topic_prefix(s))
    }
}

/// `[sinks.<name>]`, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// PostgreSQL with batched, idempotent upserts.
    Postgres(PostgresSinkConfig),
    /// MySQL/MariaDB with batched `INSERT … ON DUPLICATE KEY UPDATE`.
    Mysql(sluice_sinks::mysql::MysqlSinkConfig),
}

/// `[router]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The sink (a key of `[sinks]`) this router writes to.
    pub sink: String,
    /// Kafka consumer group; routers with the same group share the partitions.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Static group membership id (Kafka's `group.instance.id`), opt-in: a router restarted
    /// with the same id takes its partitions back without a rebalance, but one that never
    /// returns keeps them until the session times out, and a changed subscription is not
    /// rebalanced. Must be unique per router process in the group (e.g. the pod name of a
    /// StatefulSet). Default: none — dynamic membership, so routers joining, leaving or being
    /// scaled in rebalance at once. (Tansu 0.6 never expires a dead dynamic member: set it
    /// there.)
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How the group shares partitions (librdkafka's `partition.assignment.strategy`):
    /// `cooperative-sticky` (default: a rebalance moves only the partitions that change owner,
    /// the others keep flowing), `range` or `roundrobin` (every rebalance stops all
    /// partitions). Tansu 0.6 mishandles the cooperative protocol once a second router joins
    /// (a revoked partition is assigned to no one): use `range` with more than one router on
    /// Tansu.
    #[serde(default = "default_assignment_strategy")]
    pub assignment_strategy: String,
    /// Topics to consume. Default: the topics of every table of every source in this file.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Local mode: more sinks fed from the same captures in this process, each with its own
    /// applied positions (capture confirms a position once every sink committed it).
    #[serde(default)]
    pub also_sinks: Vec<String>,
    /// Where undecodable or rejected events go, with the reason in headers.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// When a batch is written.
    #[serde(default)]
    pub batch: BatchConfig,
    /// A directory of mapping schemes (`*.avsc`, see SCHEMES.md), relative to this file. A
    /// table without a scheme for this router's sink is written as it is. Changed files are
    /// picked up while running; an invalid one is reported and the running scheme kept.
    #[serde(default)]
    pub schemes: Option<PathBuf>,
    /// Milliseconds between checks of the scheme directory for changed files.
    #[serde(default = "default_schemes_reload_ms")]
    pub schemes_reload_ms: u64,
    /// When the sink cannot take a table (its DDL fails, it is missing and may not be
    /// created, it has no key), that table's partitions are paused with their changes held
    /// while the other tables go on; every this many milliseconds the held changes are tried
    /// again, and the table resumes once the sink takes them.
    #[serde(default = "default_blocked_retry_ms")]
    pub blocked_retry_ms: u64,
    /// A change the sink refuses for a row it refers to (a foreign key between sink tables: a
    /// child row before its parent, a parent deleted before its children) holds its partition
    /// back, tried again every second, while the other tables' changes bring that row; past
    /// this many milliseconds it is dead-lettered. 0 dead-letters it at once.
    #[serde(default = "default_foreign_key_wait_ms")]
    pub foreign_key_wait_ms: u64,
    /// Tansu 0.6 only: when a partition's fetches keep coming back empty while messages follow
    /// its position (Tansu's answer to a fetch that starts inside a record batch), read it
    /// again from a little earlier. Leave it off for Apache Kafka and other brokers: there an
    /// empty answer is legitimate. `SLUICE_ROUTER_FETCH_STALL_RECOVERY=true` sets it too.
    #[serde(default)]
    pub fetch_stall_recovery: bool,
}

fn default_assignment_strategy() -> String {
    "cooperative-sticky".into()
}

fn default_blocked_retry_ms() -> u64 {
    30_000
}

fn default_foreign_key_wait_ms() -> u64 {
    600_000
}

fn default_schemes_reload_ms() -> u64 {
    2_000
}

/// `[router.batch]`: a batch is written when any limit is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Row changes per batch (default 5,000). Each batch is one sink transaction: more rows
    /// share its fixed costs (the offsets round trips, the commit), and the router holds two
    /// batches in memory (10,000 took its peak past 150 MB through a 5M-row transaction).
    #[serde(default = "default_batch_max_rows")]
    pub max_rows: usize,
    /// Bytes of Avro payload per batch.
    #[serde(default = "default_batch_max_bytes")]
    pub max_bytes: usize,
    /// Milliseconds from a batch's first event to its write.
    #[serde(default = "default_batch_max_delay_ms")]
    pub max_delay_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: DEFAULT_BATCH_MAX_ROWS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            max_delay_ms: DEFAULT_BATCH_MAX_DELAY_MS,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[observability]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Address serving `/metrics` (Prometheus), `/healthz` and `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `pretty` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter (`info`, `sluice_capture=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `/readyz` fails for a component that has had work pending (events awaiting Kafka, a
    /// batch awaiting the sink) this long without finishing any of it.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
}

fn default_stall_timeout_ms() -> u64 {
    60_000
}

impl ObservabilityConfig {
    pub fn stall_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.stall_timeout_ms)
    }
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            listen: default_listen(),
            log_format: LogFormat::Pretty,
            log_level: default_log_level(),
            stall_timeout_ms: default_stall_timeout_ms(),
        }
    }
}

/// Whether `s` is usable as (the start of) a Kafka topic name.
fn is_topic_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.into()
}
fn default_schema_topic() -> String {
    DEFAULT_SCHEMA_TOPIC.into()
}
fn default_state_topic() -> String {
    DEFAULT_STATE_TOPIC.into()
}
fn default_dead_letter_topic() -> String {
    DEFAULT_DEAD_LETTER_TOPIC.into()
}
fn default_partitions() -> i32 {
    DEFAULT_PARTITIONS
}
fn default_replication_factor() -> i32 {
    DEFAULT_REPLICATION_FACTOR
}
fn default_true() -> bool {
    true
}
fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_group_id() -> String {
    DEFAULT_GROUP_ID.into()
}
fn default_batch_max_rows() -> usize {
    DEFAULT_BATCH_MAX_ROWS
}
fn default_batch_max_bytes() -> usize {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_batch_max_delay_ms() -> u64 {
    DEFAULT_BATCH_MAX_DELAY_MS
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_log_level() -> String {
    "info".into()
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let mut config =
            Config::parse(&text).map_err(|(path_in_file, message)| ConfigError::Parse {
                file: path.to_path_buf(),
                path: path_in_file,
                message,
            })?;
        config.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.apply_env();
        config.validate().map_err(|problems| ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        })?;
        Ok(config)
    }

    /// Parses TOML; on error returns the dotted path of the offending key and the message.
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_string();
            let location = inner
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            (
                if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                format!("{message}{location}"),
            )
        })?;
        config.kafka = config.kafka_section.clone().unwrap_or_default();
        Ok(config)
    }

    /// Kafka mode when the config has a `[kafka]` section, else local mode.
    pub fn mode(&self) -> Mode {
        if self.kafka_section.is_some() {
            Mode::Kafka
        } else {
            Mode::Local
        }
    }

    /// The transport this config runs on: Kafka's client config, or local mode's state
    /// directory (opened, created when missing).
    pub fn transport(&self) -> Result<sluice_connect::transport::Transport, String> {
        Ok(match self.mode() {
            Mode::Kafka => sluice_connect::transport::Transport::Kafka(self.kafka_client()),
            Mode::Local => sluice_connect::transport::Transport::Local(
                sluice_connect::local::Local::open(&self.local_state_dir())?,
            ),
        })
    }

    /// Local mode's state directory, resolved against the config file's directory.
    pub fn local_state_dir(&self) -> PathBuf {
        let dir = self
            .local
            .as_ref()
            .and_then(|l| l.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from("sluice-state"));
        if dir.is_absolute() {
            dir
        } else {
            self.dir.join(dir)
        }
    }

    fn apply_env(&mut self) {
        if let Ok(v) = std::env::var("SLUICE_KAFKA_BOOTSTRAP_SERVERS") {
            if let Some(k) = self.kafka_section.as_mut() {
                k.bootstrap_servers = v.clone();
            }
            self.kafka.bootstrap_servers = v;
        }
        if let (Ok(v), Some(router)) = (
            std::env::var("SLUICE_ROUTER_FETCH_STALL_RECOVERY"),
            self.router.as_mut(),
        ) {
            router.fetch_stall_recovery = matches!(v.as_str(), "1" | "true" | "yes");
        }
    }

    /// The password for a source or sink from the environment, if set.
    pub fn env_password(section: &str, name: &str) -> Option<String> {
        let var = format!(
            "SLUICE_{}_{}_PASSWORD",
            section.to_uppercase(),
            name.to_uppercase().replace('-', "_")
        );
        std::env::var(var).ok()
    }

    /// Checks values serde cannot; every problem names its field and the fix.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.mode() == Mode::Local {
            self.validate_local(&mut problems);
        } else {
            self.validate_kafka(&mut problems);
        }
        self.validate_rest(problems)
    }

    fn validate_local(&self, problems: &mut Vec<String>) {
        if self.schemas.registry.is_some() {
            problems.push(
                "schemas.registry needs Kafka mode: in local mode (no [kafka] section) schemas                  stay in the state directory; remove [schemas.registry] or add [kafka]"
                    .into(),
            );
        }
        if self.local.as_ref().is_some_and(|l| l.max_in_flight == 0) {
            problems.push("local.max_in_flight must be > 0 (e.g. 20000)".into());
        }
        if let Some(r) = &self.router {
            if !r.topics.is_empty() {
                problems.push(
                    "router.topics lists Kafka topics; in local mode the router takes every                      source table of this config: remove it (or add [kafka])"
                        .into(),
                );
            }
        }
    }

    fn validate_kafka(&self, problems: &mut Vec<String>) {
        if self.local.is_some() {
            problems.push(
                "[local] and [kafka] are both set: a config runs in Kafka mode (with [kafka])                  or local mode (without it); remove one"
                    .into(),
            );
        }
        if let Some(r) = &self.router {
            if !r.also_sinks.is_empty() {
                problems.push(
                    "router.also_sinks is for local mode; in Kafka mode run a router per sink                      (each its own [router] and group_id)"
                        .into(),
                );
            }
        }
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            problems
                .push("kafka.bootstrap_servers must not be empty (e.g. \"127.0.0.1:9092\")".into());
        }
        if !is_topic_name(&k.topic_prefix) {
            problems.push("kafka.topic_prefix must be non-empty and use only letters, digits, '.', '_' and '-'".into());
        }
        if k.partitions < 1 {
            problems.push("kafka.partitions must be >= 1".into());
        }
        if k.replication_factor < 1 {
            problems.push("kafka.replication_factor must be >= 1".into());
        }
        if k.max_in_flight == 0 {
            problems.push("kafka.max_in_flight must be > 0".into());
        }
        crate::kafka::validate(
            k.tls.as_ref(),
            k.sasl.as_ref(),
            &k.properties,
            Self::kafka_password().as_deref(),
            problems,
        );
    }

    fn validate_rest(&self, mut problems: Vec<String>) -> Result<(), Vec<String>> {
        for name in self.sources.keys() {
            let prefix = self.source_topic_prefix(name);
            if !is_topic_name(&prefix) {
                problems.push(format!(
                    "sources.{name}: topic prefix \"{prefix}\" may use only letters, digits, '.', \
                     '_' and '-'; set sources.{name}.topic_prefix"
                ));
            }
        }
        // Two sources publishing to one topic would mix their changes, and each source's
        // positions would make the sink skip the other's as replays.
        let mut owners: BTreeMap<String, (&str, TableId)> = BTreeMap::new();
        for (name, table, topic) in self.source_topics() {
            if let Some((other, other_table)) = owners.get(&topic) {
                if *other != name {
                    problems.push(format!(
                        "sources.{other} ({other_table}) and sources.{name} ({table}) would both \
                         publish to topic {topic}; give one of them a topic_prefix of its own \
                         (sources.<name>.topic_prefix)"
                    ));
                }
                continue;
            }
            owners.insert(topic, (name, table));
        }
        for (name, source) in &self.sources {
            with_source!(source, s => s.validate(name, &mut problems));
        }
        for (name, sink) in &self.sinks {
            let tls = match sink {
                SinkConfig::Postgres(pg) => &pg.tls,
                SinkConfig::Mysql(my) => &my.tls,
            };
            if let Err(e) = tls.client_config(&format!("sinks.{name}.tls")) {
                problems.push(e);
            }
        }
        self.schemas.validate(&mut problems);
        if self.observability.stall_timeout_ms == 0 {
            problems.push("observability.stall_timeout_ms must be > 0 (e.g. 60000)".into());
        }
        if self.shutdown.drain_timeout_ms == 0 {
            problems.push("shutdown.drain_timeout_ms must be > 0 (e.g. 30000)".into());
        }
        if let Some(router) = &self.router {
            let named = std::iter::once(("router.sink =", &router.sink))
                .chain(router.also_sinks.iter().map(|s| ("router.also_sinks:", s)));
            for (field, sink) in named {
                if !self.sinks.contains_key(sink) {
                    let known: Vec<&str> = self.sinks.keys().map(String::as_str).collect();
                    problems.push(format!(
                        "{field} \"{sink}\" names no sink; define [sinks.{sink}] or use one of {known:?}"
                    ));
                }
            }
            if router.group_id.is_empty() {
                problems.push("router.group_id must not be empty".into());
            }
            if router.batch.max_rows == 0 {
                problems.push("router.batch.max_rows must be > 0".into());
            }
            if router.batch.max_bytes == 0 {
                problems.push("router.batch.max_bytes must be > 0".into());
            }
            if router.batch.max_delay_ms == 0 {
                problems.push("router.batch.max_delay_ms must be > 0".into());
            }
            if !["cooperative-sticky", "range", "roundrobin"]
                .contains(&router.assignment_strategy.as_str())
            {
                problems.push(format!(
                    "router.assignment_strategy = \"{}\" is not one of cooperative-sticky, range, roundrobin",
                    router.assignment_strategy
                ));
            }
            if router.blocked_retry_ms == 0 {
                problems.push("router.blocked_retry_ms must be > 0 (e.g. 30000)".into());
            }
            if router.schemes_reload_ms == 0 {
                problems.push("router.schemes_reload_ms must be > 0 (e.g. 2000)".into());
            }
            if let Some(dir) = self.schemes_dir() {
                // Each scheme on its own (against its table needs the source: `schemes check`).
                if let Ok(files) = sluice_schemas::scheme::scheme_files(&dir) {
                    for file in files {
                        if let Err(e) = sluice_schemas::scheme::Scheme::load(&file) {
                            problems.extend(e.0.iter().map(ToString::to_string));
                        }
                    }
                }
                if !dir.is_dir() {
                    problems.push(format!(
                        "router.schemes = \"{}\" is not a directory ({}); create it (`sluice schemes generate` fills it) or remove the setting",
                        router.schemes.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                        dir.display()
                    ));
                }
            }
            if router.topics.is_empty() && self.sources.is_empty() {
                problems.push("router.topics is empty and there are no [sources] to derive topics from; list the topics to consume".into());
            }
        }
        if let Some(v) = &self.verify {
            if self.router.is_none() {
                problems.push(
                    "[verify] runs beside the router and compares its sink: add [router] or \
                     remove [verify]"
                        .into(),
                );
            }
            problems.extend(v.timing().problems("verify"));
            let known: Vec<String> = self
                .sources
                .values()
                .filter_map(|s| s.table_ids().ok())
                .flatten()
                .map(|t| t.to_string())
                .collect();
            for (table, timing) in &v.table {
                let at = format!("verify.table.\"{table}\"");
                problems.extend(timing.problems(&at));
                if !known.contains(table) {
                    problems.push(format!(
                        "[{at}] names no captured table: use a `schema.table` of a source's \
                         `tables` (they are {known:?})"
                    ));
                }
            }
            if v.bucket_rows == 0 {
                problems.push("verify.bucket_rows must be > 0 (e.g. 1000)".into());
            }
            if v.parallel == 0 {
                problems.push("verify.parallel must be > 0 (e.g. 1)".into());
            }
        }
        if self
            .observability
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            problems.push(format!(
                "observability.listen must be an address like \"127.0.0.1:9464\" (got \"{}\")",
                self.observability.listen
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The router's scheme directory, resolved against the config file's directory.
    pub fn schemes_dir(&self) -> Option<PathBuf> {
        let dir = self.router.as_ref()?.schemes.as_ref()?;
        Some(if dir.is_absolute() {
            dir.clone()
        } else {
            self.dir.join(dir)
        })
    }

    /// The key for `hmac-sha256` masks, from `SLUICE_SCHEMES_HMAC_KEY`.
    pub fn hmac_key() -> Result<Option<Vec<u8>>, String> {
        match std::env::var(sluice_schemas::scheme::HMAC_KEY_ENV) {
            Err(_) => Ok(None),
            Ok(k) if k.len() < 32 => Err(format!(
                "{} is {} bytes long; use at least 32 random bytes (e.g. `openssl rand -hex 32`)",
                sluice_schemas::scheme::HMAC_KEY_ENV,
                k.len()
            )),
            Ok(k) => Ok(Some(k.into_bytes())),
        }
    }

    /// The librdkafka client config shared by every component.
    pub fn kafka_client(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka.bootstrap_servers);
        for (k, v) in crate::kafka::security_properties(
            self.kafka.tls.as_ref(),
            self.kafka.sasl.as_ref(),
            Self::kafka_password(),
        ) {
            c.set(k, v);
        }
        for (k, v) in &self.kafka.properties {
            c.set(k, v);
        }
        c
    }

    /// The SASL password (`SLUICE_KAFKA_PASSWORD`).
    fn kafka_password() -> Option<String> {
        std::env::var(crate::kafka::PASSWORD_ENV).ok()
    }

    /// The router's static membership id, when configured (dynamic membership otherwise).
    pub fn router_instance_id(&self) -> Option<String> {
        self.router.as_ref()?.instance_id.clone()
    }

    /// The topic prefix of source `name`: its own `topic_prefix`, else
    /// `<kafka.topic_prefix>.<name>`.
    pub fn source_topic_prefix(&self, name: &str) -> String {
        match self.sources.get(name).and_then(SourceConfig::topic_prefix) {
            Some(prefix) => prefix.to_string(),
            None => format!("{}.{name}", self.kafka.topic_prefix),
        }
    }

    /// Every source table's topic, with its source and table.
    fn source_topics(&self) -> Vec<(&str, TableId, String)> {
        self.sources
            .iter()
            .flat_map(|(name, source)| {
                let prefix = self.source_topic_prefix(name);
                source
                    .table_ids()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |t| {
                        let topic = t.topic(&prefix);
                        (name.as_str(), t, topic)
                    })
            })
            .collect()
    }

    /// The router's topics as they were named before topic names carried the source, for
    /// sources whose `topic_prefix` is not set (the router refuses to start while one exists
    /// and its new name does not).
    pub fn legacy_topics(&self) -> Vec<sluice_schemas::LegacyTopic> {
        let read = self.router_topics();
        self.source_topics()
            .into_iter()
            .filter(|(name, _, topic)| {
                read.contains(topic)
                    && self
                        .sources
                        .get(*name)
                        .is_some_and(|s| s.topic_prefix().is_none())
            })
            .map(|(name, table, _)| sluice_schemas::LegacyTopic {
                source: name.to_string(),
                table,
                legacy_prefix: self.kafka.topic_prefix.clone(),
                prefix: self.source_topic_prefix(name),
            })
            .collect()
    }

    /// The topics the router consumes: configured, or every source table's topic.
    pub fn router_topics(&self) -> Vec<String> {
        if let Some(r) = &self.router {
            if !r.topics.is_empty() {
                return r.topics.clone();
            }
        }
        let mut topics: Vec<String> = self
            .source_topics()
            .into_iter()
            .map(|(_, _, topic)| topic)
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[sources.pg_main]
kind = "postgres"
url = "postgresql://sluice@127.0.0.1/shop"
tables = ["public.orders"]
slot = "sluice_pg_main"
publication = "sluice_pg_main"

[sinks.warehouse]
kind = "postgres"
url = "postgresql://sluice@127.0.0.1/warehouse"

[router]
sink = "warehouse"
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kafka.topic_prefix, "sluice");
        assert_eq!(
            c.router.as_ref().unwrap().batch.max_rows,
            DEFAULT_BATCH_MAX_ROWS
        );
        assert_eq!(
            c.router_topics(),
            vec!["sluice.pg_main.public.orders".to_string()]
        );
    }

    #[test]
    fn verify_runs_on_an_interval_or_a_cron_schedule_and_a_bad_one_is_named() {
        let with =
            |verify: &str| Config::parse(&format!("{MINIMAL}\n[verify]\n{verify}\n")).unwrap();
        with("interval_s = 3600").validate().unwrap();
        let c = with("schedule = \"30 2 * * MON-FRI\"");
        c.validate().unwrap();
        assert_eq!(
            c.verify.unwrap().schedule.as_deref(),
            Some("30 2 * * MON-FRI")
        );
        // A table may have a timing of its own.
        let c = with(
            "interval_s = 3600\n[verify.table.\"public.orders\"]\nschedule = \"*/15 * * * *\"",
        );
        c.validate().unwrap();
        assert_eq!(
            c.verify.unwrap().table["public.orders"].schedule.as_deref(),
            Some("*/15 * * * *")
        );
        for (verify, says) in [
            ("", "needs interval_s"),
            ("interval_s = 60\nschedule = \"* * * * *\"", "not both"),
            (
                "schedule = \"61 * * * *\"",
                "verify.schedule: 61 in the minute field is outside 0–59",
            ),
            ("schedule = \"daily\"", "has 1 fields"),
            (
                "interval_s = 60\n[verify.table.\"public.orders\"]\nschedule = \"61 * * * *\"",
                "verify.table.\"public.orders\".schedule:",
            ),
            (
                "interval_s = 60\n[verify.table.\"public.orders\"]\nfirst_after_s = 5",
                "[verify.table.\"public.orders\"] needs interval_s",
            ),
            (
                "interval_s = 60\n[verify.table.\"public.order\"]\ninterval_s = 60",
                "[verify.table.\"public.order\"] names no captured table",
            ),
        ] {
            let problems = with(verify).validate().unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(says)),
                "{verify}: {problems:?}"
            );
        }
    }

    #[test]
    fn topics_carry_the_source_and_two_sources_sharing_one_are_refused() {
        // Two databases with the same table: the default prefixes keep them apart.
        let second = "\n[sources.pg_other]\nkind = \"postgres\"\nurl = \"postgresql://sluice@127.0.0.1/other\"\n\
                      tables = [\"public.orders\"]\nslot = \"s2\"\npublication = \"s2\"\n";
        let c = Config::parse(&format!("{MINIMAL}{second}")).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.router_topics(),
            [
                "sluice.pg_main.public.orders",
                "sluice.pg_other.public.orders"
            ]
        );
        // An existing deployment keeps its names by saying so.
        let kept = MINIMAL.replace("slot = ", "topic_prefix = \"sluice\"\nslot = ");
        let c = Config::parse(&kept).unwrap();
        c.validate().unwrap();
        assert_eq!(c.router_topics(), ["sluice.public.orders"]);
        // Two sources made to share a topic are refused, naming both and the fix.
        let clash = second.replace("slot = ", "topic_prefix = \"sluice\"\nslot = ");
        let problems = Config::parse(&format!("{kept}{clash}"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            problems,
            [
                "sources.pg_main (public.orders) and sources.pg_other (public.orders) would both \
              publish to topic sluice.public.orders; give one of them a topic_prefix of its own \
              (sources.<name>.topic_prefix)"
            ]
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let text = MINIMAL.replace("[router]\n", "[router]\nbatch = { max_rowz = 5 }\n");
        let (path, message) = Config::parse(&text).unwrap_err();
        assert_eq!(path, "router.batch.max_rowz");
        assert!(message.contains("unknown field `max_rowz`"), "{message}");
    }

    #[test]
    fn unknown_key_inside_a_source_is_rejected_with_its_path() {
        let text = MINIMAL.replace("slot = ", "slott = \"x\"\nslot = ");
        let (path, message) = Config::parse(&text).unwrap_err();
        assert!(path.starts_with("sources.pg_main"), "{path}");
        assert!(message.contains("slott"), "{message}");
    }

    #[test]
    fn unknown_kind_names_the_choices() {
        let text = MINIMAL.replace(
            "kind = \"postgres\"\nurl = \"postgresql://sluice@127.0.0.1/shop\"",
            "kind = \"oracle\"\nurl = \"x\"",
        );
        let (path, message) = Config::parse(&text).unwrap_err();
        assert!(path.starts_with("sources.pg_main"), "{path}");
        assert!(
            message.contains("oracle") && message.contains("postgres"),
            "{message}"
        );
    }

    #[test]
    fn schemas_section_is_validated_with_the_field_and_the_choices() {
        let text = format!(
            "{MINIMAL}\n[schemas]\ncompatibility = \"sideways\"\n\
             [schemas.compatibility_overrides]\n\"orders\" = \"none\"\n\"public.x\" = \"fully\"\n\
             [schemas.registry]\nurl = \"registry:8081\"\n"
        );
        let problems = Config::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!(
            problems,
            [
                "schemas.compatibility: unknown compatibility \"sideways\"; expected one of backward, \
                 backward_transitive, forward, forward_transitive, full, full_transitive, none",
                "schemas.compatibility_overrides: \"orders\" is not a \"schema.table\" name",
                "schemas.compatibility_overrides.\"public.x\": unknown compatibility \"fully\"; \
                 expected one of backward, backward_transitive, forward, forward_transitive, full, \
                 full_transitive, none",
                "schemas.registry.url must start with http:// or https:// (got \"registry:8081\")",
            ]
        );
        let ok = format!("{MINIMAL}\n[schemas]\ncompatibility = \"FULL_TRANSITIVE\"\n");
        let config = Config::parse(&ok).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.schemas.policy().default,
            sluice_schemas::compat::Compatibility::FullTransitive
        );
    }

    #[test]
    fn a_config_without_kafka_runs_in_local_mode_and_says_what_does_not_fit() {
        let kafka = Config::parse(MINIMAL).unwrap();
        assert_eq!(kafka.mode(), Mode::Kafka);
        let start = MINIMAL.find("[kafka]").unwrap();
        let end = start + MINIMAL[start..].find("\n\n").unwrap();
        let local_text = format!("{}{}", &MINIMAL[..start], &MINIMAL[end..]);
        let mut local = Config::parse(&local_text).unwrap();
        assert_eq!(local.mode(), Mode::Local);
        local.validate().unwrap();
        local.dir = PathBuf::from("/etc/sluice");
        assert_eq!(
            local.local_state_dir(),
            PathBuf::from("/etc/sluice/sluice-state")
        );
        assert_eq!(local.kafka.partitions, 1);
        let problems = Config::parse(&format!(
            "{local_text}\n[schemas.registry]\nurl = \"http://r:8081\"\n"
        ))
        .unwrap()
        .validate()
        .unwrap_err()
        .join("\n");
        assert!(
            problems.contains("schemas.registry needs Kafka mode"),
            "{problems}"
        );
        let both = Config::parse(&format!("{MINIMAL}\n[local]\nstate_dir = \"s\"\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .join("\n");
        assert!(both.contains("[local] and [kafka] are both set"), "{both}");
        let also = Config::parse(&MINIMAL.replace(
            "sink = \"warehouse\"",
            "sink = \"warehouse\"\nalso_sinks = [\"other\"]",
        ))
        .unwrap()
        .validate()
        .unwrap_err()
        .join("\n");
        assert!(
            also.contains("router.also_sinks is for local mode"),
            "{also}"
        );
        assert!(
            also.contains("router.also_sinks: \"other\" names no sink"),
            "{also}"
        );
    }

    #[test]
    fn validation_names_field_and_fix() {
        let text = MINIMAL
            .replace(
                "sink = \"warehouse\"",
                "sink = \"nowhere\"\nbatch = { max_rows = 0 }",
            )
            .replace("slot = \"sluice_pg_main\"", "slot = \"Bad-Slot\"");
        let problems = Config::parse(&text).unwrap().validate().unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("router.sink = \"nowhere\" names no sink"),
            "{all}"
        );
        assert!(all.contains("router.batch.max_rows must be > 0"), "{all}");
        assert!(all.contains("sources.pg_main.slot must be"), "{all}");
    }

    #[test]
    fn a_mysql_signal_table_must_be_a_table_of_its_own() {
        let with = |signal_table: &str| {
            let text = MINIMAL.replace(
                "[sinks.warehouse]",
                &format!(
                    "[sources.shop]\nkind = \"mysql\"\nurl = \"mysql://sluice@127.0.0.1\"\n\
                     tables = [\"shop.orders\"]\nserver_id = 5401\nsignal_table = \"{signal_table}\"\n\n\
                     [sinks.warehouse]"
                ),
            );
            Config::parse(&text)
                .unwrap()
                .validate()
                .err()
                .unwrap_or_default()
                .join("\n")
        };
        assert_eq!(with("shop.sluice_signal"), "");
        assert!(
            with("sluice_signal").contains(
                "sources.shop.signal_table: `sluice_signal` is not of the form database.table"
            ),
            "{}",
            with("sluice_signal")
        );
        assert!(
            with("shop.orders")
                .contains("sources.shop.signal_table: `shop.orders` is a captured table"),
            "{}",
            with("shop.orders")
        );
    }
}
