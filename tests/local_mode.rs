//! Local mode: `sluice run` with no `[kafka]` section streams capture → schemes → sink in one
//! process. The contract is Kafka mode's: the sink stores the applied source position in its
//! transaction, and capture confirms a position to the slot only after every sink committed
//! everything before it — so a `kill -9` anywhere replays, and the sink skips what it has.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_harness::compare::pg_rows;
use sluice_harness::{wait_for_rows, Broker, Pipeline, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

const ORDERS: &str =
    "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL, qty int NOT NULL);
     INSERT INTO public.orders SELECT i, 'c' || i, 0 FROM generate_series(1, 2000) i;";

/// The slot's confirmed position, as an LSN number.
fn confirmed_lsn(p: &Pipeline) -> u64 {
    let out =
        p.pg.psql(
            "source",
            &format!(
                "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '{}'",
                p.slot()
            ),
        )
        .unwrap();
    out.trim().parse().unwrap_or(0)
}

#[test]
fn local_mode_loses_and_doubles_nothing_across_kill_9_and_needs_no_broker() {
    // Given a local-mode pipeline (no [kafka] section, no broker anywhere) that snapshotted
    // 2000 orders,
    let p = Pipeline::postgres(SLUICE, "local_kill")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .build();
    let config = std::fs::read_to_string(&p.config).unwrap();
    assert!(!config.contains("[kafka]"), "{config}");
    let mut sluice = p.run();
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    let state = p.dir.path().join("state");
    assert!(
        state.join("_sluice_capture_state.json").exists(),
        "capture state is kept in the state directory: {:?}",
        std::fs::read_dir(&state).map(Iterator::count)
    );
    let applies =
        p.pg.log_applies("sink", "public.orders", ("id", "bigint"), ("qty", "int"))
            .unwrap();

    // when writes go on while the process is killed -9 three times and restarted,
    let writer =
        p.pg.write_in_rounds("source", 60, Duration::from_millis(150), |round| {
            format!(
                "UPDATE public.orders SET qty = qty + 1 WHERE id % 10 = {}; \
                 INSERT INTO public.orders VALUES ({}, 'late', 0); \
                 DELETE FROM public.orders WHERE id = {}",
                round % 10,
                10_000 + round,
                round * 7
            )
        });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        sluice.kill9();
        sluice = p.run();
    }
    writer.join().unwrap();

    // then the sink equals the source row for row, no row version was written twice and
    // none went back.
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    assert_eq!(
        applies.written_twice(),
        "",
        "row versions written twice (id|qty|times)"
    );
    assert_eq!(
        applies.went_back(),
        0,
        "a row went back to an older version"
    );
    assert!(applies.written() > 0, "the observer saw the changes");
    let applied = sluice.metric(
        "sluice_sink_events_applied_total",
        &[("sink", "warehouse"), ("table", "public.orders")],
    );
    assert!(applied > 0.0, "the same metrics as Kafka mode: {applied}");
    let status = Command::new(SLUICE)
        .args(["status", "--config"])
        .arg(&p.config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && report.contains("public.orders"),
        "sluice status on local mode:\n{report}{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[test]
fn pgbench_through_snapshot_and_stream_with_kills_arrives_row_for_row() {
    // Given pgbench's schema and data (100,000 accounts) and a local-mode pipeline,
    let tables = [
        "public.pgbench_accounts",
        "public.pgbench_branches",
        "public.pgbench_tellers",
    ];
    let p = Pipeline::postgres(SLUICE, "local_pgbench")
        .local()
        .tables(&tables)
        .build();
    p.pg.pgbench("source", &["-i", "-s", "1", "-q"]);

    // when it starts (snapshotting) while pgbench's TPC-B-like load runs with 4 clients for
    // 20 s, and is killed -9 every 4 s,
    let sluice = p.run();
    let load =
        p.pg.pgbench_in_background("source", &["-c", "4", "-j", "2", "-T", "20", "-n"]);
    let (sluice, kills) =
        p.run_killed_while(sluice, Duration::from_secs(4), || !load.is_finished());
    let report = load.join().unwrap();

    // then every keyed pgbench table matches the source row for row.
    p.wait_for_match(&sluice, &tables, Duration::from_secs(240));
    assert!(kills >= 3, "killed {kills} times");
    let tps = report.lines().find(|l| l.starts_with("tps")).unwrap_or("");
    eprintln!("pgbench {tps}; killed -9 {kills} times");
}

#[test]
fn capture_confirms_nothing_the_sink_has_not_committed() {
    // Given a local-mode pipeline whose sink is held: every write to its table waits for an
    // advisory lock the test holds,
    let p = Pipeline::postgres(SLUICE, "local_held")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .build();
    let mut sluice = p.run();
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    p.pg.psql(
        "sink",
        "CREATE FUNCTION public.wait_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
         CREATE TRIGGER held BEFORE INSERT OR UPDATE ON public.orders
           FOR EACH ROW EXECUTE FUNCTION public.wait_for_test();",
    )
    .unwrap();
    let mut holder = Command::new(p.pg.tool("psql"))
        .args([
            "-X",
            "-q",
            &p.pg.url("sink"),
            "-c",
            "SELECT pg_advisory_lock(4242); SELECT pg_sleep(600)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = confirmed_lsn(&p);

    // when the source commits changes (and moves on well past them) while the sink cannot
    // commit,
    p.source(
        "UPDATE public.orders SET qty = 1 WHERE id <= 100;
         INSERT INTO public.orders SELECT i, 'held', 1 FROM generate_series(5001, 5100) i;",
    );
    let after_writes: u64 =
        p.pg.psql("source", "SELECT pg_current_wal_lsn() - '0/0'")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    p.source("CREATE TABLE public.unrelated (x int); DROP TABLE public.unrelated;");
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(8) {
        // then the slot is never confirmed past the held changes,
        let confirmed = confirmed_lsn(&p);
        assert!(
            confirmed < after_writes,
            "the slot was confirmed to {confirmed} (before the writes: {before}, after: \
             {after_writes}) while the sink had not committed them"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // and after a kill -9 and the sink's release, a restart delivers every change.
    sluice.kill9();
    // (The holder's backend sleeps on after its client goes: end it from the server. Until
    // then, the sink transaction it blocks holds back new slots across the cluster.)
    p.pg.psql(
        "sink",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'SELECT pg_advisory_lock(4242)%'",
    )
    .unwrap();
    let _ = holder.wait();
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
}

/// Waits until `sink`'s orders equal the source's (another cluster's).
fn wait_for_orders(p: &Pipeline, sink: &Postgres, sluice: &SluiceProcess) {
    let query = "SELECT * FROM public.orders t ORDER BY t::text";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let want = pg_rows(&p.pg, "source", query).unwrap();
        let got = pg_rows(sink, "sink", query).unwrap_or_default();
        if want == got {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sink has {} rows, the source {}\n{}",
            got.len(),
            want.len(),
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_sink_outage_holds_capture_back_and_loses_nothing() {
    // Given a local-mode pipeline into a sink on a server of its own,
    let p = Pipeline::postgres(SLUICE, "local_outage")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .build();
    let mut sink = Postgres::start().unwrap();
    sink.create_database("sink").unwrap();
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        config.replace(&p.pg.url("sink"), &sink.url("sink")),
    )
    .unwrap();
    let mut sluice = p.run();
    wait_for_orders(&p, &sink, &sluice);

    // when the sink's server stops while the source keeps changing,
    sink.stop();
    let writer =
        p.pg.write_in_rounds("source", 30, Duration::from_millis(100), |round| {
            format!(
                "UPDATE public.orders SET qty = qty + 1 WHERE id % 7 = {}; \
                 INSERT INTO public.orders VALUES ({}, 'during', 0)",
                round % 7,
                30_000 + round
            )
        });
    writer.join().unwrap();
    let after_writes: u64 =
        p.pg.psql("source", "SELECT pg_current_wal_lsn() - '0/0'")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // then the process waits it out (alive, not ready), the slot is not confirmed past what
    // the sink lacks,
    assert!(!sluice.has_exited(), "{}", sluice.log());
    assert!(
        confirmed_lsn(&p) < after_writes,
        "the slot was confirmed past changes the stopped sink never committed"
    );
    let (code, body) = sluice_harness::http_get(p.metrics_port, "/readyz").unwrap_or_default();
    assert!(
        code == 503 && body.contains("sink"),
        "/readyz: {code} {body}"
    );

    // and once the sink is back, everything arrives.
    sink.start_again().unwrap();
    wait_for_orders(&p, &sink, &sluice);
}

#[test]
fn one_capture_feeds_two_sinks_each_with_its_own_progress() {
    // Given a local-mode pipeline with a second sink database fed from the same capture,
    let p = Pipeline::postgres(SLUICE, "local_two")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .router("also_sinks = [\"second\"]")
        .build();
    p.pg.create_database("second").unwrap();
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        config.replace(
            "[router]",
            &format!(
                "[sinks.second]\nkind = \"postgres\"\nurl = \"{}\"\n\n[router]",
                p.pg.url("second")
            ),
        ),
    )
    .unwrap();
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));

    // when the source changes,
    p.source(
        "UPDATE public.orders SET qty = 5 WHERE id <= 50; DELETE FROM public.orders WHERE id > 1900;",
    );

    // then both sinks hold the source's rows, each recording its own progress.
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(60));
    let orders = "SELECT * FROM public.orders t ORDER BY t::text";
    wait_for_rows(
        &p.pg,
        &sluice,
        ("source", orders),
        ("second", orders),
        Duration::from_secs(60),
    );
    for db in ["sink", "second"] {
        let rows =
            p.pg.psql(
                db,
                "SELECT count(*) FROM public.sluice_offsets WHERE kafka_partition = -1",
            )
            .unwrap();
        assert_eq!(rows.trim(), "1", "{db}: local mode's progress row");
    }
}

#[test]
fn two_sources_feed_one_sink() {
    // Given a local-mode pipeline with a second PostgreSQL source (another database, its own
    // slot and table) into the same sink,
    let p = Pipeline::postgres(SLUICE, "local_many")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .build();
    p.pg.create_database("billing").unwrap();
    p.pg.psql(
        "billing",
        "CREATE TABLE public.invoices (id bigint PRIMARY KEY, total numeric(10,2) NOT NULL);
         INSERT INTO public.invoices SELECT i, i * 1.5 FROM generate_series(1, 500) i;",
    )
    .unwrap();
    let slot = p.pg.name("local_many_billing");
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        config.replace(
            "[sinks.warehouse]",
            &format!(
                "[sources.billing]\nkind = \"postgres\"\nurl = \"{}\"\n\
                 tables = [\"public.invoices\"]\nslot = \"{slot}\"\npublication = \"billing\"\n\n\
                 [sinks.warehouse]",
                p.pg.url("billing")
            ),
        ),
    )
    .unwrap();
    let sluice = p.run();

    // when both sources change,
    p.source("UPDATE public.orders SET qty = 9 WHERE id <= 10");
    p.pg.psql(
        "billing",
        "UPDATE public.invoices SET total = 0 WHERE id <= 10; DELETE FROM public.invoices WHERE id > 490",
    )
    .unwrap();

    // then the sink holds both sources' tables as they are.
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    let invoices = "SELECT * FROM public.invoices t ORDER BY t::text";
    wait_for_rows(
        &p.pg,
        &sluice,
        ("billing", invoices),
        ("sink", invoices),
        Duration::from_secs(60),
    );
}

#[test]
fn a_local_config_refuses_to_run_capture_or_router_apart() {
    let p = Pipeline::postgres(SLUICE, "local_apart")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .build();
    let out = p.run_until_exit("capture", &p.config, &[]);
    assert!(
        out.contains("local mode") && out.contains("sluice run"),
        "{out}"
    );
}

/// The pipeline's config in the other mode: its first section (`[local]` or `[kafka]`)
/// replaced, everything else (sources, their topic prefix, sinks, group) the same.
fn in_other_mode(p: &Pipeline, broker: &Broker, prefix: &str, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&p.config).unwrap();
    let end = text.find("\n\n").unwrap();
    let first = if text.starts_with("[local]") {
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nschema_topic = \"{prefix}_schemas\"\n\
             state_topic = \"{prefix}_state\"",
            broker.bootstrap()
        )
    } else {
        "[local]\nstate_dir = \"state\"".to_string()
    };
    let path = p.dir.path().join(name);
    std::fs::write(&path, format!("{first}{}", &text[end..])).unwrap();
    path
}

