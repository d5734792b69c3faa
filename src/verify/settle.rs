//! When a row that differs is a difference, and when it is still in flight.
//!
//! Writes go on while verify reads, so a row may differ only because the pipeline has not
//! applied its latest change yet. Verify knows where the pipeline is, so it decides by
//! position, not by waiting some time (for a PostgreSQL source):
//!
//! 1. It reads the suspected rows at the source — each row's hash and its version (`xmin`) —
//!    and then the source's WAL position `L`: every change that read saw committed before `L`.
//!    It writes a heartbeat into the source (a logical-decoding message capture confirms), so
//!    that an idle source's capture confirms a position past `L` at once.
//! 2. It waits until the sink has applied everything of the source up to `L`
//!    ([`Pipeline::reached`]): capture's slot has confirmed `L` — in local mode a position is
//!    confirmed only once the sink committed it; in Kafka mode it is then in Kafka, and the
//!    sink's recorded offsets must also reach the table topic's end offsets, read after that.
//!    A stopped capture confirms nothing, so its slot is read instead: when no change of the
//!    table is pending in it up to `L`, the slot is past the table.
//! 3. It reads the rows at the sink. A row now equal was in flight and has *caught up*.
//! 4. A row still different is read again at the source: if its version has not changed since
//!    step 1, the sink — at or past `L`, and read before this read — should hold exactly that
//!    version, so the row is a *difference*. A row the source does not have at all has no
//!    version, so that it was not inserted and deleted again in between is made sure by a
//!    second round. A row whose version changed is read again from step 2.
//!
//! What is not settled when `settle` runs out — the pipeline had not reached the position, or
//! a row kept changing — is *in flight*: neither equal nor a difference, and said so.
//!
//! A MySQL/MariaDB source is followed by binlog position: `L` is the binlog's end after the
//! read, capture's position the one its state record holds (written every second, once
//! delivered), and where that is behind `L` the binlog between is read once for a change of
//! the table. Its rows have no version, so the row's hash stands in for it, and a row is a
//! difference only after a second round: the sink, past a position read after the source read
//! again, still differs from the unchanged row. (One round would call a row changed and changed
//! back meanwhile different while the sink held the middle value; now only a row flipping back
//! and forth in step with verify's rounds could be.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::Queryable;
use sluice_capture::mysql::BinlogPosition;
use sluice_capture::postgres::source::HEARTBEAT_PREFIX;
use sluice_schemas::TableId;

use super::{quote, Difference};

/// A source read: key text → (row hash, row version).
pub(super) type SourceRows = BTreeMap<String, (String, String)>;
/// A sink read: key text → row hash.
pub(super) type SinkRows = BTreeMap<String, String>;

/// The version of a row the source does not have.
const ABSENT: &str = "absent";

/// The rounds a decision can take (a row only the sink has: three), which run even when the
/// settle time has passed.
const ROUNDS: u32 = 3;

/// How long a round may wait for a running pipeline past the settle time (capture confirms
/// its position every `status_interval_ms`, 1 s by default).
const GRACE: Duration = Duration::from_secs(5);

/// How long reading a stopped capture's slot may take.
const PEEK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a source's changes go, as verify follows them.
pub(super) struct Pipeline {
    pub capture: Capture,
    /// Kafka mode: the brokers, and the table's topic.
    pub kafka: Option<(rdkafka::ClientConfig, String)>,
}

/// The source's capture, and how its progress is read.
pub(super) enum Capture {
    /// Its replication slot, and its publication (a stopped capture's slot is read through
    /// it).
    Postgres {
        slot: String,
        publication: String,
    },
    Mysql(Box<MysqlCapture>),
}

/// A MySQL/MariaDB source's capture: its position is in its state record.
pub(super) struct MysqlCapture {
    pub name: String,
    pub config: sluice_capture::mysql::MysqlSourceConfig,
    pub password: Option<String>,
    pub transport: Arc<sluice_connect::transport::Transport>,
    pub state_topic: String,
}

/// A source position a read was made before.
enum Mark {
    Lsn(String),
    Binlog(BinlogPosition),
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mark::Lsn(lsn) => f.write_str(lsn),
            Mark::Binlog(at) => at.fmt(f),
        }
    }
}

