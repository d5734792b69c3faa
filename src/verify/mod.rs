//! `sluice verify`: is each sink table equal to its source table, row by row?
//!
//! Both sides are read at once and compared inside the databases: every row's key text is hashed
//! into one of `buckets` (about `rows / bucket_rows`), and each side returns per bucket its row
//! count and the sum of its rows' hashes — one scan and a few numbers per bucket. Only the
//! buckets that differ are read row by row (key and row hash), all in one more scan of each
//! side, so an equal table costs a scan of each side and almost no transfer. Hashes are
//! PostgreSQL's `hashtextextended` (64 bits, the hash partitioning uses, stable across servers
//! and majors) of the key's and the row's text forms, which are the same on both sides when the
//! sink holds the source's types.
//!
//! Writes may go on meanwhile: a row that differs is read again on both sides after a pause, up
//! to `settle` in all; one that became equal was in flight (the pipeline had not applied it
//! yet) and is not a difference.
//!
//! With `repair`, the rows that still differ are sent through the pipeline again: verify
//! signals the source's capture (a logical-decoding message, see
//! `capture/src/postgres/reread.rs`), which reads those rows between two watermarks and
//! publishes them as reads (deletes for keys the source no longer has) at a source position of
//! their own, so the sink's exactly-once rules hold while writes go on; verify then waits for
//! them to become equal.
//!
//! A table the router writes through a mapping scheme is compared through that scheme
//! (`mapped.rs`): the source's rows are mapped in Sluice as the router maps them, and hashed
//! there rather than in SQL.
//!
//! Across engines a table is compared the same way, through its identity scheme when it has
//! none: a MySQL/MariaDB source's rows are read as capture's snapshot reads them, a
//! MySQL/MariaDB sink's values back as the MySQL sink wrote them (`mapped::mysql_datum`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use sluice_capture::postgres::names;
use sluice_capture::postgres::state::CaptureState;
use sluice_capture::tls::PgConnector;
use sluice_schemas::scheme::Scheme;
use sluice_schemas::TableId;

use crate::config::{Config, SinkConfig, SourceConfig};

mod mapped;
mod progress;
mod settle;

pub use progress::{Progress, TableProgress};

/// How `sluice verify` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only these tables (`schema.table`, as configured at the source); all when empty.
    pub tables: Vec<String>,
    /// About how many rows a bucket holds.
    pub bucket_rows: u64,
    /// How long a differing row may take to settle (writes still in flight).
    pub settle: Duration,
    /// Tables compared at once.
    pub parallel: usize,
    /// What to do about the rows that differ.
    pub repair: Repair,
    /// How long repaired rows may take to arrive at the sink.
    pub repair_wait: Duration,
    /// At most this many rows a second read from each database for each table compared (a
    /// busy production database); none by default.
    pub max_rows_per_second: Option<u64>,
    /// Drawn on a terminal (`Progress::on_terminal`); off by default.
    pub progress: Progress,
}

/// `--repair` and `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    /// Report the differences only.
    #[default]
    No,
    /// Say what a repair would send, and send nothing.
    DryRun,
    /// Send the differing rows through the pipeline again and wait for them.
    Yes,
}

/// What a repair did (or, in a dry run, would do) for one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Rows asked to be read again at the source (missing or differing at the sink).
    pub reread: u64,
    /// Keys only the sink has, asked to be deleted.
    pub delete: u64,
    /// Differences gone once the repair arrived.
    pub repaired: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tables: Vec::new(),
            bucket_rows: 1_000,
            settle: Duration::from_secs(10),
            parallel: 1,
            repair: Repair::No,
            repair_wait: Duration::from_secs(120),
            max_rows_per_second: None,
            progress: Progress::default(),
        }
    }
}

/// Keeps a reader at or below a rate: [`Pace::rows`] sleeps whenever the rows read so far came
/// faster than `per_second`.
pub(crate) struct Pace {
    per_second: Option<u64>,
    started: Instant,
    rows: u64,
}

impl Pace {
    pub fn new(per_second: Option<u64>) -> Pace {
        Pace {
            per_second: per_second.filter(|r| *r > 0),
            started: Instant::now(),
            rows: 0,
        }
    }

    /// How long to wait after `rows` more rows, at `elapsed` since the start.
    fn due(&mut self, rows: u64, elapsed: Duration) -> Duration {
        self.rows += rows;
        match self.per_second {
            Some(rate) => {
                Duration::from_secs_f64(self.rows as f64 / rate as f64).saturating_sub(elapsed)
            }
            None => Duration::ZERO,
        }
    }

