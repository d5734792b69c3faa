//! A pipeline test's world, built from parts: a PostgreSQL source database (the binary's shared
//! cluster unless asked otherwise), a sink, a broker (the binary's shared Kafka unless asked
//! otherwise), a working directory and a `sluice.toml` written from the parts the test names.
//! What tests wait for — source and sink equal, a metric reaching a value — is here too, so that
//! each test says only what is its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::compare::{compare_rows, pg_rows};
use crate::{free_port, Broker, MariaDb, Postgres, SluiceProcess, TansuStorage};

/// Where a pipeline's sink is.
enum Sink {
    /// The `sink` database of the pipeline's PostgreSQL.
    Postgres,
    /// A MariaDB database: its url (with the database) and name.
    Mysql { url: String, database: String },
}

/// Builds a [`Pipeline`]: `Pipeline::postgres(SLUICE, "name")`, then what the test needs.
pub struct PipelineBuilder {
    sluice: PathBuf,
    name: String,
    ddl: String,
    sink_ddl: String,
    tables: Vec<String>,
    kafka: String,
    source: Option<String>,
    source_extra: String,
    sink: Sink,
    sink_extra: String,
    router: String,
    batch: String,
    observability: String,
    sections: String,
    own_postgres: bool,
    broker: Option<TansuStorage>,
    local: bool,
}

impl PipelineBuilder {
    fn set(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }

    /// SQL run in the source database before anything starts.
    pub fn ddl(self, sql: &str) -> Self {
        self.set(|b| b.ddl = sql.into())
    }

    /// SQL run in the sink database before anything starts (tables stricter than the source's,
    /// observers).
    pub fn sink_ddl(self, sql: &str) -> Self {
        self.set(|b| b.sink_ddl = sql.into())
    }

    /// The source tables to capture.
    pub fn tables(self, tables: &[&str]) -> Self {
        self.set(|b| b.tables = tables.iter().map(|t| (*t).to_string()).collect())
    }

    /// Extra `[kafka]` lines (`partitions = 3`).
    pub fn kafka(self, lines: &str) -> Self {
        self.set(|b| b.kafka = lines.into())
    }

    /// Extra lines in the PostgreSQL source's section.
    pub fn source(self, lines: &str) -> Self {
        self.set(|b| b.source_extra = lines.into())
    }

    /// A source section of the test's own instead of the PostgreSQL one (a MariaDB source:
    /// `[sources.maria]` and its lines).
    pub fn source_section(self, section: &str) -> Self {
        self.set(|b| b.source = Some(section.into()))
    }

    /// Extra lines in the sink's section.
    pub fn sink(self, lines: &str) -> Self {
        self.set(|b| b.sink_extra = lines.into())
    }

    /// A MariaDB sink: `database` (the server's name for it) on `maria`.
    pub fn mysql_sink(self, maria: &MariaDb, database: &str) -> Self {
        let url = format!("{}/{database}", maria.url());
        self.set(|b| {
            b.sink = Sink::Mysql {
                url,
                database: database.into(),
            }
        })
    }

    /// Extra `[router]` lines.
    pub fn router(self, lines: &str) -> Self {
        self.set(|b| b.router = lines.into())
    }

    /// The `[router.batch]` lines (default: `max_rows = 500`, `max_delay_ms = 50`).
    pub fn batch(self, lines: &str) -> Self {
        self.set(|b| b.batch = lines.into())
    }

    /// Extra `[observability]` lines (`stall_timeout_ms = 3000`).
    pub fn observability(self, lines: &str) -> Self {
        self.set(|b| b.observability = lines.into())
    }

    /// Whole sections of the test's own (`[schemas]`, `[sinks.other]`), placed before
    /// `[router]`.
    pub fn sections(self, toml: &str) -> Self {
        self.set(|b| b.sections = toml.into())
    }

    /// A PostgreSQL cluster of the test's own (for a test that stops it or changes its
    /// settings), instead of its part of the shared one.
    pub fn own_postgres(self) -> Self {
        self.set(|b| b.own_postgres = true)
    }

    /// A broker of the test's own that survives [`Broker::kill`] and [`Broker::restart`].
    pub fn own_broker(self) -> Self {
        self.set(|b| b.broker = Some(TansuStorage::Sqlite))
    }

    /// Local mode: no broker, no `[kafka]` section; `[local]` keeps its state in the
    /// pipeline's directory (`state/`).
    pub fn local(self) -> Self {
        self.set(|b| b.local = true)
    }

