//! What depends on the PostgreSQL major: capture refuses a server older than the oldest it is
//! tested on, naming the version and the fix, before it creates anything there; on 16+ it can
//! leave out the changes another replicator applied (`origin = "none"`), and refuses that
//! setting on older servers. (The supported majors, 14 to 18, are proven by running the
//! PostgreSQL tests with `SLUICE_TEST_PG_MAJOR`; see the README.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_harness::compare::pg_rows;
use sluice_harness::{free_port, Broker, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn capture_refuses_postgresql_13_with_the_version_and_the_fix_and_creates_nothing() {
    // Given a PostgreSQL 13 source with logical WAL and a table fit for capture,
    let (pg, dir, config, port) = pipeline(13, "any");
    // when capture starts against it,
    let log = capture_until_exit(&dir, &config, port);

    // then it stops with the server's version, the supported range and what to do,
    assert!(
        log.contains("the source runs PostgreSQL 13.")
            && log.contains("Sluice captures from PostgreSQL 14 to 18")
            && log.contains("upgrade the source"),
        "{log}"
    );
    // and has created no slot or publication on the server.
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)"
        )
        .unwrap()
        .trim(),
        "0"
    );
}

/// A source and a sink database on one server of `major`, a table `public.orders` in the
/// source, and a config for `sluice run` between them with `origin` set as given.
fn pipeline(major: u32, origin: &str) -> (Postgres, tempfile::TempDir, PathBuf, u16) {
    let pg = Postgres::start_major(major).unwrap();
    pg.create_database("shop").unwrap();
    pg.create_database("wh").unwrap();
    pg.psql(
        "shop",
        "CREATE TABLE public.orders (id int PRIMARY KEY, note text)",
    )
    .unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n{}[sources.pg]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.orders\"]\n\
             slot = \"origins\"\npublication = \"origins\"\norigin = \"{origin}\"\n\
             [sinks.wh]\nkind = \"postgres\"\nurl = \"{}\"\n\
             [router]\nsink = \"wh\"\ngroup_id = \"{}origins\"\n[router.batch]\nmax_delay_ms = 50\n\
             [observability]\nlisten = \"127.0.0.1:{port}\"\n",
            kafka.kafka_toml("origins"),
            pg.url("shop"),
            pg.url("wh"),
            kafka.namespace(),
        ),
    )
    .unwrap();
    (pg, dir, config, port)
}