/// The sink's record of what it applied (`sluice_offsets`).
pub(super) enum Offsets<'a> {
    Postgres(&'a tokio_postgres::Client),
    Mysql(&'a mysql_async::Pool),
}

/// A pipeline and the connections to follow it with, for one table.
pub(super) struct Watch<'a> {
    pub pipeline: &'a Pipeline,
    /// A PostgreSQL source's connection (a MySQL/MariaDB one is opened when needed).
    pub source: Option<&'a tokio_postgres::Client>,
    pub sink: Offsets<'a>,
    /// The table at the source now: quoted and qualified (PostgreSQL), or as configured.
    pub relation: String,
    pub table: &'a TableId,
}

impl Pipeline {
    /// The slot a PostgreSQL source's capture takes repair signals on.
    pub fn slot(&self) -> Option<&str> {
        match &self.capture {
            Capture::Postgres { slot, .. } => Some(slot),
            Capture::Mysql(_) => None,
        }
    }

    /// The source's position after a read: every change the read saw was committed before it.
    /// At a PostgreSQL source, then a heartbeat, so capture confirms a position past it soon.
    async fn mark(&self, watch: &Watch<'_>) -> anyhow::Result<Mark> {
        let source = match (&self.capture, watch.source) {
            (Capture::Mysql(m), _) => {
                let at =
                    sluice_capture::mysql::binlog_now(&m.name, &m.config, m.password.as_deref())
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("reading the source's binlog position: {e}")
                        })?;
                return Ok(Mark::Binlog(at));
            }
            (Capture::Postgres { .. }, Some(source)) => source,
            (Capture::Postgres { .. }, None) => anyhow::bail!("no connection to the source"),
        };
        let row = source
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                   ELSE pg_current_wal_insert_lsn() END::text, pg_is_in_recovery()",
                &[],
            )
            .await
            .context("reading the source's WAL position")?;
        let (lsn, standby): (String, bool) = (row.get(0), row.get(1));
        if !standby {
            let sql = format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT_PREFIX}', '')");
            if let Err(e) = source.simple_query(&sql).await {
                // (Capture's own heartbeats come every `heartbeat_interval_ms`.)
                tracing::debug!(error = %e, "verify cannot write a heartbeat into the source");
            }
        }
        Ok(Mark::Lsn(lsn))
    }

    /// Waits until the sink has applied every change of the source committed before `mark`,
    /// or `deadline`: `None` once it has, else why not.
    async fn reached(
        &self,
        watch: &Watch<'_>,
        mark: &Mark,
        mut deadline: Instant,
    ) -> anyhow::Result<Option<String>> {
        // A running capture confirms a position within a status interval: that long it gets,
        // whatever is left of the settle time.
        let grace = Instant::now() + GRACE;
        let mut capture_passed = false;
        let mut follow = Follow::default();
        let mut ends: Option<Vec<(i32, i64, i64)>> = None;
        loop {
            if !capture_passed {
                match self.captured(watch, mark, &mut follow).await? {
                    Ok(()) => capture_passed = true,
                    Err(why) => {
                        if follow.running {
                            deadline = deadline.max(grace);
                        }
                        if Instant::now() >= deadline {
                            return Ok(Some(why));
                        }
                    }
                }
            }
            if capture_passed {
                let Some((client, topic)) = &self.kafka else {
                    // Local mode: a position is confirmed once the sink committed it.
                    return Ok(None);
                };
                // Read once capture is past: everything up to `mark` is in Kafka by then.
                if ends.is_none() {
                    ends = Some(end_offsets(client.clone(), topic.clone()).await?);
                }
                let applied = applied_offsets(&watch.sink, topic).await?;
                let behind: Vec<String> = ends
                    .iter()
                    .flatten()
                    .filter(|(p, low, high)| {
                        low < high && applied.get(p).is_none_or(|at| at + 1 < *high)
                    })
                    .map(|(p, _, high)| {
                        format!(
                            "{topic}[{p}] applied up to offset {}, ends at {high}",
                            applied.get(p).copied().unwrap_or(-1)
                        )
                    })
                    .collect();
                if behind.is_empty() {
                    return Ok(None);
                }
                if Instant::now() >= deadline {
                    return Ok(Some(format!(
                        "the sink has not applied the table's topic up to the rows' position: {}",
                        behind.join(", ")
                    )));
                }
            }
            tokio::time::sleep(match self.capture {
                Capture::Postgres { .. } => Duration::from_millis(200),
                // (Its state record is written every second at most.)
                Capture::Mysql(_) => Duration::from_secs(1),
            })
            .await;
        }
    }

    /// Whether capture has delivered everything of the table before `mark`: `Err(why)` when
    /// not (yet).
    async fn captured(
        &self,
        watch: &Watch<'_>,
        mark: &Mark,
        follow: &mut Follow,
    ) -> anyhow::Result<Result<(), String>> {
        match (&self.capture, mark) {
            (Capture::Postgres { slot, .. }, Mark::Lsn(lsn)) => {
                let source = watch.source.context("no connection to the source")?;
                let row = source
                    .query_opt(
                        "SELECT confirmed_flush_lsn >= $2::text::pg_lsn, active, \
                           coalesce(confirmed_flush_lsn::text, '') \
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot, lsn],
                    )
                    .await
                    .context("reading capture's slot")?;
                let Some(row) = row else {
                    // No capture has run: nothing is on its way through it.
                    if !follow.peeked {
                        follow.peeked = true;
                        tracing::warn!(slot, "the source has no such slot: capture has not run, so no change is in flight through it (is sources.<name>.slot the one capture uses?)");
                    }
                    return Ok(Ok(()));
                };
                let (confirmed, active, at): (Option<bool>, bool, String) =
                    (row.get(0), row.get(1), row.get(2));
                follow.running = active;
                if confirmed == Some(true) {
                    return Ok(Ok(()));
                }
                if !active && !follow.peeked {
                    follow.peeked = true;
                    let pending = self.pending(watch, lsn).await?;
                    tracing::debug!(slot, confirmed = %at, %lsn, pending, "capture is not running: its slot read for the table's changes");
                    if !pending {
                        return Ok(Ok(()));
                    }
                }
                Ok(Err(format!(
                    "capture's slot {slot:?} has confirmed up to {at}, the rows were read at {lsn}{}",
                    if active {
                        ""
                    } else {
                        " (capture is not running, and changes of the table wait in the slot)"
                    }
                )))
            }
            (Capture::Mysql(m), Mark::Binlog(at)) => {
                let confirmed =
                    sluice_capture::mysql::confirmed(&m.transport, &m.state_topic, &m.name)
                        .await
                        .map_err(|e| anyhow::anyhow!("reading capture's state record: {e}"))?;
                let Some(confirmed) = confirmed else {
                    if !follow.peeked {
                        follow.peeked = true;
                        tracing::warn!(source = %m.name, "capture of this source has recorded no position: it has not run, so no change is in flight through it");
                    }
                    return Ok(Ok(()));
                };
                // Whether capture runs is not known from here: it records its position every
                // second, so a wait gets two of those at least.
                follow.running = true;
                if confirmed.reached(at) {
                    return Ok(Ok(()));
                }
                // What lies between is read from the binlog once (capture may be stopped, or
                // the rest be other tables' changes and events no checkpoint marks).
                if !follow.peeked {
                    follow.peeked = true;
                    let pending = match sluice_capture::mysql::changes_between(
                        &m.name,
                        &m.config,
                        m.password.as_deref(),
                        (&confirmed, at),
                        watch.table,
                    )
                    .await
                    {
                        Ok(pending) => pending,
                        Err(e) => {
                            // Taken as pending: its rows are reported in flight, not settled.
                            tracing::warn!(source = %m.name, error = %e, "cannot read the source's binlog events (SHOW BINLOG EVENTS needs REPLICATION SLAVE, on MariaDB BINLOG MONITOR), so the rows capture has not confirmed stay in flight");
                            true
                        }
                    };
                    tracing::debug!(source = %m.name, %confirmed, %at, pending, "the binlog read for the table's changes");
                    if !pending {
                        return Ok(Ok(()));
                    }
                }
                Ok(Err(format!(
                    "capture of {} has confirmed up to {confirmed}, the rows were read at {at}, and the binlog between has changes of the table",
                    m.name
                )))
            }
            _ => anyhow::bail!("a position of another kind of source"),
        }
    }

    /// Whether a change of the table waits in the (inactive) slot before `lsn`: the slot's
    /// pending changes are decoded by the server (peeked, not consumed) and filtered there by
    /// the table's relation (and its partitions'); a truncate of any table counts.
    async fn pending(&self, watch: &Watch<'_>, lsn: &str) -> anyhow::Result<bool> {
        let Capture::Postgres { slot, publication } = &self.capture else {
            return Ok(true);
        };
        let client = watch.source.context("no connection to the source")?;
        client.batch_execute("BEGIN").await?;
        let result = async {
            client
                .batch_execute(&format!("SET LOCAL statement_timeout = {}", PEEK_TIMEOUT.as_millis()))
                .await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, \
                       NULL, 'proto_version', '1', 'publication_names', $3) \
                     WHERE get_byte(data, 0) = 84 \
                        OR (get_byte(data, 0) IN (73, 85, 68) AND substring(data FROM 2 FOR 4) IN \
                            (SELECT int4send(r::oid::int4) FROM (SELECT $4::text::regclass AS r \
                               UNION SELECT relid FROM pg_partition_tree($4::text::regclass)) t))",
                    &[slot, &lsn, &quote(publication), &watch.relation],
                )
                .await?;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        }
        .await;
        client.batch_execute("COMMIT").await?;
        match result {
            Ok(n) => {
                tracing::debug!(slot, relation = %watch.relation, changes = n, "changes of the table pending in the slot");
                Ok(n > 0)
            }
            Err(e) => {
                // Taken as pending: its rows are reported in flight, not settled. (A capture
                // starting meanwhile finds the slot busy for a moment, and retries.)
                tracing::warn!(slot, error = %e, "cannot read capture's stopped slot (pg_logical_slot_peek_binary_changes needs the REPLICATION attribute), so the rows it has not confirmed stay in flight");
                Ok(true)
            }
        }
    }
}