    /// Starts the services, creates the databases, runs the DDL and writes the config.
    pub fn build(self) -> Pipeline {
        let pg = if self.own_postgres {
            Postgres::start()
        } else {
            Postgres::shared()
        }
        .unwrap();
        pg.create_database("source").unwrap();
        pg.create_database("sink").unwrap();
        if !self.ddl.is_empty() {
            pg.psql("source", &self.ddl).unwrap();
        }
        if !self.sink_ddl.is_empty() {
            pg.psql("sink", &self.sink_ddl).unwrap();
        }
        let kafka = match (self.local, self.broker) {
            (true, _) => None,
            (false, Some(storage)) => Some(Broker::start_with(storage).unwrap()),
            (false, None) => Some(Broker::shared().unwrap()),
        };
        let dir = tempfile::tempdir().unwrap();
        let metrics_port = free_port();
        let slot = pg.name(&self.name);
        let ns = kafka.as_ref().map_or("", Broker::namespace).to_string();
        let tables = self
            .tables
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let source = self.source.clone().unwrap_or_else(|| {
            format!(
                "[sources.pg_main]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [{tables}]\n\
                 slot = \"{slot}\"\npublication = \"{}\"\n{}",
                pg.url("source"),
                self.name,
                self.source_extra
            )
        });
        let sink = match &self.sink {
            Sink::Postgres => format!("kind = \"postgres\"\nurl = \"{}\"", pg.url("sink")),
            Sink::Mysql { url, database } => {
                format!("kind = \"mysql\"\nurl = \"{url}\"\ndatabase = \"{database}\"")
            }
        };
        let transport = match &kafka {
            Some(kafka) => format!("[kafka]\n{}{}", kafka.kafka_toml("sluice"), self.kafka),
            None => format!("[local]\nstate_dir = \"state\"\n{}", self.kafka),
        };
        let config = format!(
            "{transport}\n\n{source}\n\n[sinks.warehouse]\n{sink}\n{sink_extra}\n\n\
             {sections}\n\n[router]\nsink = \"warehouse\"\ngroup_id = \"{ns}{name}\"\n\
             dead_letter_topic = \"{ns}_sluice_dead_letter\"\n{router}\n\n\
             [router.batch]\n{batch}\n\n[observability]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             {observability}\n",
            sink_extra = self.sink_extra,
            sections = self.sections,
            name = self.name,
            router = self.router,
            batch = self.batch,
            observability = self.observability,
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).unwrap();
        Pipeline {
            sluice: self.sluice,
            slot,
            pg,
            broker: kafka,
            dir,
            config: config_path,
            metrics_port,
        }
    }
}

/// Services, a directory and a config for one pipeline test ([`Pipeline::postgres`]).
pub struct Pipeline {
    sluice: PathBuf,
    slot: String,
    pub pg: Postgres,
    /// `None` in local mode ([`Pipeline::kafka`] otherwise).
    pub broker: Option<Broker>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub metrics_port: u16,
}

impl Pipeline {
    /// A pipeline from the `source` to the `sink` database of one PostgreSQL, named `name`
    /// (its slot, publication and router group; unique in the test binary).
    pub fn postgres(sluice: &str, name: &str) -> PipelineBuilder {
        PipelineBuilder {
            sluice: PathBuf::from(sluice),
            name: name.to_string(),
            ddl: String::new(),
            sink_ddl: String::new(),
            tables: Vec::new(),
            kafka: String::new(),
            source: None,
            source_extra: String::new(),
            sink: Sink::Postgres,
            sink_extra: String::new(),
            router: String::new(),
            batch: "max_rows = 500\nmax_delay_ms = 50".into(),
            observability: String::new(),
            sections: String::new(),
            own_postgres: false,
            broker: None,
            local: false,
        }
    }

    /// The source's replication slot as the server names it (its publication, in the source
    /// database, is called by the pipeline's name).
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// What the test's topics and groups start with.
    pub fn ns(&self) -> &str {
        self.broker.as_ref().map_or("", Broker::namespace)
    }

    /// The pipeline's broker (not in local mode).
    pub fn kafka(&self) -> &Broker {
        self.broker
            .as_ref()
            .expect("a local-mode pipeline has no broker")
    }

    /// `sluice run` on the config, logging to `sluice.log`; waits for `/healthz`.
    pub fn run(&self) -> SluiceProcess {
        self.start("run", &[])
    }

    /// While `busy()` holds, kills `sluice` -9 every `every` and starts `sluice run` again;
    /// returns the process running at the end and how many times it was killed.
    pub fn run_killed_while(
        &self,
        mut sluice: SluiceProcess,
        every: Duration,
        busy: impl Fn() -> bool,
    ) -> (SluiceProcess, u32) {
        let mut kills = 0;
        while busy() {
            std::thread::sleep(every);
            if !busy() {
                break;
            }
            sluice.kill9();
            kills += 1;
            sluice = self.run();
        }
        (sluice, kills)
    }

    /// `sluice <subcommand>` on the config with extra environment, logging to `sluice.log`.
    pub fn start(&self, subcommand: &str, env: &[(&str, &str)]) -> SluiceProcess {
        self.start_with(subcommand, &self.config, env)
    }

