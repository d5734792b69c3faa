//! Capture and PostgreSQL's standbys: decoding on a physical standby (16+), and a failover slot
//! carried to a standby that is promoted when the primary dies (17+), across which nothing is
//! lost and nothing applied twice.

use std::path::PathBuf;
use std::time::Duration;

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{wait_until, Broker, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const ROWS: &str = "SELECT id, n FROM public.t ORDER BY id";

/// The run's major when it has what the test needs, else the newest.
fn major_from(least: u32) -> u32 {
    let major = sluice_harness::pg_major();
    if major >= least {
        major
    } else {
        18
    }
}

/// A primary of the run's major (at least `least`) with `public.t` of 100 rows in `source`, and
/// `extra` SQL run there.
fn primary(least: u32, extra: &str) -> Postgres {
    let major = major_from(least);
    let primary = Postgres::start_major(major).unwrap();
    primary.create_database("source").unwrap();
    primary
        .psql(
            "source",
            &format!(
                "CREATE TABLE public.t (id int PRIMARY KEY, n int NOT NULL);
                 INSERT INTO public.t SELECT i, 0 FROM generate_series(1, 100) i; {extra}"
            ),
        )
        .unwrap();
    primary
}

/// A config capturing `public.t` from `source` (its database `source`) into the `sink`
/// database of `sink`.
fn config(
    dir: &tempfile::TempDir,
    kafka: &Broker,
    source: &Postgres,
    sink: &Postgres,
    name: &str,
    extra: &str,
) -> (PathBuf, u16) {
    let port = sluice_harness::free_port();
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka]\n{kafka_toml}\n[sources.pg_main]\nkind = \"postgres\"\nurl = \"{}\"\n\
             tables = [\"public.t\"]\nslot = \"failover\"\npublication = \"failover\"\n{extra}\n\
             [sinks.warehouse]\nkind = \"postgres\"\nurl = \"{}\"\n\
             [router]\nsink = \"warehouse\"\ngroup_id = \"{ns}standby\"\n\
             [router.batch]\nmax_rows = {max_rows}\nmax_delay_ms = 50\n[observability]\nlisten = \"127.0.0.1:{port}\"\n",
            source.url("source"),
            sink.url("sink"),
            kafka_toml = kafka.kafka_toml("sluice"),
            ns = kafka.namespace(),
            // One change a batch: a replayed version is written again rather than collapsed
            // into a newer one, so the observer at the sink sees every replay applied.
            max_rows = 1,
        ),
    )
    .unwrap();
    (path, port)
}

fn start(dir: &tempfile::TempDir, (config, port): &(PathBuf, u16), log: &str) -> SluiceProcess {
    SluiceProcess::start(
        std::path::Path::new(SLUICE),
        "run",
        config,
        &dir.path().join(log),
        *port,
    )
    .unwrap()
}

/// Waits until the sink's `public.t` equals `source`'s.
fn wait_for_sink(source: &Postgres, sink: &Postgres, sluice: &SluiceProcess) {
    let mut last = String::new();
    let matched = wait_until(
        "the sink to equal the source",
        Duration::from_secs(120),
        || {
            let want = pg_rows(source, "source", ROWS).unwrap();
            match pg_rows(sink, "sink", ROWS).map(|got| compare_rows(&want, &got)) {
                Ok(Ok(())) => true,
                Ok(Err(e)) | Err(e) => {
                    last = e;
                    false
                }
            }
        },
    );
    assert!(
        matched.is_ok(),
        "{last}\n--- sluice log ---\n{}",
        sluice.log()
    );
}