/// What one wait learned about capture.
#[derive(Default)]
struct Follow {
    /// Capture may be running (its slot is held; a MySQL/MariaDB capture: always).
    running: bool,
    /// What lies between capture's position and the read's was looked at.
    peeked: bool,
}

/// `(partition, low, high)` of each partition of `topic` (none when it does not exist).
async fn end_offsets(
    client: rdkafka::ClientConfig,
    topic: String,
) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create().context("connecting to Kafka")?;
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .with_context(|| format!("reading {topic}'s partitions"))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(Vec::new());
        };
        if t.error().is_some() {
            return Ok(Vec::new());
        }
        t.partitions()
            .iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p.id(), timeout)
                    .with_context(|| format!("reading {topic}[{}]'s end offset", p.id()))?;
                Ok((p.id(), low, high))
            })
            .collect()
    })
    .await?
}

/// Per partition of `topic`, the last offset the sink recorded as applied (by any router).
async fn applied_offsets(sink: &Offsets<'_>, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    Ok(match sink {
        Offsets::Postgres(client) => {
            let table = sluice_sinks::postgres::OFFSETS_TABLE;
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await?
                .get(0);
            if !exists {
                return Ok(BTreeMap::new());
            }
            client
                .query(
                    &format!(
                        "SELECT kafka_partition, max(kafka_offset) FROM {table} \
                         WHERE topic = $1 GROUP BY 1"
                    ),
                    &[&topic],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
        Offsets::Mysql(pool) => {
            let mut conn = pool.get_conn().await?;
            let table = sluice_sinks::mysql::OFFSETS_TABLE;
            match conn
                .exec::<(i32, i64), _, _>(
                    format!(
                        "SELECT kafka_partition, MAX(kafka_offset) FROM {table} \
                         WHERE topic = ? GROUP BY kafka_partition"
                    ),
                    (topic,),
                )
                .await
            {
                Ok(rows) => rows.into_iter().collect(),
                // (ER_NO_SUCH_TABLE: the sink has applied nothing yet.)
                Err(mysql_async::Error::Server(e)) if e.code == 1146 => BTreeMap::new(),
                Err(e) => return Err(e.into()),
            }
        }
    })
}