    /// [`Pipeline::start`] on another config (one of [`Pipeline::config_with`]'s).
    pub fn start_with(
        &self,
        subcommand: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> SluiceProcess {
        SluiceProcess::start_with_env(
            &self.sluice,
            subcommand,
            config,
            &self.log_path(),
            self.metrics_port,
            env,
        )
        .unwrap()
    }

    /// `sluice <subcommand>` as another process called `label`: a copy of the config with a
    /// metrics address of its own and each `(from, to)` of `edits` replaced, logging to
    /// `<label>.log`.
    pub fn start_other(
        &self,
        subcommand: &str,
        label: &str,
        edits: &[(&str, &str)],
    ) -> SluiceProcess {
        let port = free_port();
        let path = self.dir.path().join(format!("{label}.toml"));
        let mut text = std::fs::read_to_string(&self.config).unwrap().replace(
            &format!("127.0.0.1:{}", self.metrics_port),
            &format!("127.0.0.1:{port}"),
        );
        for (from, to) in edits {
            assert!(text.contains(from), "the config has no {from:?}:\n{text}");
            text = text.replace(from, to);
        }
        std::fs::write(&path, text).unwrap();
        SluiceProcess::start(
            &self.sluice,
            subcommand,
            &path,
            &self.dir.path().join(format!("{label}.log")),
            port,
        )
        .unwrap()
    }

    /// `sluice <subcommand>` on `config`, expecting it to stop on a definite error; returns
    /// its log.
    pub fn run_until_exit(&self, subcommand: &str, config: &Path, env: &[(&str, &str)]) -> String {
        SluiceProcess::run_until_exit(
            &self.sluice,
            subcommand,
            config,
            &self.log_path(),
            self.metrics_port,
            env,
        )
    }

    /// The config with `from` replaced by `to`, written beside it as `name`.
    pub fn config_with(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "the config has no {from:?}:\n{text}");
        let path = self.dir.path().join(name);
        std::fs::write(&path, text.replace(from, to)).unwrap();
        path
    }

    /// Replaces `from` by `to` in the config (which must hold `from`), for the next start.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "the config has no {from:?}:\n{text}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Makes the next router run join a new group (`<group>-again`) that starts with the
    /// sink's progress on `partition` of every topic and none on the others: theirs are read
    /// again from the start after `partition`'s (as when they lagged behind it). `offsets` is
    /// the sink's offsets table (qualified), `run` runs SQL at the sink.
    pub fn regroup_keeping(&self, partition: i32, offsets: &str, run: impl FnOnce(&str)) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let group = text
            .lines()
            .find_map(|l| l.strip_prefix("group_id = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("the config names no router group:\n{text}"))
            .to_string();
        run(&format!(
            "INSERT INTO {offsets} (consumer_group, topic, kafka_partition, kafka_offset, position) \
             SELECT '{group}-again', topic, kafka_partition, kafka_offset, position \
             FROM {offsets} WHERE consumer_group = '{group}' AND kafka_partition = {partition}"
        ));
        self.edit_config(
            &format!("group_id = \"{group}\""),
            &format!("group_id = \"{group}-again\""),
        );
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sluice.log")
    }

    /// Runs SQL in the source database.
    pub fn source(&self, sql: &str) {
        self.pg.psql("source", sql).unwrap();
    }

    /// Waits until every table in `tables` holds the same rows at the sink as at the source,
    /// compared row by row; fails with the first difference and the log after `timeout`.
    pub fn wait_for_match(&self, sluice: &SluiceProcess, tables: &[&str], timeout: Duration) {
        for table in tables {
            let query = format!("SELECT * FROM {table} t ORDER BY t::text");
            self.wait_for_query(sluice, &query, &query, timeout);
        }
    }

    /// Waits until `sink_query` at the sink reads what `source_query` reads at the source.
    pub fn wait_for_query(
        &self,
        sluice: &SluiceProcess,
        source_query: &str,
        sink_query: &str,
        timeout: Duration,
    ) {
        wait_for_rows(
            &self.pg,
            sluice,
            ("source", source_query),
            ("sink", sink_query),
            timeout,
        );
    }
}

/// Waits until `b`'s query (a database and SQL) reads what `a`'s reads, both on `pg`; fails with
/// the first difference and the log after `timeout`.
pub fn wait_for_rows(
    pg: &Postgres,
    sluice: &SluiceProcess,
    a: (&str, &str),
    b: (&str, &str),
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let source = pg_rows(pg, a.0, a.1).unwrap();
        let last = match pg_rows(pg, b.0, b.1).map(|sink| compare_rows(&source, &sink)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) | Err(e) => e,
        };
        assert!(
            start.elapsed() < timeout,
            "{} did not converge within {timeout:?}: {last}\n--- sluice log ---\n{}",
            b.1,
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