    /// Counts `rows` read; waits while they came too fast.
    pub async fn rows(&mut self, rows: u64) {
        let wait = self.pause(rows);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Counts `rows` read; how long the reader must pause (for a reader that pauses itself).
    pub fn pause(&mut self, rows: u64) -> Duration {
        self.due(rows, self.started.elapsed())
    }

    pub fn limited(&self) -> bool {
        self.per_second.is_some()
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn a_table_with_a_timing_of_its_own_runs_apart_and_the_rest_keep_verifys() {
        let config = |verify: &str| {
            Config::parse(&format!(
                "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
                 [sources.pg]\nkind = \"postgres\"\nurl = \"postgresql://s@127.0.0.1/shop\"\n\
                 tables = [\"public.a\", \"public.b\", \"public.c\"]\nslot = \"s\"\npublication = \"s\"\n\
                 [sinks.w]\nkind = \"postgres\"\nurl = \"postgresql://s@127.0.0.1/w\"\n\
                 [router]\nsink = \"w\"\n[verify]\n{verify}\n"
            ))
            .unwrap()
        };
        let runs = |c: &Config| -> Vec<(String, Vec<String>)> {
            runs_of(c, c.verify.as_ref().unwrap())
                .into_iter()
                .map(|(run, tables, _)| (run, tables))
                .collect()
        };
        let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        // None of its own: one run of every table ([] is all).
        assert_eq!(
            runs(&config("interval_s = 60")),
            [("default".to_string(), s(&[]))]
        );
        // One of its own: it runs apart, the others together.
        let c = config("schedule = \"0 3 * * *\"\n[verify.table.\"public.b\"]\ninterval_s = 300");
        assert_eq!(
            runs(&c),
            [
                ("public.b".to_string(), s(&["public.b"])),
                ("default".to_string(), s(&["public.a", "public.c"]))
            ]
        );
        assert_eq!(
            runs_of(&c, c.verify.as_ref().unwrap())[0].2.interval_s,
            Some(300)
        );
        // With `tables`, the rest are among them; every one with its own: no default run.
        let c = config(
            "interval_s = 60\ntables = [\"public.a\"]\n[verify.table.\"public.a\"]\ninterval_s = 5",
        );
        assert_eq!(runs(&c), [("public.a".to_string(), s(&["public.a"]))]);
    }
}

#[cfg(test)]
mod pace_tests {
    use super::*;

    #[test]
    fn a_pace_waits_only_when_rows_come_faster_than_its_rate() {
        let mut pace = Pace::new(Some(1_000));
        // 500 rows in 0.1 s: due at 0.5 s.
        assert_eq!(
            pace.due(500, Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        // 500 more at 1.5 s: late already.
        assert_eq!(pace.due(500, Duration::from_millis(1_500)), Duration::ZERO);
        let mut free = Pace::new(None);
        assert!(!free.limited());
        assert_eq!(free.due(1_000_000, Duration::ZERO), Duration::ZERO);
        assert!(!Pace::new(Some(0)).limited(), "0 is no limit");
    }

    #[test]
    fn a_read_goes_in_block_ranges_when_paced_or_drawn() {
        let off = Progress::default().table("t");
        assert!(!in_block_ranges(None, &off));
        assert!(!in_block_ranges(Some(0), &off));
        assert!(in_block_ranges(Some(1_000), &off));
        let drawn = Progress::always().table("t");
        assert!(in_block_ranges(None, &drawn));
    }
}

/// What differs for one row, by its key's text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// At the source, not at the sink.
    Missing(String),
    /// At the sink, not at the source.
    Extra(String),
    /// At both, with other values.
    Differing(String),
}

impl Difference {
    pub fn kind(&self) -> &'static str {
        match self {
            Difference::Missing(_) => "missing",
            Difference::Extra(_) => "extra",
            Difference::Differing(_) => "differing",
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Difference::Missing(k) | Difference::Extra(k) | Difference::Differing(k) => k,
        }
    }
}

/// One table's result.
#[derive(Debug, Clone)]
pub struct TableReport {
    pub source: String,
    pub table: TableId,
    /// The sink table it was compared with.
    pub sink_table: String,
    pub source_rows: u64,
    pub sink_rows: u64,
    pub differences: Vec<Difference>,
    /// Rows still moving through the pipeline when the settle time ran out (as they differed
    /// when last read): neither equal nor a difference.
    pub in_flight: Vec<Difference>,
    /// Rows that differed at first and became equal once the pipeline applied them.
    pub caught_up: u64,
    /// Why the table was not compared, when it was not.
    pub not_compared: Option<String>,
    /// What a repair did, when one was asked for and something differed.
    pub repair: Option<RepairReport>,
}

impl TableReport {
    pub fn equal(&self) -> bool {
        self.not_compared.is_none() && self.differences.is_empty() && self.in_flight.is_empty()
    }

    /// `equal`, `different`, `in_flight` (no difference, but rows still moving) or
    /// `not_compared`.
    pub fn status(&self) -> &'static str {
        if self.not_compared.is_some() {
            "not_compared"
        } else if !self.differences.is_empty() {
            "different"
        } else if !self.in_flight.is_empty() {
            "in_flight"
        } else {
            "equal"
        }
    }

    pub fn count(&self, kind: &str) -> usize {
        self.differences.iter().filter(|d| d.kind() == kind).count()
    }

    /// `key=value` summary line.
    pub fn line(&self) -> String {
        if let Some(why) = &self.not_compared {
            return format!(
                "source={} table={} status=not_compared reason={why:?}",
                self.source, self.table
            );
        }
        let first: Vec<String> = self
            .differences
            .iter()
            .take(5)
            .map(|d| format!("{}:{}", d.kind(), d.key()))
            .collect();
        let repair = match &self.repair {
            None => String::new(),
            Some(r) if r.dry_run => format!(" would_reread={} would_delete={}", r.reread, r.delete),
            Some(r) => format!(
                " reread={} deleted={} repaired={}",
                r.reread, r.delete, r.repaired
            ),
        };
        format!(
            "source={} table={} sink_table={} status={} source_rows={} sink_rows={} missing={} extra={} differing={} in_flight={} caught_up={}{repair}{}",
            self.source,
            self.table,
            self.sink_table,
            self.status(),
            self.source_rows,
            self.sink_rows,
            self.count("missing"),
            self.count("extra"),
            self.count("differing"),
            self.in_flight.len(),
            self.caught_up,
            if first.is_empty() {
                String::new()
            } else {
                format!(" first={first:?}")
            }
        )
    }

    /// One JSON line per difference, and per row still in flight (`"kind": "in_flight"`,
    /// with how it differed when last read as `"seen"`).
    pub fn json_lines(&self) -> Vec<String> {
        let line = |kind: &str, d: &Difference| {
            let mut line = serde_json::json!({
                "source": self.source,
                "table": self.table.to_string(),
                "sink_table": self.sink_table,
                "kind": kind,
                "key": d.key(),
            });
            if kind != d.kind() {
                line["seen"] = d.kind().into();
            }
            line.to_string()
        };
        self.differences
            .iter()
            .map(|d| line(d.kind(), d))
            .chain(self.in_flight.iter().map(|d| line("in_flight", d)))
            .collect()
    }
}

/// Verifies every routed table (or those in `options.tables`).
pub async fn verify(config: &Config, options: &Options) -> anyhow::Result<Vec<TableReport>> {
    let router = config
        .router
        .as_ref()
        .context("verify compares sources with the router's sink: the config has no [router]")?;
    let sink = config
        .sinks
        .get(&router.sink)
        .with_context(|| format!("router.sink = \"{}\" names no sink", router.sink))?;
    let schemes = schemes_of(config, &router.sink)?;
    let hmac_key = Config::hmac_key().map_err(anyhow::Error::msg)?;
    // What each table comes to: a report already (not comparable), or a comparison to run.
    let mut jobs: Vec<Job> = Vec::new();
    // Capture's state records: a renamed table is found by the OID they keep.
    let transport = Arc::new(config.transport().map_err(anyhow::Error::msg)?);
    for (name, source) in &config.sources {
        let recorded: Option<Arc<CaptureState>> = match source {
            SourceConfig::Postgres(src) => {
                match CaptureState::load_if_created(&transport, &config.kafka.state_topic, name)
                    .await
                {
                    Ok(s) => s.filter(|s| s.slot == src.slot).map(Arc::new),
                    Err(e) => {
                        tracing::warn!(source = %name, error = %e, "cannot read capture's state record; renamed tables are looked up by their configured names");
                        None
                    }
                }
            }
            SourceConfig::Mysql(_) => None,
        };
        let tables = source.table_ids().map_err(anyhow::Error::msg)?;
        for table in tables {
            if !options.tables.is_empty() && !options.tables.contains(&table.to_string()) {
                continue;
            }
            let not_compared = |why: String| TableReport {
                source: name.clone(),
                table: table.clone(),
                sink_table: String::new(),
                source_rows: 0,
                sink_rows: 0,
                differences: Vec::new(),
                in_flight: Vec::new(),
                caught_up: 0,
                not_compared: Some(why),
                repair: None,
            };
            // How verify follows this table's changes through the pipeline.
            let pipeline = |capture: settle::Capture| {
                Box::new(settle::Pipeline {
                    capture,
                    kafka: (config.mode() == crate::config::Mode::Kafka).then(|| {
                        (
                            config.kafka_client(),
                            table.topic(&config.source_topic_prefix(name)),
                        )
                    }),
                })
            };
            let postgres = |src: &sluice_capture::postgres::source::PostgresSourceConfig| {
                pipeline(settle::Capture::Postgres {
                    slot: src.slot.clone(),
                    publication: src.publication.clone(),
                })
            };
            let source_db = || -> anyhow::Result<SourceDb> {
                Ok(match source {
                    SourceConfig::Postgres(src) => SourceDb::Postgres {
                        db: Box::new(connector(&src.url, &src.tls, "sources", name)?),
                        pipeline: postgres(src),
                        state: recorded.clone(),
                    },
                    SourceConfig::Mysql(src) => SourceDb::Mysql {
                        name: name.clone(),
                        config: Box::new(src.clone()),
                        password: Config::env_password("sources", name),
                        pipeline: pipeline(settle::Capture::Mysql(Box::new(
                            settle::MysqlCapture {
                                name: name.clone(),
                                config: src.clone(),
                                password: Config::env_password("sources", name),
                                transport: transport.clone(),
                                state_topic: config.kafka.state_topic.clone(),
                            },
                        ))),
                    },
                })
            };
            let through: Vec<&Scheme> = schemes.iter().filter(|s| s.source == table).collect();
            // Across engines (a MySQL/MariaDB source or sink) a table is compared through its
            // identity scheme when it has none: values, not their texts.
            let mut plans: Vec<Option<&Scheme>> = through.into_iter().map(Some).collect();
            let across =
                matches!(source, SourceConfig::Mysql(_)) || matches!(sink, SinkConfig::Mysql(_));
            if plans.is_empty() && across {
                plans.push(None);
            }
            if !plans.is_empty() {
                for scheme in plans {
                    let target = scheme.map_or_else(|| table.clone(), |s| s.target_of(&table));
                    let (sink_db, sink_table) = match sink {
                        SinkConfig::Postgres(dst) => (
                            SinkDb::Postgres(Box::new(connector(
                                &dst.url,
                                &dst.tls,
                                "sinks",
                                &router.sink,
                            )?)),
                            match &dst.schema {
                                Some(schema) => TableId::new(schema.clone(), target.name.clone()),
                                None => target,
                            },
                        ),
                        SinkConfig::Mysql(dst) => (
                            SinkDb::Mysql {
                                name: router.sink.clone(),
                                config: Box::new(dst.clone()),
                                password: Config::env_password("sinks", &router.sink),
                            },
                            // As the MySQL sink names it: its `database`, else the source's schema.
                            TableId::new(
                                dst.database
                                    .clone()
                                    .unwrap_or_else(|| target.namespace.clone()),
                                target.name.clone(),
                            ),
                        ),
                    };
                    jobs.push(Job::Mapped {
                        source: source_db()?,
                        scheme: scheme.map(|s| Box::new(s.clone())),
                        hmac_key: hmac_key.clone(),
                        sink_db: Box::new(sink_db),
                        sink_table,
                        base: not_compared(String::new()),
                    });
                }
                continue;
            }
            let SinkConfig::Postgres(dst) = sink else {
                unreachable!("a MySQL/MariaDB sink always has a plan above");
            };
            let SourceConfig::Postgres(src) = source else {
                unreachable!("a MySQL/MariaDB source always has a plan above");
            };
            let sink_table = match &dst.schema {
                Some(schema) => TableId::new(schema.clone(), table.name.clone()),
                None => table.clone(),
            };
            jobs.push(Job::Compare {
                pipeline: postgres(src),
                state: recorded.clone(),
                source_db: Box::new(connector(&src.url, &src.tls, "sources", name)?),
                sink_db: Box::new(connector(&dst.url, &dst.tls, "sinks", &router.sink)?),
                sink_table,
                base: not_compared(String::new()),
            });
        }
    }
    // `options.parallel` tables at once, reported in the configured order.
    let drawing = options.progress.draw();
    let reports = futures::stream::iter(jobs.into_iter().map(|job| async move {
        match job {
            Job::Mapped {
                source,
                scheme,
                hmac_key,
                sink_db,
                sink_table,
                base,
            } => {
                let compared = compare_mapped(
                    (&source, &base.table),
                    (&sink_db, &sink_table),
                    (scheme.as_deref(), hmac_key.as_deref()),
                    options,
                )
                .await;
                finish(base, &sink_table, compared)
            }
            Job::Compare {
                pipeline,
                state,
                source_db,
                sink_db,
                sink_table,
                base,
            } => {
                // A table that cannot be compared (gone, keyless, a sink table without the
                // source's columns, a server that does not answer) is named with why; the
                // others are still compared.
                let compared = compare_table(
                    (&source_db, &base.table, &pipeline, state.as_deref()),
                    (&sink_db, &sink_table),
                    options,
                )
                .await;
                finish(base, &sink_table, compared)
            }
        }
    }))
    .buffered(options.parallel.max(1))
    .collect()
    .await;
    if let Some(drawing) = drawing {
        drawing.abort();
        options.progress.clear();
    }
    Ok(reports)
}

/// A comparison's report under its source and table, or why it could not be made.
fn finish(
    base: TableReport,
    sink_table: &TableId,
    compared: anyhow::Result<TableReport>,
) -> TableReport {
    match compared {
        Ok(report) => TableReport {
            source: base.source,
            table: base.table,
            sink_table: sink_table.to_string(),
            ..report
        },
        Err(e) => TableReport {
            not_compared: Some(format!("{e:#}")),
            ..base
        },
    }
}

/// One table of a verify run.
enum Job {
    /// A table written through a scheme (one job per scheme of it).
    Mapped {
        source: SourceDb,
        /// `None`: the table's identity scheme.
        scheme: Option<Box<Scheme>>,
        hmac_key: Option<Vec<u8>>,
        sink_db: Box<SinkDb>,
        sink_table: TableId,
        base: TableReport,
    },
    Compare {
        /// The source's capture (its slot takes the repair's signal) and where it publishes.
        pipeline: Box<settle::Pipeline>,
        /// Its capture's state record (where a renamed table is now).
        state: Option<Arc<CaptureState>>,
        source_db: Box<PgConnector>,
        sink_db: Box<PgConnector>,
        sink_table: TableId,
        /// The source and table, to report under.
        base: TableReport,
    },
}

/// What a run found in all: `equal`, `in_flight` (no difference, but rows still moving) or
/// `different` (a difference, or a table not compared).
pub fn outcome(reports: &[TableReport]) -> &'static str {
    if reports.iter().all(TableReport::equal) {
        "equal"
    } else if reports
        .iter()
        .all(|r| matches!(r.status(), "equal" | "in_flight"))
    {
        "in_flight"
    } else {
        "different"
    }
}