/// What settling found.
#[derive(Debug, Default)]
pub(super) struct Settled {
    pub differences: Vec<Difference>,
    /// Still moving when `settle` ran out, as they differed when last read.
    pub in_flight: Vec<Difference>,
    /// Differed at first, then became equal.
    pub caught_up: u64,
}

/// One suspected row.
struct Suspect {
    /// How it differed when last read.
    seen: Difference,
    /// Its hash at the sink when last read (`Some(None)`: the sink lacked it).
    at_sink: Option<Option<String>>,
    /// The source's version of it when the sink — past that read's position — differed.
    version: Option<String>,
    /// Rounds in a row that found it so.
    rounds: u32,
}

/// The suspects being settled (see the module's doc).
struct Settling {
    pending: BTreeMap<String, Suspect>,
    done: Settled,
    /// The source's rows carry versions (PostgreSQL's `xmin`); without (MySQL/MariaDB: the
    /// hash stands in), every row needs two rounds, as one the source lacks does.
    versioned: bool,
}

impl Settling {
    fn new(suspects: Vec<Difference>, versioned: bool) -> Settling {
        Settling {
            versioned,
            pending: suspects
                .into_iter()
                .map(|d| {
                    (
                        d.key().to_string(),
                        Suspect {
                            seen: d,
                            at_sink: None,
                            version: None,
                            rounds: 0,
                        },
                    )
                })
                .collect(),
            done: Settled::default(),
        }
    }