#[test]
fn a_promoted_standby_with_a_synchronized_failover_slot_loses_and_doubles_nothing() {
    // Given a primary (17+) and a physical standby that synchronizes failover slots, the
    // primary holding back logical changes the standby has not received,
    let mut primary = primary(17, "");
    let standby = primary.start_standby().unwrap();
    primary
        .psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET synchronized_standby_slots = '{}'",
                standby.upstream_slot()
            ),
        )
        .unwrap();
    primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let sink = Postgres::shared().unwrap();
    sink.create_database("sink").unwrap();
    sink.psql(
        "sink",
        "CREATE TABLE public.t (id int PRIMARY KEY, n int NOT NULL)",
    )
    .unwrap();
    let applies = sink
        .log_applies("sink", "public.t", ("id", "int"), ("n", "int"))
        .unwrap_or_else(|e| panic!("{e}"));
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let on_primary = config(
        &dir,
        &kafka,
        &primary,
        &sink,
        "primary",
        "failover_slot = true",
    );
    let mut sluice = start(&dir, &on_primary, "primary.log");
    wait_for_sink(&primary, &sink, &sluice);

    // when rows change on the primary, its failover slot reaches the standby,
    for round in 1..=20 {
        primary
            .psql(
                "source",
                &format!(
                    "UPDATE public.t SET n = {round} WHERE id % 4 = {}",
                    round % 4
                ),
            )
            .unwrap();
    }
    wait_for_sink(&primary, &sink, &sluice);
    standby
        .wait_for_synced_slot("failover", Duration::from_secs(60))
        .unwrap();
    // and, while the standby's copy of the slot stays where it is (its sync paused, as a
    // slow sync would leave it), more changes reach the sink; then the primary dies (killed
    // -9) and the standby is promoted (so the copy replays those changes),
    standby
        .psql("postgres", "ALTER SYSTEM SET sync_replication_slots = off")
        .unwrap();
    standby.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    wait_until(
        "the slot sync worker to stop",
        Duration::from_secs(30),
        || {
            standby
                .psql(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'slot sync worker'",
                )
                .is_ok_and(|n| n.trim() == "0")
        },
    )
    .unwrap();
    let before = primary
        .psql("postgres", "SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .to_string();
    for round in 21..=30 {
        primary
            .psql(
                "source",
                &format!(
                    "UPDATE public.t SET n = {round} WHERE id % 4 = {}",
                    round % 4
                ),
            )
            .unwrap();
    }
    wait_for_sink(&primary, &sink, &sluice);
    let copy = standby
        .psql(
            "postgres",
            &format!(
                "SELECT confirmed_flush_lsn <= '{before}' FROM pg_replication_slots \
                 WHERE slot_name = 'failover'"
            ),
        )
        .unwrap();
    assert_eq!(copy.trim(), "t", "the standby's copy of the slot moved on");
    primary.kill9();
    standby.promote().unwrap();
    sluice.kill9();

    // and capture is pointed at the promoted standby, where writes go on,
    let on_standby = config(
        &dir,
        &kafka,
        &standby,
        &sink,
        "standby",
        "failover_slot = true",
    );
    let sluice = start(&dir, &on_standby, "standby.log");
    for round in 31..=40 {
        standby
            .psql(
                "source",
                &format!(
                    "UPDATE public.t SET n = {round} WHERE id % 4 = {}",
                    round % 4
                ),
            )
            .unwrap();
    }

    // then capture resumes from the synchronized slot (not a new one), the sink equals the
    // promoted standby row for row, and no row version was written twice or went back.
    wait_for_sink(&standby, &sink, &sluice);
    let log = sluice.log();
    assert!(!log.contains("creating replication slot"), "{log}");
    assert_eq!(
        applies.written_twice(),
        "",
        "row versions written twice across the promotion (id|n|times)"
    );
    assert_eq!(
        applies.went_back(),
        0,
        "a row went back to an older version"
    );
    drop(primary);
}

#[test]
fn capture_reads_a_physical_standby() {
    // Given a primary (16+) with a publication, and a physical standby of it,
    let mut primary = primary(16, "CREATE PUBLICATION failover FOR TABLE public.t;");
    let standby = primary.start_standby().unwrap();
    let sink = Postgres::shared().unwrap();
    sink.create_database("sink").unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // when capture is pointed at the standby (its slot made there, which waits for the
    // primary to log what is running: the test asks the primary for it),
    let sluice = start(
        &dir,
        &config(&dir, &kafka, &standby, &sink, "standby", ""),
        "s.log",
    );
    wait_until(
        "capture to start on the standby",
        Duration::from_secs(60),
        || {
            let _ = primary.psql("postgres", "SELECT pg_log_standby_snapshot()");
            std::thread::sleep(Duration::from_millis(300));
            sluice.log().contains("starting replication")
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sluice.log()));

    // then the snapshot and the changes written on the primary reach the sink through it.
    primary
        .psql(
            "source",
            "UPDATE public.t SET n = 7 WHERE id <= 50; DELETE FROM public.t WHERE id > 90",
        )
        .unwrap();
    wait_for_sink(&primary, &sink, &sluice);
    assert!(
        sluice.log().contains("the source is a standby"),
        "{}",
        sluice.log()
    );
}