/// Runs a pipeline over a PostgreSQL 18 source with `origin` while a local write, a write
/// applied under a replication origin (as a replicator from another database would apply it),
/// and another local write commit in that order; returns the sink's rows once the last local
/// one is there (the peer's committed before it, so it would have arrived first).
fn rows_after_a_peer_write(origin: &str) -> Vec<String> {
    let (pg, dir, config, port) = pipeline(18, origin);
    let sluice = run_streaming(&dir, &config, port);
    pg.psql("shop", "INSERT INTO public.orders VALUES (1, 'local')")
        .unwrap();
    pg.psql(
        "shop",
        "SELECT pg_replication_origin_create('peer'); \
         SELECT pg_replication_origin_session_setup('peer'); \
         INSERT INTO public.orders VALUES (2, 'from the peer')",
    )
    .unwrap();
    pg.psql("shop", "INSERT INTO public.orders VALUES (3, 'local')")
        .unwrap();
    let rows = || pg_rows(&pg, "wh", "SELECT id, note FROM public.orders ORDER BY id");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rows().is_ok_and(|r| r.last().is_some_and(|l| l == "3|local")) {
        assert!(Instant::now() < deadline, "{}", sluice.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    rows().unwrap()
}

#[test]
fn with_origin_none_a_change_another_replicator_applied_is_not_captured() {
    assert_eq!(rows_after_a_peer_write("none"), ["1|local", "3|local"]);
}

#[test]
fn with_origin_any_a_change_another_replicator_applied_is_captured() {
    assert_eq!(
        rows_after_a_peer_write("any"),
        ["1|local", "2|from the peer", "3|local"]
    );
}

#[test]
fn origin_none_is_refused_before_postgresql_16_with_the_fix() {
    let (_pg, dir, config, port) = pipeline(15, "none");
    let log = capture_until_exit(&dir, &config, port);
    assert!(
        log.contains("origin = \"none\" needs PostgreSQL 16 or newer")
            && log.contains("source runs 15."),
        "{log}"
    );
}

#[test]
fn on_postgresql_18_stored_generated_columns_reach_the_sink_in_snapshot_and_stream() {
    // Given a PostgreSQL 18 table with a stored and a virtual generated column and rows from
    // before capture starts,
    let (pg, dir, config, port) = pipeline(18, "any");
    pg.psql(
        "shop",
        "CREATE TABLE public.lines (id int PRIMARY KEY, qty int, \
           total int GENERATED ALWAYS AS (qty * 10) STORED, \
           half int GENERATED ALWAYS AS (qty / 2) VIRTUAL); \
         INSERT INTO public.lines (id, qty) SELECT i, i FROM generate_series(1, 50) i",
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "tables = [\"public.orders\"]",
        "tables = [\"public.lines\"]",
    );
    std::fs::write(&config, text).unwrap();
    let sluice = run_streaming(&dir, &config, port);

    // when rows are inserted, updated and deleted while it streams,
    pg.psql(
        "shop",
        "INSERT INTO public.lines (id, qty) SELECT i, i FROM generate_series(51, 60) i; \
         UPDATE public.lines SET qty = qty + 100 WHERE id % 7 = 0; \
         DELETE FROM public.lines WHERE id % 11 = 0",
    )
    .unwrap();

    // then the sink holds every row with the stored column's values (the virtual one is
    // never published, so the sink has no such column).
    let query = "SELECT id, qty, total FROM public.lines ORDER BY id";
    let source = pg_rows(&pg, "shop", query).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg_rows(&pg, "wh", query).ok().as_ref() != Some(&source) {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            pg_rows(&pg, "wh", query),
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        pg.psql(
            "wh",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'lines' AND column_name = 'half'"
        )
        .unwrap()
        .trim(),
        "0"
    );
}

/// Sets `failover_slot` in the source's section of `config`.
fn set_failover_slot(config: &Path, on: bool) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = match text.find("\nfailover_slot = ") {
        Some(_) => text
            .replace("failover_slot = true", &format!("failover_slot = {on}"))
            .replace("failover_slot = false", &format!("failover_slot = {on}")),
        None => text.replacen("origin = ", &format!("failover_slot = {on}\norigin = "), 1),
    };
    std::fs::write(config, text).unwrap();
}

/// Whether the `origins` slot is a failover slot.
fn slot_is_failover(pg: &Postgres) -> String {
    pg.psql(
        "shop",
        "SELECT failover FROM pg_replication_slots WHERE slot_name = 'origins'",
    )
    .unwrap()
    .trim()
    .to_string()
}

#[test]
fn on_postgresql_17_and_later_the_slot_is_created_as_a_failover_slot_or_made_one() {
    // A new slot with failover_slot = true is created with failover;
    let (pg, dir, config, port) = pipeline(18, "any");
    set_failover_slot(&config, true);
    let sluice = run_streaming(&dir, &config, port);
    assert_eq!(slot_is_failover(&pg), "t", "{}", sluice.log());
    drop(sluice);

    // a slot made without it is altered to have it at the next start.
    let (pg, dir, config, port) = pipeline(17, "any");
    let sluice = run_streaming(&dir, &config, port);
    assert_eq!(slot_is_failover(&pg), "f");
    drop(sluice);
    set_failover_slot(&config, true);
    let sluice = run_streaming(&dir, &config, port);
    assert_eq!(slot_is_failover(&pg), "t", "{}", sluice.log());
    assert!(sluice
        .log()
        .contains("altering the replication slot to be a failover slot"));
}

#[test]
fn failover_slot_is_refused_before_postgresql_17_with_the_fix() {
    let (_pg, dir, config, port) = pipeline(16, "any");
    set_failover_slot(&config, true);
    let log = capture_until_exit(&dir, &config, port);
    assert!(
        log.contains("failover_slot = true needs PostgreSQL 17 or newer")
            && log.contains("source runs 16."),
        "{log}"
    );
}

/// Runs `sluice capture` until it stops (on a definite error); returns its log.
fn capture_until_exit(dir: &tempfile::TempDir, config: &Path, port: u16) -> String {
    SluiceProcess::run_until_exit(
        Path::new(SLUICE),
        "capture",
        config,
        &dir.path().join("sluice.log"),
        port,
        &[],
    )
}

/// Starts `sluice run` and waits until capture streams.
fn run_streaming(dir: &tempfile::TempDir, config: &Path, port: u16) -> SluiceProcess {
    let sluice = SluiceProcess::start(
        Path::new(SLUICE),
        "run",
        config,
        &dir.path().join("sluice.log"),
        port,
    )
    .unwrap();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));
    sluice
}