/// The reports as a table, for a terminal.
pub fn summary(reports: &[TableReport]) -> String {
    let mut rows = vec![[
        "source".to_string(),
        "table".into(),
        "source rows".into(),
        "sink rows".into(),
        "missing".into(),
        "extra".into(),
        "differing".into(),
        "in flight".into(),
        "status".into(),
    ]];
    for r in reports {
        let n = |v: u64| v.to_string();
        rows.push(match &r.not_compared {
            Some(_) => [
                r.source.clone(),
                r.table.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "not compared".into(),
            ],
            None => [
                r.source.clone(),
                r.table.to_string(),
                n(r.source_rows),
                n(r.sink_rows),
                r.count("missing").to_string(),
                r.count("extra").to_string(),
                r.count("differing").to_string(),
                n(r.in_flight.len() as u64),
                r.status().replace('_', " "),
            ],
        });
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if (2..8).contains(&c) {
                    format!("{v:>w$}", w = widths[c])
                } else {
                    format!("{v:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `[verify]`: runs verify every `interval_s` (or at the times of `schedule`) until `shutdown`,
/// and exposes what each run found as `sluice_verify_*` metrics (a run that fails is logged and
/// counted, and tried again after the interval). A table with a timing of its own
/// (`[verify.table."<schema.table>"]`) is verified in runs of its own, at its times.
pub async fn scheduled(
    config: Config,
    settings: crate::config::VerifyConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let options = Options {
        tables: settings.tables.clone(),
        bucket_rows: settings.bucket_rows,
        settle: Duration::from_millis(settings.settle_ms),
        parallel: settings.parallel,
        repair: if settings.repair {
            Repair::Yes
        } else {
            Repair::No
        },
        repair_wait: Duration::from_millis(settings.repair_wait_ms),
        max_rows_per_second: settings.max_rows_per_second,
        progress: Progress::default(),
    };
    let runs = runs_of(&config, &settings);
    futures::future::join_all(runs.into_iter().map(|(run, tables, timing)| {
        let options = Options {
            tables,
            ..options.clone()
        };
        let (config, shutdown) = (&config, &shutdown);
        async move { run_on_schedule(config, &options, (&run, &timing), shutdown).await }
    }))
    .await;
}

/// The scheduled runs: `(name, tables, timing)` — one per table with a timing of its own, and
/// `default` for the rest on `[verify]`'s (all of them when none has).
fn runs_of(
    config: &Config,
    settings: &crate::config::VerifyConfig,
) -> Vec<(String, Vec<String>, crate::config::VerifyTiming)> {
    let mut runs: Vec<_> = settings
        .table
        .iter()
        .map(|(table, timing)| (table.clone(), vec![table.clone()], timing.clone()))
        .collect();
    if settings.table.is_empty() {
        runs.push(("default".into(), settings.tables.clone(), settings.timing()));
        return runs;
    }
    let chosen = if settings.tables.is_empty() {
        config
            .sources
            .values()
            .filter_map(|s| s.table_ids().ok())
            .flatten()
            .map(|t| t.to_string())
            .collect()
    } else {
        settings.tables.clone()
    };
    let rest: Vec<String> = chosen
        .into_iter()
        .filter(|t| !settings.table.contains_key(t))
        .collect();
    if !rest.is_empty() {
        runs.push(("default".into(), rest, settings.timing()));
    }
    runs
}

/// Runs verify on `tables` at the times of `timing` until `shutdown`; `run` names it in the
/// run metrics.
async fn run_on_schedule(
    config: &Config,
    options: &Options,
    (run, timing): (&str, &crate::config::VerifyTiming),
    shutdown: &tokio_util::sync::CancellationToken,
) {
    use crate::telemetry as t;
    // (The config was checked: one of the two is set, and the expression parses.)
    let cron = timing
        .schedule
        .as_deref()
        .and_then(|c| crate::cron::Cron::parse(c).ok());
    let interval = Duration::from_secs(timing.interval_s.unwrap_or(3600));
    let next = || match &cron {
        Some(cron) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            match cron.next_after(now) {
                Some(at) => Duration::from_secs((at - now).max(0) as u64),
                None => {
                    tracing::warn!(run, schedule = ?timing.schedule, "the verify schedule never comes again");
                    Duration::MAX
                }
            }
        }
        None => interval,
    };
    let mut wait = timing.first_after_s.map_or_else(next, Duration::from_secs);
    loop {
        tracing::debug!(run, in_s = wait.as_secs(), "next scheduled verify");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait.min(Duration::from_secs(10 * 366 * 86_400))) => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = verify(config, options) => result,
        };
        let outcome = match result {
            Ok(reports) => {
                for r in &reports {
                    let labels = [("source", r.source.clone()), ("table", r.table.to_string())];
                    metrics::gauge!(t::VERIFY_NOT_COMPARED, &labels)
                        .set(if r.not_compared.is_some() { 1.0 } else { 0.0 });
                    if r.not_compared.is_some() {
                        tracing::warn!(report = %r.line(), "scheduled verify could not compare a table");
                        continue;
                    }
                    metrics::gauge!(t::VERIFY_ROWS_CHECKED, &labels).set(r.source_rows as f64);
                    metrics::gauge!(t::VERIFY_ROWS_MISSING, &labels).set(r.count("missing") as f64);
                    metrics::gauge!(t::VERIFY_ROWS_EXTRA, &labels).set(r.count("extra") as f64);
                    metrics::gauge!(t::VERIFY_ROWS_DIFFERING, &labels)
                        .set(r.count("differing") as f64);
                    metrics::gauge!(t::VERIFY_ROWS_IN_FLIGHT, &labels)
                        .set(r.in_flight.len() as f64);
                    match r.status() {
                        "equal" => tracing::info!(report = %r.line(), "scheduled verify"),
                        "in_flight" => {
                            tracing::warn!(report = %r.line(), "scheduled verify: rows still in flight (the pipeline had not applied them when the settle time ran out)");
                        }
                        _ => {
                            tracing::warn!(report = %r.line(), "scheduled verify found differences");
                        }
                    }
                }
                outcome(&reports)
            }
            Err(e) => {
                tracing::warn!(run, error = %format!("{e:#}"), "scheduled verify failed; it runs again at the next time");
                "error"
            }
        };
        let run_label = ("run", run.to_string());
        metrics::counter!(t::VERIFY_RUNS_TOTAL, "outcome" => outcome, "run" => run.to_string())
            .increment(1);
        metrics::gauge!(t::VERIFY_RUN_SECONDS, std::slice::from_ref(&run_label))
            .set(started.elapsed().as_secs_f64());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(t::VERIFY_LAST_RUN, &[run_label]).set(now);
        wait = next();
    }
}

/// The schemes the router applies for `sink`.
fn schemes_of(config: &Config, sink: &str) -> anyhow::Result<Vec<Scheme>> {
    let Some(dir) = config.schemes_dir() else {
        return Ok(Vec::new());
    };
    if !dir.exists() {
        return Ok(Vec::new());
    }
    // A scheme that does not load stops verify: taking its table for an identity-mapped one
    // would report every row of it as different.
    let files = sluice_schemas::scheme::scheme_files(&dir).map_err(anyhow::Error::msg)?;
    files
        .iter()
        .map(|f| Scheme::load(f).map_err(|e| anyhow::anyhow!("{e}")))
        .filter(|s| s.as_ref().map_or(true, |s| s.is_for(sink)))
        .collect()
}

pub(crate) fn connector(
    url: &str,
    tls: &sluice_capture::tls::TlsConfig,
    section: &str,
    name: &str,
) -> anyhow::Result<PgConnector> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("{section}.{name}.url is not a valid connection string"))?;
    if let Some(pw) = Config::env_password(section, name) {
        config.password(pw);
    }
    config.application_name("sluice-verify");
    let tls = tls
        .client_config(&format!("{section}.{name}.tls"))
        .map_err(anyhow::Error::msg)?;
    Ok(PgConnector { config, tls })
}