/// `sluice switch --from <from> --to <to>`: its exit status and output.
fn switch(from: &Path, to: &Path) -> (bool, String) {
    let out = Command::new(SLUICE)
        .args(["switch", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn snapshot_rows(sluice: &SluiceProcess) -> f64 {
    sluice.metric(
        "sluice_capture_snapshot_rows_total",
        &[("source", "pg_main"), ("table", "public.orders")],
    )
}

#[test]
fn a_deployment_moves_to_kafka_mode_and_back_without_a_snapshot_a_loss_or_a_double() {
    // Given a local-mode pipeline (its table topics named the same in both modes) whose slot
    // is confirmed rarely, so that after a crash the slot is well behind the sink,
    let prefix = format!("switch{}", std::process::id());
    let p = Pipeline::postgres(SLUICE, "local_switch")
        .local()
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .source(&format!(
            "topic_prefix = \"{prefix}.pg_main\"\nstatus_interval_ms = 600000"
        ))
        .build();
    let broker = Broker::shared().unwrap();
    let kafka = in_other_mode(&p, &broker, &prefix, "kafka.toml");
    let mut sluice = p.run();
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    let applies =
        p.pg.log_applies("sink", "public.orders", ("id", "bigint"), ("qty", "int"))
            .unwrap();
    let round = |n: i64| {
        p.source(&format!(
            "UPDATE public.orders SET qty = qty + 1 WHERE id % 5 = {}; \
             INSERT INTO public.orders VALUES ({}, 'r', 0); DELETE FROM public.orders WHERE id = {};",
            n % 5,
            20_000 + n,
            n * 11
        ));
    };
    round(1);
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(60));
    sluice.kill9();
    // (changes made while nothing runs are in the slot only)
    round(2);

    // when, after a crash, it is switched to Kafka mode and runs there,
    let (ok, out) = switch(&p.config, &kafka);
    assert!(ok, "{out}");
    let mut sluice = p.start_with("run", &kafka, &[]);
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    assert_eq!(snapshot_rows(&sluice), 0.0, "Kafka mode snapshotted again");
    round(3);
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(60));
    sluice.kill9();
    round(4);

    // and after another crash back to local mode,
    let (ok, out) = switch(&kafka, &p.config);
    assert!(ok, "{out}");
    let sluice = p.run();
    round(5);

    // then the sink equals the source, nothing was snapshotted again, and no row version was
    // written twice.
    p.wait_for_match(&sluice, &["public.orders"], Duration::from_secs(120));
    assert_eq!(snapshot_rows(&sluice), 0.0, "local mode snapshotted again");
    assert_eq!(
        applies.written_twice(),
        "",
        "row versions written twice (id|qty|times)"
    );
    assert_eq!(applies.went_back(), 0);
}

#[test]
fn switching_away_from_kafka_waits_until_the_sink_has_everything_in_kafka() {
    // Given a Kafka-mode deployment whose capture published changes no router applied,
    let prefix = format!("undrained{}", std::process::id());
    let p = Pipeline::postgres(SLUICE, "local_undrained")
        .ddl(ORDERS)
        .tables(&["public.orders"])
        .source(&format!("topic_prefix = \"{prefix}.pg_main\""))
        .build();
    let local = in_other_mode(&p, p.kafka(), &prefix, "local.toml");
    let mut capture = p.start("capture", &[]);
    capture.wait_for_metric(
        "sluice_capture_snapshot_rows_total",
        &[("source", "pg_main"), ("table", "public.orders")],
        Duration::from_secs(60),
        "the snapshot published",
        |v| v >= 2000.0,
    );
    // (a switch while capture runs is refused too)
    let active = format!(
        "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
        p.slot()
    );
    let waited = Instant::now();
    while p.pg.psql("source", &active).unwrap().trim() != "t" {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "capture never streamed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out) = switch(&p.config, &local);
    assert!(!ok && out.contains("stop Sluice"), "{out}");
    capture.terminate(Duration::from_secs(20));

    // when it is switched to local mode,
    let (ok, out) = switch(&p.config, &local);

    // then the switch is refused with the lag and what to do.
    assert!(!ok, "{out}");
    assert!(
        out.contains("has not applied everything in Kafka yet") && out.contains("sluice route"),
        "{out}"
    );
}