    fn keys(&self) -> Vec<String> {
        self.pending.keys().cloned().collect()
    }

    /// A new read of the source: a row now as the sink held it has caught up (the sink had a
    /// later version than the previous read); a row whose version is the one the sink
    /// differed from is a difference (one the source lacks, the second round in a row that
    /// finds so).
    fn source_read(&mut self, source: &SourceRows) {
        let done = &mut self.done;
        let versioned = self.versioned;
        self.pending.retain(|key, s| {
            if let Some(at_sink) = &s.at_sink {
                if source.get(key).map(|(h, _)| h) == at_sink.as_ref() {
                    done.caught_up += 1;
                    return false;
                }
            }
            let Some(version) = &s.version else {
                return true;
            };
            let now = source.get(key).map_or(ABSENT, |(_, v)| v.as_str());
            if now != version {
                s.version = None;
                s.rounds = 0;
                return true;
            }
            if (now == ABSENT || !versioned) && s.rounds < 2 {
                return true;
            }
            done.differences.push(s.seen.clone());
            false
        });
    }

    /// The sink, read after it passed the position of the `source` read (or, unfollowed,
    /// right after it): equal rows have caught up; the others are noted with the source's
    /// version.
    fn sink_read(&mut self, source: &SourceRows, sink: &SinkRows) {
        let done = &mut self.done;
        self.pending.retain(|key, s| {
            let at_source = source.get(key);
            let seen = match (at_source, sink.get(key)) {
                (Some((a, _)), Some(b)) if a == b => None,
                (None, None) => None,
                (Some(_), Some(_)) => Some(Difference::Differing(key.clone())),
                (Some(_), None) => Some(Difference::Missing(key.clone())),
                (None, Some(_)) => Some(Difference::Extra(key.clone())),
            };
            let Some(seen) = seen else {
                done.caught_up += 1;
                return false;
            };
            s.at_sink = Some(sink.get(key).cloned());
            let version = at_source.map_or(ABSENT, |(_, v)| v.as_str()).to_string();
            if s.version.as_ref() == Some(&version) {
                s.rounds += 1;
            } else {
                s.version = Some(version);
                s.rounds = 1;
            }
            s.seen = seen;
            true
        });
    }

    /// What is not settled is in flight.
    fn finish(mut self) -> Settled {
        let left = std::mem::take(&mut self.pending)
            .into_values()
            .map(|s| s.seen);
        self.done.in_flight.extend(left);
        self.done
    }
}

/// Reads the suspected rows again, at one side or the other.
pub(super) trait Sides {
    async fn source(&mut self, keys: &[String]) -> anyhow::Result<SourceRows>;
    async fn sink(&mut self, keys: &[String]) -> anyhow::Result<SinkRows>;
}