/// The columns both sides compare (the source's, in its order) and the source's key columns:
/// its replica identity index's when it has one, else its primary key's (as capture keys it).
async fn columns(
    client: &tokio_postgres::Client,
    table: &TableId,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let rows = client
        .query(
            "SELECT a.attname::text, coalesce(a.attnum = ANY(k.indkey), false) \
             FROM pg_attribute a \
             LEFT JOIN LATERAL (SELECT i.indkey FROM pg_index i \
               WHERE i.indrelid = a.attrelid AND (i.indisreplident OR i.indisprimary) \
               ORDER BY i.indisreplident DESC LIMIT 1) k ON true \
             WHERE a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) \
               AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&table.namespace, &table.name],
        )
        .await?;
    let all: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let key: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    Ok((all, key))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The SQL text forms the comparison hashes: the key's and the row's.
struct Shape {
    qualified_source: String,
    qualified_sink: String,
    key: String,
    row: String,
}

/// The bucket of a key text, `0..n`. `hashtextextended` is the hash PostgreSQL's hash
/// partitioning stores rows by, so it is the same on every server and major (11+).
fn bucket_of(key: &str, n: i64) -> String {
    format!("(((hashtextextended({key}, 0) % {n}) + {n}) % {n})")
}

/// `(count, sum of row hashes)` per bucket.
type Buckets = HashMap<i64, (i64, String)>;

async fn buckets(
    client: &tokio_postgres::Client,
    table: &str,
    shape: &Shape,
    buckets: i64,
    (max_rows_per_second, progress): (Option<u64>, &TableProgress),
) -> anyhow::Result<Buckets> {
    let sql = |range: &str| {
        format!(
            "SELECT {bucket}, count(*), sum(hashtextextended({row}, 0)::numeric)::text \
             FROM {table} t WHERE {range} GROUP BY 1",
            row = shape.row,
            bucket = bucket_of(&shape.key, buckets),
        )
    };
    // (Rate-limited, a bucket comes once per range read: its counts and sums add up.)
    let mut out: HashMap<i64, (i64, i128)> = HashMap::new();
    let ranged = in_block_ranges(max_rows_per_second, progress);
    for r in in_ranges(client, table, (max_rows_per_second, progress), sql, &[]).await? {
        let (count, sum): (i64, String) = (r.get(1), r.get(2));
        let entry = out.entry(r.get(0)).or_default();
        entry.0 += count;
        if !ranged {
            // (In ranges, each range counted its rows as it was read.)
            progress.rows(count as u64);
        }
        entry.1 += sum.parse::<i128>()?;
    }
    Ok(out
        .into_iter()
        .map(|(b, (count, sum))| (b, (count, sum.to_string())))
        .collect())
}

/// Whether [`in_ranges`] reads in block ranges: paced, or drawn on a terminal.
fn in_block_ranges(max_rows_per_second: Option<u64>, progress: &TableProgress) -> bool {
    Pace::new(max_rows_per_second).limited() || progress.drawn()
}

/// Block ranges an unpaced read is split into when its progress is drawn.
const DRAWN_RANGES: i64 = 50;

/// The rows `sql(range)` gives over all of `table`: at once (`range` is `true`), or over
/// ranges of blocks (TID range scans, PostgreSQL 14+), all in one repeatable-read snapshot —
/// so a row that an update moves to another block meanwhile is read once. With
/// `max_rows_per_second` each range holds about a second's rows, paced to that rate; unpaced
/// but drawn on a terminal, the table is read in [`DRAWN_RANGES`] ranges, so that its line
/// shows rows and an ETA.
async fn in_ranges(
    client: &tokio_postgres::Client,
    table: &str,
    (max_rows_per_second, progress): (Option<u64>, &TableProgress),
    sql: impl Fn(&str) -> String,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Vec<tokio_postgres::Row>> {
    let mut pace = Pace::new(max_rows_per_second);
    if !in_block_ranges(max_rows_per_second, progress) {
        return Ok(client.query(&sql("true"), params).await?);
    }
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = async {
        let size = client
            .query_one(
                "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint)::bigint, \
                   CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples::float8 / c.relpages \
                     ELSE 100 END \
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&table],
            )
            .await?;
        let (blocks, per_block): (i64, f64) = (size.get(0), size.get(1));
        let step = match max_rows_per_second {
            Some(rate) if pace.limited() => ((rate as f64 / per_block.max(1.0)) as i64).max(1),
            _ => (blocks / DRAWN_RANGES).max(1),
        };
        let ranges = (blocks.max(1) + step - 1) / step;
        progress.ranges(ranges as u64);
        let mut rows = Vec::new();
        let mut start = 0;
        loop {
            let last = start + step >= blocks;
            let range = if last {
                format!("t.ctid >= '({start},0)'::tid")
            } else {
                format!(
                    "t.ctid >= '({start},0)'::tid AND t.ctid < '({},0)'::tid",
                    start + step
                )
            };
            rows.extend(client.query(&sql(&range), params).await?);
            // (Rows read, as the statistics count them.)
            let read = (step as f64 * per_block.max(1.0)) as u64;
            progress.chunk();
            progress.rows(read);
            pace.rows(read).await;
            if last {
                break;
            }
            start += step;
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    client.batch_execute("COMMIT").await?;
    result
}

/// Key text → row hash of the rows in the given buckets (one scan for all of them) or with the
/// given keys.
async fn rows_of(
    client: &tokio_postgres::Client,
    table: &str,
    shape: &Shape,
    filter: Filter<'_>,
    progress: &TableProgress,
) -> anyhow::Result<BTreeMap<String, String>> {
    let sql = |condition: String| {
        format!(
            "SELECT {key}, hashtextextended({row}, 0)::text FROM {table} t WHERE {condition}",
            key = shape.key,
            row = shape.row
        )
    };
    let rows = match filter {
        // A scan of the whole table: paced as the buckets' was.
        Filter::Buckets(buckets, n, max_rows_per_second) => {
            let condition = format!("{} = ANY($1)", bucket_of(&shape.key, n));
            in_ranges(
                client,
                table,
                (max_rows_per_second, progress),
                |range| sql(format!("{condition} AND {range}")),
                &[&buckets],
            )
            .await?
        }
        Filter::Keys(keys) => {
            let condition = format!("{} = ANY($1)", shape.key);
            client.query(&sql(condition), &[&keys]).await?
        }
    };
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Both sides' rows read again by key, hashed in SQL.
struct ByKeys<'a> {
    src: &'a tokio_postgres::Client,
    dst: &'a tokio_postgres::Client,
    shape: &'a Shape,
    progress: &'a TableProgress,
}

impl settle::Sides for ByKeys<'_> {
    /// The version is the row's `xmin`, which every update of it changes.
    async fn source(&mut self, keys: &[String]) -> anyhow::Result<settle::SourceRows> {
        let sql = format!(
            "SELECT {key}, hashtextextended({row}, 0)::text, t.xmin::text FROM {table} t \
             WHERE {key} = ANY($1)",
            key = self.shape.key,
            row = self.shape.row,
            table = self.shape.qualified_source,
        );
        Ok(self
            .src
            .query(&sql, &[&keys])
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    async fn sink(&mut self, keys: &[String]) -> anyhow::Result<settle::SinkRows> {
        let shape = self.shape;
        rows_of(
            self.dst,
            &shape.qualified_sink,
            shape,
            Filter::Keys(keys),
            self.progress,
        )
        .await
    }
}

enum Filter<'a> {
    /// The buckets, of how many, and the rate the scan keeps to.
    Buckets(&'a [i64], i64, Option<u64>),
    Keys(&'a [String]),
}

fn differences(
    source: &BTreeMap<String, String>,
    sink: &BTreeMap<String, String>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for (key, hash) in source {
        match sink.get(key) {
            None => out.push(Difference::Missing(key.clone())),
            Some(h) if h != hash => out.push(Difference::Differing(key.clone())),
            Some(_) => {}
        }
    }
    out.extend(
        sink.keys()
            .filter(|k| !source.contains_key(*k))
            .map(|k| Difference::Extra(k.clone())),
    );
    out
}

async fn compare_table(
    (source, table, pipeline, state): (
        &PgConnector,
        &TableId,
        &settle::Pipeline,
        Option<&CaptureState>,
    ),
    (sink, sink_table): (&PgConnector, &TableId),
    options: &Options,
) -> anyhow::Result<TableReport> {
    let (src, src_task) = source.connect().await.context("connecting to the source")?;
    let (dst, dst_task) = sink.connect().await.context("connecting to the sink")?;
    let progress = &*options.progress.table(&table.to_string());
    let result = async {
        // Both sides write values as text the same way (and as capture parses them).
        let settings = sluice_capture::postgres::reread::TEXT_SETTINGS.replace("SET LOCAL", "SET");
        tokio::try_join!(src.batch_execute(&settings), dst.batch_execute(&settings))?;
        let now = name_now(&src, state, table).await;
        let (columns_at_source, key) = columns(&src, &now).await?;
        anyhow::ensure!(
            !columns_at_source.is_empty(),
            "{table} does not exist at the source"
        );
        anyhow::ensure!(
            !key.is_empty(),
            "{table} has neither a replica identity index nor a primary key at the source, so \
             its rows cannot be matched (capture refuses it too): add a primary key, or a unique \
             index on NOT NULL columns made its replica identity"
        );
        let (columns_at_sink, _) = columns(&dst, sink_table).await?;
        anyhow::ensure!(
            !columns_at_sink.is_empty(),
            "the sink has no table {sink_table}"
        );
        // The sink may keep columns the source dropped; what the source has, it must have.
        let missing: Vec<&String> = columns_at_source
            .iter()
            .filter(|c| !columns_at_sink.contains(c))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "the sink table {sink_table} lacks the source's columns {missing:?}"
        );
        let list = |cols: &[String]| {
            cols.iter()
                .map(|c| format!("t.{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let shape = Shape {
            qualified_source: format!("{}.{}", quote(&now.namespace), quote(&now.name)),
            qualified_sink: format!(
                "{}.{}",
                quote(&sink_table.namespace),
                quote(&sink_table.name)
            ),
            key: format!("ROW({})::text", list(&key)),
            row: format!("ROW({})::text", list(&columns_at_source)),
        };
        // (Rate-limited, the planner's estimate: a count would be one more scan, unpaced.)
        let estimate: i64 = match options.max_rows_per_second {
            None => src
                .query_one(
                    &format!("SELECT count(*) FROM {}", shape.qualified_source),
                    &[],
                )
                .await?
                .get(0),
            // (Never analyzed: -1, and then a count after all.)
            Some(_) => match src
                .query_one(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::text::regclass",
                    &[&shape.qualified_source],
                )
                .await?
                .get::<_, i64>(0)
            {
                n if n >= 0 => n,
                _ => src
                    .query_one(
                        &format!("SELECT count(*) FROM {}", shape.qualified_source),
                        &[],
                    )
                    .await?
                    .get(0),
            },
        };
        let n = (estimate as u64 / options.bucket_rows.max(1)).max(1) as i64;
        progress.phase("hashing", estimate.max(0) as u64 * 2);
        // Both sides at once.
        let (at_source, at_sink) = tokio::try_join!(
            buckets(
                &src,
                &shape.qualified_source,
                &shape,
                n,
                (options.max_rows_per_second, progress)
            ),
            buckets(
                &dst,
                &shape.qualified_sink,
                &shape,
                n,
                (options.max_rows_per_second, progress)
            )
        )?;
        let rows = |b: &Buckets| b.values().map(|(c, _)| *c as u64).sum::<u64>();
        let (source_rows, sink_rows) = (rows(&at_source), rows(&at_sink));
        let mut suspects: Vec<Difference> = Vec::new();
        let mut differing: Vec<i64> = at_source
            .keys()
            .chain(at_sink.keys())
            .copied()
            .filter(|b| at_source.get(b) != at_sink.get(b))
            .collect();
        differing.sort_unstable();
        differing.dedup();
        // Every differing bucket in one more scan of each side.
        progress.phase("rows that differ", 0);
        for part in differing.chunks(10_000) {
            let (s, d) = tokio::try_join!(
                rows_of(
                    &src,
                    &shape.qualified_source,
                    &shape,
                    Filter::Buckets(part, n, options.max_rows_per_second),
                    progress
                ),
                rows_of(
                    &dst,
                    &shape.qualified_sink,
                    &shape,
                    Filter::Buckets(part, n, options.max_rows_per_second),
                    progress
                )
            )?;
            suspects.extend(differences(&s, &d));
        }
        // Rows still moving through the pipeline settle, by position (`settle.rs`).
        if !suspects.is_empty() {
            progress.phase("settling", 0);
        }
        let watch = settle::Watch {
            pipeline,
            source: Some(&src),
            sink: settle::Offsets::Postgres(&dst),
            relation: shape.qualified_source.clone(),
            table,
        };
        let mut sides = ByKeys {
            src: &src,
            dst: &dst,
            shape: &shape,
            progress,
        };
        let settled = settle::settle((suspects, None), options.settle, &watch, &mut sides).await?;
        let (mut suspects, mut in_flight) = (settled.differences, settled.in_flight);
        let repair = match options.repair {
            Repair::No => None,
            _ if suspects.is_empty() && in_flight.is_empty() => None,
            mode => {
                progress.phase("repairing", 0);
                // Rows still in flight are sent again too: a repair is a read at a position of
                // its own, so it cannot undo a change the pipeline applies meanwhile.
                let differing = suspects.len();
                suspects.extend(in_flight.iter().cloned());
                let (report, mut left) = repair(
                    mode,
                    (
                        &src,
                        table,
                        pipeline.slot().context("a PostgreSQL source has a slot")?,
                    ),
                    &dst,
                    &shape,
                    &key,
                    suspects,
                    options,
                )
                .await?;
                if mode == Repair::DryRun {
                    left.truncate(differing);
                } else {
                    in_flight.clear();
                }
                suspects = left;
                Some(report)
            }
        };
        Ok(TableReport {
            source: String::new(),
            table: table.clone(),
            sink_table: String::new(),
            source_rows,
            sink_rows,
            in_flight,
            caught_up: settled.caught_up,
            differences: suspects,
            not_compared: None,
            repair,
        })
    }
    .await;
    progress.done();
    src_task.abort();
    dst_task.abort();
    result
}

/// The text of each key column of the rows with these key texts, read from `client`.
async fn key_texts(
    client: &tokio_postgres::Client,
    table: &str,
    shape: &Shape,
    key: &[String],
    keys: &[String],
) -> anyhow::Result<Vec<Vec<String>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let columns: Vec<String> = key
        .iter()
        .map(|c| format!("t.{}::text", quote(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {table} t WHERE {} = ANY($1)",
        columns.join(", "),
        shape.key
    );
    Ok(client
        .query(&sql, &[&keys])
        .await?
        .iter()
        .map(|r| (0..key.len()).map(|i| r.get(i)).collect())
        .collect())
}

/// Sends the rows that differ through the pipeline again (or, in a dry run, counts them) and
/// waits until they are equal; returns what it did and the differences left.
#[allow(clippy::too_many_arguments)]
async fn repair(
    mode: Repair,
    (src, table, slot): (&tokio_postgres::Client, &TableId, &str),
    dst: &tokio_postgres::Client,
    shape: &Shape,
    key: &[String],
    suspects: Vec<Difference>,
    options: &Options,
) -> anyhow::Result<(RepairReport, Vec<Difference>)> {
    // (The table's line says "repairing" meanwhile.)
    let quiet = Progress::default().table("");
    let (at_source, at_sink) = (keys_of(&suspects, false), keys_of(&suspects, true));
    let mut report = RepairReport {
        dry_run: mode == Repair::DryRun,
        reread: at_source.len() as u64,
        delete: at_sink.len() as u64,
        repaired: 0,
    };
    if mode == Repair::DryRun {
        return Ok((report, suspects));
    }
    // Each row's key column texts, from the side that has it.
    let ask = async |differences: &[Difference]| -> anyhow::Result<()> {
        let (at_source, at_sink) = (keys_of(differences, false), keys_of(differences, true));
        let (mut keys, extra) = tokio::try_join!(
            key_texts(src, &shape.qualified_source, shape, key, &at_source),
            key_texts(dst, &shape.qualified_sink, shape, key, &at_sink)
        )?;
        keys.extend(extra);
        signal(src, slot, table, key, &keys).await
    };
    ask(&suspects).await?;
    let total = suspects.len();
    let mut left = suspects;
    let started = Instant::now();
    let deadline = started + options.repair_wait;
    let mut resent = false;
    while !left.is_empty() && Instant::now() < deadline {
        if !resent && started.elapsed() >= resend_after(options.repair_wait) {
            // A capture that restarted meanwhile dropped the request (it lives in memory):
            // asked once more. Rows sent twice are applied twice at positions of their own.
            resent = true;
            tracing::info!(%table, rows = left.len(), "repair: rows not repaired yet; asking capture again");
            ask(&left).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let keys: Vec<String> = left.iter().map(|d| d.key().to_string()).collect();
        let (s, d) = tokio::try_join!(
            rows_of(
                src,
                &shape.qualified_source,
                shape,
                Filter::Keys(&keys),
                &quiet
            ),
            rows_of(
                dst,
                &shape.qualified_sink,
                shape,
                Filter::Keys(&keys),
                &quiet
            )
        )?;
        left = differences(&s, &d);
    }
    report.repaired = (total - left.len()) as u64;
    if !left.is_empty() {
        tracing::warn!(%table, left = left.len(), "repair: rows still differ after the wait; is capture of this source running?");
    }
    Ok((report, left))
}

/// When a repair whose rows have not arrived is asked for once more: a third of the wait.
pub(crate) fn resend_after(repair_wait: Duration) -> Duration {
    repair_wait / 3
}

/// The keys of the rows only the sink has (`extra`), or of the others.
fn keys_of(differences: &[Difference], extra: bool) -> Vec<String> {
    differences
        .iter()
        .filter(|d| matches!(d, Difference::Extra(_)) == extra)
        .map(|d| d.key().to_string())
        .collect()
}

/// Asks the capture of `slot` to read the rows of `keys` (the text of each of `key`'s columns)
/// of `table` again and send them through the pipeline (see `capture/src/postgres/reread.rs`).
async fn signal(
    src: &tokio_postgres::Client,
    slot: &str,
    table: &TableId,
    key: &[String],
    keys: &[Vec<String>],
) -> anyhow::Result<()> {
    for part in keys.chunks(10_000) {
        let signal = sluice_capture::postgres::reread::Signal {
            slot: slot.to_string(),
            op: "reread".into(),
            table: table.to_string(),
            columns: key.to_vec(),
            keys: part.to_vec(),
        };
        src.execute(
            "SELECT pg_logical_emit_message(true, $1, $2::text)",
            &[
                &sluice_capture::postgres::reread::SIGNAL_PREFIX,
                &serde_json::to_string(&signal)?,
            ],
        )
        .await
        .context(
            "signalling capture at the source (the user needs EXECUTE on pg_logical_emit_message)",
        )?;
    }
    tracing::info!(%table, rows = keys.len(), "repair: asked capture to send the differing rows again");
    Ok(())
}

/// The name a configured PostgreSQL table has at the source now: capture follows a renamed
/// table by the OID its state record keeps (`renames = "follow"`), and so does verify.
async fn name_now(
    client: &tokio_postgres::Client,
    state: Option<&CaptureState>,
    table: &TableId,
) -> TableId {
    match names::resolve(client, state, std::slice::from_ref(table)).await {
        Ok(resolved) => resolved.names.now(table).clone(),
        Err(e) => {
            tracing::warn!(%table, error = %e, "cannot look the table up by its OID; using its configured name");
            table.clone()
        }
    }
}

/// Where a table compared through a scheme is read at the source.
enum SourceDb {
    Postgres {
        db: Box<PgConnector>,
        /// Its capture (its slot takes a repair's signal) and where it publishes.
        pipeline: Box<settle::Pipeline>,
        /// Its capture's state record (where a renamed table is now).
        state: Option<Arc<CaptureState>>,
    },
    Mysql {
        name: String,
        config: Box<sluice_capture::mysql::MysqlSourceConfig>,
        password: Option<String>,
        /// Its capture, and where it publishes.
        pipeline: Box<settle::Pipeline>,
    },
}

/// Where a comparison through a scheme reads the sink.
enum SinkDb {
    Postgres(Box<PgConnector>),
    Mysql {
        name: String,
        config: Box<sluice_sinks::mysql::MysqlSinkConfig>,
        password: Option<String>,
    },
}

/// A MySQL/MariaDB sink's connection pool, with its session as the sink's (UTC).
fn mysql_pool(
    name: &str,
    config: &sluice_sinks::mysql::MysqlSinkConfig,
    password: Option<&str>,
) -> anyhow::Result<mysql_async::Pool> {
    let opts = mysql_async::Opts::from_url(&config.url)
        .map_err(|e| anyhow::anyhow!("sinks.{name}.url is not a valid mysql:// url: {e}"))?;
    let mut builder = mysql_async::OptsBuilder::from_opts(opts)
        .prefer_socket(false)
        .ssl_opts(config.tls.mysql_ssl_opts())
        .init(vec!["SET SESSION time_zone = '+00:00'"]);
    if let Some(pw) = password {
        builder = builder.pass(Some(pw));
    }
    Ok(mysql_async::Pool::new(builder))
}

/// Compares a table written through `scheme` (its identity scheme when `None`; see
/// `mapped.rs`).
async fn compare_mapped(
    (source, table): (&SourceDb, &TableId),
    (sink, sink_table): (&SinkDb, &TableId),
    (scheme, hmac_key): (Option<&Scheme>, Option<&[u8]>),
    options: &Options,
) -> anyhow::Result<TableReport> {
    let settings = sluice_capture::postgres::reread::TEXT_SETTINGS.replace("SET LOCAL", "SET");
    let progress = &*options.progress.table(&table.to_string());
    let (pg_dst, my_dst) = match sink {
        SinkDb::Postgres(c) => (
            Some(c.connect().await.context("connecting to the sink")?),
            None,
        ),
        SinkDb::Mysql {
            name,
            config,
            password,
        } => (None, Some(mysql_pool(name, config, password.as_deref())?)),
    };
    let pg = match source {
        SourceDb::Postgres { db, .. } => {
            Some(db.connect().await.context("connecting to the source")?)
        }
        SourceDb::Mysql { .. } => None,
    };
    let result = async {
        let dst = match (&pg_dst, &my_dst) {
            (Some((client, _)), _) => {
                client.batch_execute(&settings).await?;
                mapped::Sink::Postgres(client)
            }
            (None, Some(pool)) => mapped::Sink::Mysql(pool),
            (None, None) => unreachable!("one of the two is connected above"),
        };
        let (writer, src, pipeline) = match (source, &pg) {
            (
                SourceDb::Postgres {
                    pipeline, state, ..
                },
                Some((src, _)),
            ) => {
                use sluice_capture::postgres::catalog::Catalog;
                src.batch_execute(&settings).await?;
                let now = name_now(src, state.as_deref(), table).await;
                let publication = match &pipeline.capture {
                    settle::Capture::Postgres { publication, .. } => Some(publication.as_str()),
                    settle::Capture::Mysql(_) => None,
                };
                let columns = Catalog::relation_columns(src, &now, publication)
                    .await
                    .map_err(|e| anyhow::anyhow!("{table} at the source: {e}"))?;
                let mut writer = Catalog::default()
                    .table_schema(src, now.clone(), &columns)
                    .await
                    .map_err(|e| anyhow::anyhow!("{table} at the source: {e}"))?;
                writer.id = table.clone();
                (
                    writer,
                    mapped::Source::Postgres {
                        client: src,
                        table: now,
                    },
                    &**pipeline,
                )
            }
            (
                SourceDb::Mysql {
                    name,
                    config,
                    password,
                    pipeline,
                },
                _,
            ) => {
                let writer = sluice_capture::mysql::describe(name, config, password.as_deref())
                    .await
                    .map_err(|e| anyhow::anyhow!("{table} at the source: {e}"))?
                    .into_iter()
                    .find(|t| t.id == *table)
                    .with_context(|| format!("{table} is not among the source's tables"))?;
                let src = mapped::Source::Mysql {
                    name,
                    config,
                    password: password.as_deref(),
                };
                (writer, src, &**pipeline)
            }
            (SourceDb::Postgres { .. }, None) => unreachable!("connected above"),
        };
        let writer = Arc::new(writer);
        let identity;
        let scheme = match scheme {
            Some(s) => s,
            None => {
                let json = sluice_schemas::scheme::identity(&writer, &table.to_string(), None);
                identity = Scheme::parse(
                    std::path::Path::new(&format!("{table} (identity)")),
                    &json.to_string(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                &identity
            }
        };
        let mapping = scheme
            .compile(&writer, hmac_key)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        mapped::compare(
            mapped::Mapped {
                src,
                dst,
                table,
                sink_table,
                writer: &writer,
                mapping: &mapping,
                max_rows_per_second: options.max_rows_per_second,
                progress,
            },
            pipeline,
            options,
        )
        .await
    }
    .await;
    if let Some((_, task)) = pg {
        task.abort();
    }
    if let Some((_, task)) = pg_dst {
        task.abort();
    }
    if let Some(pool) = my_dst {
        let _ = pool.disconnect().await;
    }
    progress.done();
    result
}

/// Where `--out` writes.
pub fn write_out(path: &PathBuf, reports: &[TableReport]) -> anyhow::Result<()> {
    let text: String = reports
        .iter()
        .flat_map(TableReport::json_lines)
        .map(|l| l + "\n")
        .collect();
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