/// Settles `suspects` (see the module's doc), following `watch`'s pipeline; `wait` in all.
/// `first` is a source read just made (with versions), which the first round uses rather than
/// reading again.
pub(super) async fn settle(
    (suspects, mut first): (Vec<Difference>, Option<SourceRows>),
    wait: Duration,
    watch: &Watch<'_>,
    sides: &mut impl Sides,
) -> anyhow::Result<Settled> {
    let versioned = matches!(watch.pipeline.capture, Capture::Postgres { .. });
    let mut s = Settling::new(suspects, versioned);
    let deadline = Instant::now() + wait;
    let mut why = None;
    let mut round = 0u32;
    while !s.pending.is_empty() {
        let keys = s.keys();
        let source = match first.take() {
            Some(read) => read,
            None => sides.source(&keys).await?,
        };
        s.source_read(&source);
        if s.pending.is_empty() {
            break;
        }
        round += 1;
        if round > ROUNDS && Instant::now() >= deadline {
            why = Some("their rows kept changing at the source".to_string());
            break;
        }
        let mark = watch.pipeline.mark(watch).await?;
        if let Some(behind) = watch.pipeline.reached(watch, &mark, deadline).await? {
            why = Some(behind);
            break;
        }
        let sink = sides.sink(&keys).await?;
        s.sink_read(&source, &sink);
    }
    let settled = s.finish();
    if let (Some(why), false) = (why, settled.in_flight.is_empty()) {
        tracing::warn!(table = %watch.relation, rows = settled.in_flight.len(), "rows still in flight after the settle time: {why}");
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(rows: &[(&str, &str, &str)]) -> SourceRows {
        rows.iter()
            .map(|(k, h, v)| (k.to_string(), (h.to_string(), v.to_string())))
            .collect()
    }

    fn sink(rows: &[(&str, &str)]) -> SinkRows {
        rows.iter()
            .map(|(k, h)| (k.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn a_row_the_sink_differs_from_is_a_difference_only_once_its_source_version_held_still() {
        let mut s = Settling::new(
            vec![
                Difference::Differing("(1)".into()),
                Difference::Missing("(2)".into()),
                Difference::Differing("(3)".into()),
                Difference::Extra("(4)".into()),
            ],
            true,
        );
        // Round 1: the sink, past the source read, has caught up with (2) only.
        let read = source(&[("(1)", "a", "x1"), ("(2)", "b", "x2"), ("(3)", "c", "x3")]);
        s.source_read(&read);
        s.sink_read(
            &read,
            &sink(&[("(1)", "z"), ("(2)", "b"), ("(3)", "z"), ("(4)", "q")]),
        );
        assert_eq!(s.done.caught_up, 1);
        assert_eq!(s.keys(), ["(1)", "(3)", "(4)"]);
        // Round 2: (1) held still, so it is a difference; (3) moved, so it is read again; (4) is
        // absent a first time only.
        let read = source(&[("(1)", "a", "x1"), ("(3)", "d", "x9")]);
        s.source_read(&read);
        assert_eq!(s.done.differences, [Difference::Differing("(1)".into())]);
        s.sink_read(&read, &sink(&[("(3)", "d"), ("(4)", "q")]));
        assert_eq!(s.done.caught_up, 2);
        // Round 3: the row only the sink has is still absent at the source: a difference.
        s.source_read(&source(&[]));
        let settled = s.finish();
        assert_eq!(
            settled.differences,
            [
                Difference::Differing("(1)".into()),
                Difference::Extra("(4)".into())
            ]
        );
        assert!(settled.in_flight.is_empty());
    }

    #[test]
    fn a_row_the_sink_holds_as_the_source_later_has_it_has_caught_up() {
        // The sink, past the first read, already had the row's next version (and had applied
        // a delete the first read did not see yet).
        let mut s = Settling::new(
            vec![
                Difference::Differing("(1)".into()),
                Difference::Differing("(2)".into()),
            ],
            true,
        );
        let read = source(&[("(1)", "a", "x1"), ("(2)", "b", "x2")]);
        s.sink_read(&read, &sink(&[("(1)", "a2")]));
        s.source_read(&source(&[("(1)", "a2", "x5")]));
        assert_eq!(s.done.caught_up, 2);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn without_versions_a_row_changed_and_changed_back_is_read_again_not_called_different() {
        // A MySQL/MariaDB source: the hash is the version.
        let mut s = Settling::new(
            vec![
                Difference::Differing("(1)".into()),
                Difference::Differing("(2)".into()),
            ],
            false,
        );
        // Round 1: the sink, past the read, holds another value for both: (1) went a → b → a
        // at the source meanwhile (the sink applied b, not yet the change back); (2) differs.
        let read = source(&[("(1)", "a", "a"), ("(2)", "c", "c")]);
        s.source_read(&read);
        s.sink_read(&read, &sink(&[("(1)", "b"), ("(2)", "z")]));
        // Round 2: both read as before, neither is called different yet; past the new read's
        // position the sink holds (1) as the source does.
        s.source_read(&read);
        assert!(s.done.differences.is_empty());
        s.sink_read(&read, &sink(&[("(1)", "a"), ("(2)", "z")]));
        assert_eq!(s.done.caught_up, 1);
        // Round 3: (2), unchanged at the source and still different at the sink, is.
        s.source_read(&read);
        assert_eq!(s.done.differences, [Difference::Differing("(2)".into())]);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn what_is_not_settled_is_in_flight() {
        let read = source(&[("(1)", "a", "x1")]);
        let mut s = Settling::new(vec![Difference::Missing("(1)".into())], true);
        s.source_read(&read);
        s.sink_read(&read, &sink(&[]));
        let settled = s.finish();
        assert_eq!(settled.in_flight, [Difference::Missing("(1)".into())]);
        assert!(settled.differences.is_empty());
    }
}
