//! End to end: PostgreSQL → capture → Tansu (Kafka protocol) → router → PostgreSQL sink.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{
    free_port, http_get, metric_value, output_of, Pipeline, PipelineBuilder, Postgres,
    SluiceProcess, TestCerts,
};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

const ORDERS_DDL: &str = "CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    qty integer,
    price numeric(12,2),
    weight real,
    ratio double precision,
    paid boolean,
    placed_on date,
    placed_at timestamptz,
    local_at timestamp,
    ref uuid,
    doc jsonb,
    blob bytea,
    note text
)";

const ORDERS_ROWS: &str = "SELECT * FROM public.orders ORDER BY id";

/// The shape of these tests' pipelines: three partitions (keys spread over them, truncates
/// and snapshots are barriers across them) and a 3 s stall timeout.
fn e2e(slot: &str, ddl: &str, tables: &[&str]) -> PipelineBuilder {
    Pipeline::postgres(SLUICE, slot)
        .ddl(ddl)
        .tables(tables)
        .kafka("partitions = 3")
        .observability("stall_timeout_ms = 3000")
}

/// The orders table's pipeline.
fn orders(slot: &str) -> PipelineBuilder {
    e2e(slot, ORDERS_DDL, &["public.orders"])
}

/// Waits until the sink's orders table equals the source's, row by row; fails with the first
/// difference when it does not within `timeout`.
fn wait_for_sink_to_match(p: &Pipeline, sluice: &SluiceProcess, timeout: Duration) {
    p.wait_for_match(sluice, &["public.orders"], timeout);
}

/// A pipeline with `sluice run` running on it.
struct Running {
    p: Pipeline,
    sluice: SluiceProcess,
}

impl Running {
    fn start(pipeline: PipelineBuilder) -> Running {
        let p = pipeline.build();
        let sluice = p.run();
        Running { p, sluice }
    }

    /// Starts sluice again with the same config (after a kill).
    fn restart_sluice(&mut self) {
        self.sluice = self.p.run();
    }
}

impl std::ops::Deref for Running {
    type Target = Pipeline;
    fn deref(&self) -> &Pipeline {
        &self.p
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Pipeline {
        &mut self.p
    }
}

#[test]
fn inserts_updates_and_deletes_reach_the_postgres_sink_row_for_row() {
    // Given a source table, an empty sink database, a broker and sluice running,
    let p = Running::start(orders("sluice_e2e"));
    let (pg, sluice) = (&p.pg, &p.sluice);

    // when a few thousand rows are inserted, updated and deleted in many transactions,
    for chunk in 0..6 {
        let lo = chunk * 500 + 1;
        let hi = lo + 499;
        pg.psql(
            "source",
            &format!(
                "INSERT INTO public.orders
                 SELECT i, 'customer ' || i, i % 17, (i * 1.25)::numeric(12,2), i / 3.0, i / 7.0, i % 2 = 0,
                        DATE '2020-01-01' + i, TIMESTAMPTZ '2024-03-01 12:00:00+02' + i * INTERVAL '37 minutes',
                        TIMESTAMP '1999-12-31 23:59:59.123456' - i * INTERVAL '1 day',
                        md5(i::text)::uuid, jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i)),
                        decode(md5(i::text), 'hex'), CASE WHEN i % 5 = 0 THEN NULL ELSE 'note ' || i END
                 FROM generate_series({lo}, {hi}) AS i"
            ),
        )
        .unwrap();
    }
    pg.psql(
        "source",
        "UPDATE public.orders SET qty = qty + 100, paid = NOT paid WHERE id % 3 = 0",
    )
    .unwrap();
    pg.psql("source", "DELETE FROM public.orders WHERE id % 7 = 0")
        .unwrap();
    // Toasted values, then an update that leaves them unchanged (pgoutput does not resend them).
    pg.psql(
        "source",
        "UPDATE public.orders SET note = repeat(md5(id::text), 400) WHERE id % 11 = 0",
    )
    .unwrap();
    pg.psql(
        "source",
        "UPDATE public.orders SET qty = -1 WHERE id % 11 = 0",
    )
    .unwrap();
    // Primary-key changes, and one transaction that touches the same rows several times.
    pg.psql(
        "source",
        "UPDATE public.orders SET id = id + 100000 WHERE id BETWEEN 10 AND 30",
    )
    .unwrap();
    pg.psql(
        "source",
        "BEGIN;
         UPDATE public.orders SET qty = 1 WHERE id BETWEEN 40 AND 60;
         DELETE FROM public.orders WHERE id BETWEEN 50 AND 55;
         INSERT INTO public.orders (id, customer, ratio, weight, price) VALUES (50, 'reborn', 'NaN', '-Infinity', 0.01);
         UPDATE public.orders SET qty = 2 WHERE id BETWEEN 40 AND 60;
         COMMIT;",
    )
    .unwrap();

    // then the sink holds exactly the source's rows,
    wait_for_sink_to_match(&p, sluice, Duration::from_secs(180));
    let rows = pg_rows(pg, "sink", ORDERS_ROWS).unwrap();
    assert!(
        rows.len() > 2500,
        "expected thousands of rows, got {}",
        rows.len()
    );
    assert!(
        pg.psql(
            "sink",
            "SELECT count(*) FROM public.orders WHERE length(note) > 10000"
        )
        .unwrap()
        .trim()
            != "0",
        "toasted notes must survive an update that did not resend them"
    );

    // and the counters say what happened, per table.
    let metrics = sluice.metrics().expect("metrics endpoint answers");
    let captured = metric_value(
        &metrics,
        "sluice_capture_events_total",
        &[("table", "public.orders")],
    )
    .unwrap_or(0.0);
    let applied = metric_value(
        &metrics,
        "sluice_sink_events_applied_total",
        &[("table", "public.orders")],
    )
    .unwrap_or(0.0);
    assert!(captured >= 3000.0, "captured {captured} events\n{metrics}");
    assert!(applied >= 3000.0, "applied {applied} events\n{metrics}");

    // The comparison is not vacuous: one corrupted sink row is reported.
    pg.psql(
        "sink",
        "UPDATE public.orders SET qty = 424242 WHERE id = (SELECT min(id) FROM public.orders)",
    )
    .unwrap();
    let source = pg_rows(pg, "source", ORDERS_ROWS).unwrap();
    let sink = pg_rows(pg, "sink", ORDERS_ROWS).unwrap();
    let err = compare_rows(&source, &sink).expect_err("a corrupted row must be detected");
    assert!(err.contains("424242"), "{err}");
}

fn confirmed_flush_lsn(pg: &Postgres, slot: &str) -> String {
    pg.psql(
        "source",
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .unwrap()
    .trim()
    .to_string()
}

fn lsn_at_least(pg: &Postgres, a: &str, b: &str) -> bool {
    pg.psql("source", &format!("SELECT '{a}'::pg_lsn >= '{b}'::pg_lsn"))
        .unwrap()
        .trim()
        == "t"
}

#[test]
fn slot_advances_only_past_what_kafka_acknowledged_and_a_crash_loses_nothing() {
    // Given a running pipeline over a broker whose storage survives restarts,
    let mut p = Running::start(orders("sluice_restart").own_broker());
    let (pg, slot) = (&p.p.pg, &p.p.slot().to_string());

    // when changes are captured and acknowledged, the slot moves past them;
    let before_first = pg
        .psql("source", "SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .to_string();
    pg.psql("source", "INSERT INTO public.orders (id, customer) SELECT i, 'c' || i FROM generate_series(1, 1000) i")
        .unwrap();
    wait_for_sink_to_match(&p, &p.sluice, Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Strictly past: the slot may still stand exactly where the insert began.
        let confirmed = confirmed_flush_lsn(pg, slot);
        if confirmed != before_first && lsn_at_least(pg, &confirmed, &before_first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never advanced past acknowledged changes (at {confirmed})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // when the broker is down, changes are read but not acknowledged: the slot stays before
    // their commit (a keepalive the server sends while the transaction's rows are being
    // written may move it into them: the transaction still comes again, as its commit is
    // past the slot);
    p.p.broker.as_mut().unwrap().kill();
    let before_commit = pg
        .psql(
            "source",
            "BEGIN; INSERT INTO public.orders (id, customer) SELECT i, 'c' || i FROM generate_series(1001, 2000) i; \
             SELECT pg_current_wal_lsn(); COMMIT;",
        )
        .unwrap()
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(4));
    let during_outage = confirmed_flush_lsn(pg, slot);
    assert!(
        lsn_at_least(pg, &before_commit, &during_outage),
        "slot confirmed {during_outage}, past the commit at {before_commit}, while Kafka could not acknowledge"
    );
    // /readyz says so: capture's events wait for acknowledgement past the stall timeout (3 s),
    // and the router sees no broker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(p.sluice.metrics_port, "/readyz").unwrap_or_default();
        if code == 503
            && body.contains("capture pg_main: work pending without progress for")
            && body.contains("router: not connected to broker")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz during the broker outage: {code} {body}\n{}",
            p.sluice.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // and when sluice is then killed outright, the broker comes back and more changes arrive,
    p.sluice.kill9();
    p.p.broker.as_mut().unwrap().restart().unwrap();
    let pg = &p.pg;
    pg.psql(
        "source",
        "UPDATE public.orders SET qty = 7 WHERE id % 2 = 0",
    )
    .unwrap();
    pg.psql("source", "DELETE FROM public.orders WHERE id % 10 = 0")
        .unwrap();

    // a restarted sluice brings the sink to exactly the source's rows.
    p.restart_sluice();
    let pg = &p.pg;
    wait_for_sink_to_match(&p, &p.sluice, Duration::from_secs(180));
    let offsets = pg
        .psql(
            "sink",
            "SELECT count(*) FROM public.sluice_offsets WHERE kafka_offset >= 0",
        )
        .unwrap();
    assert_eq!(
        offsets.trim(),
        "3",
        "each of the topic's three partitions has its progress recorded in the sink"
    );
}

#[test]
fn a_value_avro_cannot_carry_is_sent_as_null_and_the_stream_goes_on() {
    // Given a running pipeline,
    let p = Running::start(orders("sluice_nan"));
    let (pg, sluice) = (&p.pg, &p.sluice);

    // when a numeric(12,2) NaN (no Avro decimal can hold it) is followed by ordinary rows,
    pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer, price) VALUES (1, 'nan', 'NaN')",
    )
    .unwrap();
    pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer, price) VALUES (2, 'after', 2.50)",
    )
    .unwrap();

    // then the later rows arrive, the NaN row arrives with a NULL price, and the error is counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = pg_rows(
            pg,
            "sink",
            "SELECT id, customer, price FROM public.orders ORDER BY id",
        )
        .unwrap_or_default();
        if rows == ["1|nan|", "2|after|2.50"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sink has {rows:?}\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = sluice.metrics().unwrap();
    let value_errors = metric_value(
        &metrics,
        "sluice_capture_errors_total",
        &[("kind", "value")],
    )
    .unwrap_or(0.0);
    assert_eq!(value_errors, 1.0, "{metrics}");
    assert!(sluice
        .log()
        .contains("value could not be converted; sent as NULL"));
}

/// Two tables with rows before sluice ever starts.
const SNAPSHOT_DDL: &str = "
    CREATE TABLE public.small (id int PRIMARY KEY, label text, tags text);
    INSERT INTO public.small SELECT i, 'small ' || i, E'tab\\there\\nnewline \\\\ backslash' FROM generate_series(1, 2000) i;
    CREATE TABLE public.big (id bigint PRIMARY KEY, v integer, payload text, at timestamptz);
    INSERT INTO public.big SELECT i, i % 1000, md5(i::text), TIMESTAMPTZ '2026-01-01 00:00:00+00' + i * INTERVAL '1 second'
      FROM generate_series(1, 150000) i;";

fn snapshot_pipeline(slot: &str, parallelism: usize) -> Pipeline {
    e2e(slot, SNAPSHOT_DDL, &["public.small", "public.big"])
        .source(&format!("snapshot_parallelism = {parallelism}"))
        .build()
}

#[test]
fn existing_rows_and_writes_during_the_snapshot_reach_the_sink_exactly_once() {
    // Given tables with rows, and a writer changing them from before sluice starts,
    let p = snapshot_pipeline("sluice_snap", 2);
    let pg = &p.pg;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let id = 1 + (i * 7919) % 150_000;
                pg.psql(
                    "source",
                    &format!(
                        "BEGIN;
                         UPDATE public.big SET v = v + 1, payload = 'w{i}' WHERE id = {id};
                         DELETE FROM public.big WHERE id = {};
                         INSERT INTO public.big VALUES ({}, {i}, 'new', now());
                         UPDATE public.small SET label = 'w{i}' WHERE id = {};
                         COMMIT;",
                        (id + 1) % 150_000 + 1,
                        200_000 + i,
                        1 + i % 2000
                    ),
                )
                .unwrap();
            }
            i
        });
        // when sluice starts and snapshots while the writer keeps going until well after the
        // snapshot has finished,
        let sluice = p.run();
        let deadline = Instant::now() + Duration::from_secs(180);
        while !sluice.log().contains("snapshot finished") {
            assert!(
                Instant::now() < deadline,
                "snapshot did not finish\n{}",
                sluice.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let writes = writer.join().unwrap();

        // then both tables match row for row,
        p.wait_for_match(
            &sluice,
            &["public.small", "public.big"],
            Duration::from_secs(180),
        );
        // the snapshot read the rows and the stream carried the writes made during it.
        let snapshot_rows = sluice.metric(
            "sluice_capture_snapshot_rows_total",
            &[("table", "public.big")],
        );
        let streamed = sluice.metric(
            "sluice_capture_events_total",
            &[("table", "public.big"), ("op", "u")],
        );
        assert!(
            snapshot_rows >= 149_000.0,
            "snapshot read {snapshot_rows} rows of public.big"
        );
        assert!(
            writes > 10 && streamed > 0.0,
            "{writes} writer transactions, {streamed} streamed updates"
        );
    });
}

#[test]
fn a_crash_mid_snapshot_resumes_without_redoing_finished_tables() {
    // Given a snapshot reading one table at a time (small first, then big),
    let p = snapshot_pipeline("sluice_snap_crash", 1);
    let pg = &p.pg;
    let mut sluice = p.run();

    // when it is killed while reading the second table,
    let deadline = Instant::now() + Duration::from_secs(120);
    while sluice.metric(
        "sluice_capture_snapshot_rows_total",
        &[("table", "public.big")],
    ) < 5_000.0
    {
        assert!(
            Instant::now() < deadline,
            "big table snapshot never started\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sluice
            .log()
            .contains("table snapshot finished table=public.small"),
        "the small table finished before the kill\n{}",
        sluice.log()
    );
    sluice.kill9();
    // and both tables change while it is down (rows the interrupted snapshot may have sent
    // are deleted),
    pg.psql("source", "DELETE FROM public.big WHERE id <= 3000; UPDATE public.small SET label = 'after crash' WHERE id <= 10")
        .unwrap();

    // then a restart snapshots only the unfinished table, and both tables match the source.
    let sluice = p.run();
    p.wait_for_match(
        &sluice,
        &["public.small", "public.big"],
        Duration::from_secs(240),
    );
    assert_eq!(
        sluice.metric(
            "sluice_capture_snapshot_rows_total",
            &[("table", "public.small")]
        ),
        0.0,
        "the finished table was not read again"
    );
    assert_eq!(
        sluice.metric(
            "sluice_capture_snapshot_rows_total",
            &[("table", "public.big")]
        ),
        147_000.0
    );
}

#[test]
fn schema_changes_truncate_and_full_identity_flow_through_without_a_restart() {
    // Given a running pipeline over a table with REPLICA IDENTITY FULL,
    let p = Running::start(orders("sluice_ddl"));
    let (pg, sluice) = (&p.pg, &p.sluice);
    pg.psql("source", "ALTER TABLE public.orders REPLICA IDENTITY FULL")
        .unwrap();
    pg.psql("source", "INSERT INTO public.orders (id, customer, qty) SELECT i, 'c' || i, i FROM generate_series(1, 100) i")
        .unwrap();
    pg.psql(
        "source",
        "UPDATE public.orders SET qty = qty * 10 WHERE id <= 10",
    )
    .unwrap();
    wait_for_sink_to_match(&p, sluice, Duration::from_secs(60));

    // when the table is truncated and refilled,
    pg.psql("source", "TRUNCATE public.orders").unwrap();
    pg.psql("source", "INSERT INTO public.orders (id, customer, qty) SELECT i, 'again ' || i, i FROM generate_series(50, 80) i")
        .unwrap();
    wait_for_sink_to_match(&p, sluice, Duration::from_secs(60));

    // and its columns are added, retyped, renamed and dropped between changes,
    pg.psql(
        "source",
        "ALTER TABLE public.orders ADD COLUMN region text DEFAULT 'eu'",
    )
    .unwrap();
    pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer, region) VALUES (200, 'added', 'us')",
    )
    .unwrap();
    // (a column added right before a rewrite: the rewrite clears `attmissingval` before
    // capture ever reads the catalog for the new column)
    pg.psql(
        "source",
        "ALTER TABLE public.orders ADD COLUMN channel text DEFAULT 'web'; \
         ALTER TABLE public.orders ALTER COLUMN qty TYPE bigint",
    )
    .unwrap();
    pg.psql(
        "source",
        "UPDATE public.orders SET qty = 123456 WHERE id = 51",
    )
    .unwrap();
    pg.psql(
        "source",
        "ALTER TABLE public.orders RENAME COLUMN note TO remark",
    )
    .unwrap();
    pg.psql(
        "source",
        "UPDATE public.orders SET remark = 'renamed' WHERE id = 52",
    )
    .unwrap();
    pg.psql("source", "ALTER TABLE public.orders DROP COLUMN blob")
        .unwrap();
    pg.psql("source", "INSERT INTO public.orders (id, customer, remark, region) VALUES (201, 'after drop', 'r', 'apac')").unwrap();

    // then every change arrives in order, with the columns each version had.
    let query = "SELECT id, customer, qty, region, channel, remark FROM public.orders ORDER BY id";
    let sink_query = query;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let source = pg_rows(pg, "source", query).unwrap();
        let sink = pg_rows(pg, "sink", sink_query);
        match sink.map(|sink| compare_rows(&source, &sink)) {
            Ok(Ok(())) => break,
            other => assert!(Instant::now() < deadline, "{other:?}\n{}", sluice.log()),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = sluice.metrics().unwrap();
    assert_eq!(
        metric_value(&metrics, "sluice_capture_events_total", &[("op", "t")]),
        Some(1.0)
    );
    // One key schema, and a value schema per version: initial, +region, +channel with qty
    // bigint, note→remark, -blob.
    assert_eq!(
        metric_value(&metrics, "sluice_capture_schemas_published_total", &[]),
        Some(6.0)
    );
}

#[test]
fn an_idle_source_does_not_hold_back_wal_while_other_databases_write() {
    // Given capture of an idle database with frequent heartbeats,
    let p = orders("sluice_idle")
        .source("heartbeat_interval_ms = 200")
        .build();
    let (pg, slot) = (&p.pg, p.slot());
    pg.create_database("busy").unwrap();
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when another database on the same server writes a lot of WAL,
    pg.psql(
        "busy",
        "CREATE TABLE churn (id int, payload text);
         INSERT INTO churn SELECT i, repeat(md5(i::text), 10) FROM generate_series(1, 50000) i;",
    )
    .unwrap();
    let lag = |pg: &Postgres| -> i64 {
        pg.psql(
            "source",
            &format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ),
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };
    let written = pg
        .psql(
            "busy",
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
        )
        .unwrap();
    assert!(
        lag(pg) > 1_000_000,
        "the churn wrote WAL the slot has not confirmed yet (wrote {written})"
    );

    // then the slot's confirmed position follows the server's WAL within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lag(pg) > 256 * 1024 {
        assert!(
            Instant::now() < deadline,
            "slot still {} bytes behind\n{}",
            lag(pg),
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn capture_authenticates_with_scram_and_a_password_from_the_environment_never_logged() {
    // Given a source user that must authenticate with SCRAM-SHA-256, its password known only
    // to the environment,
    // (A cluster of its own: the test changes pg_hba.conf.)
    let p = orders("sluice_scram").own_postgres().build();
    let pg = &p.pg;
    pg.psql(
        "source",
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE cdc LOGIN REPLICATION PASSWORD 'scram-secret-42';
         GRANT SELECT ON public.orders TO cdc;
         CREATE PUBLICATION sluice_scram FOR TABLE public.orders;",
    )
    .unwrap();
    pg.require_scram_for("cdc").unwrap();
    p.edit_config(
        &pg.url("source"),
        &format!("postgresql://cdc@127.0.0.1:{}/source", pg.port),
    );

    // when sluice runs with the wrong password, it stops with the server's reason;
    let log = p.run_until_exit(
        "run",
        &p.config,
        &[("SLUICE_SOURCES_PG_MAIN_PASSWORD", "not-the-password")],
    );
    assert!(
        log.contains("capture stopped error=source query failed: db error: FATAL: password authentication failed"),
        "{log}"
    );

    // and with the right one, changes flow and the password appears in no log line.
    let sluice = p.start(
        "run",
        &[("SLUICE_SOURCES_PG_MAIN_PASSWORD", "scram-secret-42")],
    );
    pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer) SELECT i, 'c' || i FROM generate_series(1, 50) i",
    )
    .unwrap();
    wait_for_sink_to_match(&p, &sluice, Duration::from_secs(60));
    assert!(!sluice.log().contains("scram-secret-42"));
}

#[test]
fn a_pgbench_workload_running_through_snapshot_and_stream_arrives_row_for_row() {
    // Given pgbench's own schema and data (100,000 accounts),
    let tables = [
        "public.pgbench_accounts",
        "public.pgbench_branches",
        "public.pgbench_tellers",
    ];
    let p = e2e("sluice_pgbench", "", &tables).build();
    let pg = &p.pg;
    let pgbench = |args: &[&str]| pg.pgbench("source", args);
    pgbench(&["-i", "-s", "1", "-q"]);

    // when sluice starts (snapshotting) while pgbench's TPC-B-like load runs with 4 clients,
    let sluice = p.run();
    let report = pgbench(&["-c", "4", "-j", "2", "-T", "15", "-n"]);
    let tps = report
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .to_string();

    // then every keyed pgbench table matches the source row for row.
    p.wait_for_match(&sluice, &tables, Duration::from_secs(240));
    let updates = sluice.metric(
        "sluice_sink_events_applied_total",
        &[("table", "public.pgbench_accounts"), ("op", "u")],
    );
    assert!(
        updates > 1000.0,
        "pgbench updated accounts {updates} times through the pipeline ({tps})"
    );
    eprintln!("pgbench {tps}; {updates} account updates applied");
}

/// A column of every PostgreSQL 15 built-in type family, plus a user enum, domains, a composite
/// and an extension type (hstore).
const EVERY_TYPE_DDL: &str = r#"
    CREATE EXTENSION hstore;
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE DOMAIN short_text AS varchar(20);
    CREATE TYPE address AS (street text, zip int);
    CREATE TABLE public.every_type (
        id int PRIMARY KEY,
        i2 smallint, i4 integer, i8 bigint,
        dec numeric(40,10), num numeric, f4 real, f8 double precision, cash money,
        t text, vc varchar(10), ch char(5), ba bytea, b boolean,
        d date, tm time(6), ttz timetz, ts timestamp, tstz timestamptz, iv interval,
        u uuid, j json, jb jsonb, x xml,
        ip inet, net cidr, mac macaddr, mac8 macaddr8, bits bit(8), vbits varbit(16),
        m mood, pi posint, st short_text, addr address,
        r4 int4range, rts tstzrange, rnum numrange, mr int4multirange,
        ai int[], at text[], adec numeric(6,2)[], ad date[], atstz timestamptz[], au uuid[],
        am mood[], ab box[], aj jsonb[], af float8[],
        tsv tsvector, tsq tsquery,
        pt point, ln line, ls lseg, bx box, pa path, pg polygon, ci circle,
        lsn pg_lsn, o oid, hs hstore
    );
    ALTER TABLE public.every_type REPLICA IDENTITY FULL;
    INSERT INTO public.every_type VALUES (
        1, -32768, 2147483647, -9223372036854775808,
        '-123456789012345678901234567890.0123456789', 'NaN', 'NaN', '-Infinity', '-92233720368547758.08',
        E'tab\there\nnew "quote" \\ back héllo ✓', 'ten chars!', 'ab', '\x00ff', true,
        '5874897-12-31', '24:00:00', '23:59:59.999999-15:59', '294246-12-31 23:59:59.999999',
        '2026-11-23 05:36:19.5+05:30', '1 year 2 mons -3 days 04:05:06.789',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1,  "a": [1,2], "b": 2}', '{"b": 1, "a": [1, 2.50]}',
        '<a b="1">text &amp; more</a>',
        '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'10101010', B'101',
        'happy', 42, 'short', ROW('Main "St", 1', 12345),
        '[1,10)', '[2026-01-01 00:00+00,infinity)', '(,5.5]', '{[1,3),[5,8)}',
        '{1,NULL,-3}', ARRAY['a b', NULL, 'q"x', 'NULL', '', E'back\\slash', '{braces}', 'com,ma'],
        '{1.50,-2.25,NULL}', '{2026-11-23,infinity,0044-03-15 BC}', ARRAY['2026-11-23 05:36:19.5+00'::timestamptz],
        ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid], '{happy,sad}',
        ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))'], ARRAY['{"a": "x,y"}'::jsonb, NULL], '{NaN,Infinity,-0,1e-300}',
        'a fat cat sat on a mat', 'fat & (rat | cat)',
        '(1.5,-2)', '{1,-1,0}', '[(0,0),(1,1)]', '((0,0),(1,1))', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(0,0),2.5>',
        '16/B374D848', 4294967295, 'a=>1, "b c"=>NULL'
    ), (
        2, 32767, -2147483648, 9223372036854775807,
        '0.0000000001', '123456789012345678901234567890123456789012345678901234567890.000000000000000000001',
        '3.4028235e38', '1e-300', '0', '', '', '', '', false,
        '4714-11-24 BC', '00:00:00.000001', '00:00:00+00', '4713-01-01 00:00:00 BC', '-infinity',
        '-178000000 years', '00000000-0000-0000-0000-000000000000', '[]', '{}', '<empty/>',
        '::1', '::/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', B'00000000', B'',
        'sad', 1, '', ROW(NULL, NULL), 'empty', '(,)', '[-1e30,1e30]', '{}',
        '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{-Infinity}',
        '', '!x', '(0,0)', '{0,1,0}', '[(0,0),(0,0)]', '((0,0),(0,0))', '((0,0))', '((0,0))', '<(0,0),0>',
        '0/0', 0, ''
    );
    INSERT INTO public.every_type (id) VALUES (3);"#;

const EVERY_TYPE_ROWS: &str = "SELECT * FROM public.every_type ORDER BY id";

#[test]
fn every_postgres_type_survives_snapshot_and_stream_exactly() {
    // Given a table with a column of every type and rows of extreme values and NULLs,
    let p = e2e("sluice_types", EVERY_TYPE_DDL, &["public.every_type"]).build();
    let sluice = p.run();
    let pg = &p.pg;

    // then the snapshot's rows reach the sink with every value's text form unchanged,
    p.wait_for_query(
        &sluice,
        EVERY_TYPE_ROWS,
        EVERY_TYPE_ROWS,
        Duration::from_secs(90),
    );

    // and so do the same values when streamed: inserted, updated and deleted.
    pg.psql(
        "source",
        "CREATE TEMP TABLE copy AS SELECT * FROM public.every_type; UPDATE copy SET id = id + 10; \
         INSERT INTO public.every_type SELECT * FROM copy; \
         UPDATE public.every_type SET i4 = i4 / 2, at = at || ARRAY['added'], iv = iv * 2 WHERE id = 11; \
         UPDATE public.every_type SET ai = NULL, m = 'ok' WHERE id = 12; \
         DELETE FROM public.every_type WHERE id = 13;",
    )
    .unwrap();
    p.wait_for_query(
        &sluice,
        EVERY_TYPE_ROWS,
        EVERY_TYPE_ROWS,
        Duration::from_secs(60),
    );

    // The sink made the same types where it has them; an enum, a composite and an extension
    // type it lacks became text, and domains their base type.
    let sink_types = pg_rows(
        pg,
        "sink",
        "SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'public.every_type'::regclass AND attname IN \
         ('cash','iv','ttz','dec','j','jb','ip','bits','r4','mr','ai','adec','am','ab','m','addr','pi','hs','pt','tsv') \
         ORDER BY attname",
    )
    .unwrap();
    assert_eq!(
        sink_types,
        [
            "ab box[]",
            "addr text",
            "adec numeric(6,2)[]",
            "ai integer[]",
            "am text[]",
            "bits bit(8)",
            "cash money",
            "dec numeric(40,10)",
            "hs text",
            "ip inet",
            "iv interval",
            "j json",
            "jb jsonb",
            "m text",
            "mr int4multirange",
            "pi integer",
            "pt point",
            "r4 int4range",
            "tsv tsvector",
            "ttz time with time zone",
        ]
    );
    // Only the extension type is worth a warning: the others have a documented mapping.
    let log = sluice.log();
    assert!(
        log.contains("type is not built in; carried in its text form") && log.contains("hstore"),
        "{log}"
    );
    assert_eq!(
        sluice.metric("sluice_capture_errors_total", &[("kind", "value")]),
        0.0
    );

    // A multi-dimensional array does not fit an Avro array: NULL, an error, and the rest goes on.
    pg.psql(
        "source",
        "INSERT INTO public.every_type (id, ai, t) VALUES (99, '{{1,2},{3,4}}', 'after')",
    )
    .unwrap();
    let query = "SELECT id, t FROM public.every_type WHERE id = 99";
    p.wait_for_query(&sluice, query, query, Duration::from_secs(60));
    let sink = pg_rows(
        pg,
        "sink",
        "SELECT ai IS NULL FROM public.every_type WHERE id = 99",
    )
    .unwrap();
    assert_eq!(sink, ["t"]);
    assert_eq!(
        sluice.metric("sluice_capture_errors_total", &[("kind", "value")]),
        1.0
    );
    assert!(sluice.log().contains("multi-dimensional"));
}

/// Rewrites the source url's host and appends a `[sources.pg_main.tls]` table.
fn with_source_tls(config: &Path, pg: &Postgres, host: &str, tls: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(config).unwrap().replace(
        &pg.url("source"),
        &format!("postgresql://postgres@{host}:{}/source", pg.port),
    );
    let path = config.with_file_name(format!("tls-{}.toml", free_port()));
    std::fs::write(&path, format!("{text}\n[sources.pg_main.tls]\n{tls}\n")).unwrap();
    path
}

#[test]
fn capture_talks_tls_to_the_source_and_refuses_a_certificate_it_cannot_verify() {
    // Given a source that refuses connections without TLS, with a certificate for `localhost`
    // signed by our CA,
    // (A cluster of its own: the test turns TLS on.)
    let p = orders("sluice_tls").own_postgres().build();
    let pg = &p.pg;
    let certs = TestCerts::generate(&["DNS:localhost"]).unwrap();
    pg.enable_tls(&certs.server_cert, &certs.server_key, &["source"])
        .unwrap();
    let base = p.config.clone();
    let ca = certs.ca.display();

    // when capture trusts another CA, it stops and says why;
    let other = with_source_tls(
        &base,
        pg,
        "localhost",
        &format!(
            "mode = \"verify-full\"\nca_file = \"{}\"",
            certs.other_ca.display()
        ),
    );
    let log = p.run_until_exit("run", &other, &[]);
    assert!(
        log.contains("invalid peer certificate") && log.contains("check tls.ca_file"),
        "{log}"
    );

    // when it reaches the server by an address the certificate does not name, verify-full
    // stops too;
    let by_ip = with_source_tls(
        &base,
        pg,
        "127.0.0.1",
        &format!("mode = \"verify-full\"\nca_file = \"{ca}\""),
    );
    let log = p.run_until_exit("run", &by_ip, &[]);
    assert!(
        log.contains("invalid peer certificate") && log.contains("certificate not valid for name"),
        "{log}"
    );

    // and with the right CA and name, changes flow (the server refuses plain connections to
    // `source` and to replication, so every capture connection is encrypted).
    let good = with_source_tls(
        &base,
        pg,
        "localhost",
        &format!("mode = \"verify-full\"\nca_file = \"{ca}\""),
    );
    let mut sluice = p.start_with("run", &good, &[]);
    pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer) SELECT i, 'c' || i FROM generate_series(1, 50) i",
    )
    .unwrap();
    wait_for_sink_to_match(&p, &sluice, Duration::from_secs(60));
    let walsenders = pg
        .psql(
            "postgres",
            "SELECT count(*) || ' ' || bool_and(s.ssl) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
        )
        .unwrap();
    assert_eq!(walsenders.trim(), "1 true");
    sluice.kill9();

    // verify-ca checks the chain only, so the address form works there.
    let chain_only = with_source_tls(
        &base,
        pg,
        "127.0.0.1",
        &format!("mode = \"verify-ca\"\nca_file = \"{ca}\""),
    );
    let sluice = p.start_with("run", &chain_only, &[]);
    pg.psql("source", "UPDATE public.orders SET qty = id WHERE id <= 10")
        .unwrap();
    wait_for_sink_to_match(&p, &sluice, Duration::from_secs(60));
}

#[test]
fn sigterm_under_load_drains_exits_0_and_a_restart_loses_nothing() {
    // Given a pipeline and a writer that keeps changing the source,
    let mut p = Running::start(orders("sluice_sigterm"));
    let url = p.pg.url("source");
    let psql_bin = std::path::PathBuf::from("/usr/lib/postgresql/15/bin/psql");
    let writer = std::thread::spawn(move || {
        for i in 1..=400 {
            let sql = format!(
                "INSERT INTO public.orders (id, customer, qty) VALUES ({i}, 'c{i}', {i}); \
                 UPDATE public.orders SET qty = qty + 1 WHERE id = {};",
                1 + i / 2
            );
            let status = std::process::Command::new(&psql_bin)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", &sql])
                .status()
                .unwrap();
            assert!(status.success());
        }
    });

    // when sluice gets SIGTERM in the middle of it,
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let status = p.sluice.terminate(Duration::from_secs(40));
    let took = started.elapsed();

    // then it drains and exits 0 well within the drain timeout, saying so,
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}\n{}",
        p.sluice.log()
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let log = p.sluice.log();
    assert!(log.contains("capture stopped cleanly"), "{log}");
    assert!(log.contains("router stopped cleanly"), "{log}");

    // and once restarted, the sink ends up equal to the source.
    p.restart_sluice();
    writer.join().unwrap();
    wait_for_sink_to_match(&p, &p.sluice, Duration::from_secs(90));
    eprintln!("SIGTERM to exit: {took:?}");
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[test]
fn the_broker_killed_and_down_for_a_minute_mid_stream_loses_nothing_and_doubles_nothing() {
    // Given capture and router running as processes of their own (as a deployment runs
    // them), streaming orders, and an observer at the sink that logs every row version
    // written,
    let mut p = orders("sluice_broker_down").own_broker().build();
    let mut sluice = p.run();
    sluice.terminate(Duration::from_secs(20));
    sluice = SluiceProcess::start(
        Path::new(SLUICE),
        "capture",
        &p.config,
        &p.dir.path().join("capture.log"),
        p.metrics_port,
    )
    .unwrap();
    let router_port = free_port();
    let router_config = p.dir.path().join("router.toml");
    std::fs::write(
        &router_config,
        std::fs::read_to_string(&p.config).unwrap().replace(
            &format!("127.0.0.1:{}", p.metrics_port),
            &format!("127.0.0.1:{router_port}"),
        ),
    )
    .unwrap();
    let mut router = SluiceProcess::start(
        Path::new(SLUICE),
        "route",
        &router_config,
        &p.dir.path().join("router.log"),
        router_port,
    )
    .unwrap();
    p.pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer, qty) SELECT i, 'c' || i, 0 FROM generate_series(1, 200) i",
    )
    .unwrap();
    wait_for_sink_to_match(&p, &router, Duration::from_secs(120));
    let applies =
        p.pg.log_applies("sink", "public.orders", ("id", "bigint"), ("qty", "int"))
            .unwrap();

    // when writes go on while the broker is killed -9 and stays down for a minute,
    let writer =
        p.pg.write_in_rounds("source", 80, Duration::from_secs(1), |round| {
            format!(
                "UPDATE public.orders SET qty = qty + 1 WHERE id % 8 = {}; \
                 INSERT INTO public.orders (id, customer, qty) VALUES ({}, 'late', 0)",
                round % 8,
                1000 + round
            )
        });
    std::thread::sleep(Duration::from_secs(5));
    p.broker.as_mut().unwrap().kill();
    let pids = [sluice.pid(), router.pid()].map(|pid| pid.expect("both run"));
    let mut peak = [0.0f64; 2];
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(60) {
        for (peak, pid) in peak.iter_mut().zip(pids) {
            *peak = peak.max(rss_mib(pid));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for process in [&mut sluice, &mut router] {
        assert!(
            !process.has_exited(),
            "a process exited while the broker was down:\n{}",
            process.log()
        );
    }
    p.broker.as_mut().unwrap().restart().unwrap();
    writer.join().unwrap();

    // then, once it is back, the sink equals the source row for row, no row version was
    // written twice or went backwards, and memory stayed bounded meanwhile.
    wait_for_sink_to_match(&p, &router, Duration::from_secs(180));
    assert!(!sluice.has_exited(), "{}", sluice.log());
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

    let [capture, routing] = peak;
    eprintln!(
        "while the broker was down for 60 s, capture peaked at {capture:.0} MiB resident and the router at {routing:.0} MiB"
    );
    for peak in peak {
        assert!(
            peak > 0.0 && peak < 512.0,
            "a process peaked at {peak:.0} MiB"
        );
    }
}

#[test]
fn reset_state_reads_every_table_anew_in_a_new_epoch_and_a_damaged_sink_is_made_equal() {
    // Given orders captured into the sink,
    let mut p = Running::start(orders("sluice_reset"));
    p.pg.psql(
        "source",
        "INSERT INTO public.orders (id, customer, qty) SELECT i, 'c' || i, i FROM generate_series(1, 200) i",
    )
    .unwrap();
    wait_for_sink_to_match(&p, &p.sluice, Duration::from_secs(60));
    p.sluice.terminate(Duration::from_secs(20));

    // when the sink is damaged by hand (rows deleted, a row changed) and the source changes
    // while sluice is down, and the documented recovery is run,
    p.pg.psql(
        "sink",
        "DELETE FROM public.orders WHERE id <= 20; UPDATE public.orders SET qty = -1 WHERE id = 100",
    )
    .unwrap();
    p.pg.psql(
        "source",
        "UPDATE public.orders SET qty = 0 WHERE id % 10 = 0; DELETE FROM public.orders WHERE id = 150",
    )
    .unwrap();
    output_of(
        std::process::Command::new(SLUICE)
            .args(["reset-state", "--source", "pg_main", "--config"])
            .arg(&p.config),
    );

    // then sluice reads the table anew (cleared first, in a new epoch whose positions sort
    // above those the sink recorded), the sink equals the source row for row, and changes
    // after that flow as before.
    p.restart_sluice();
    wait_for_sink_to_match(&p, &p.sluice, Duration::from_secs(90));
    p.pg.psql("source", "UPDATE public.orders SET qty = 7 WHERE id = 1")
        .unwrap();
    wait_for_sink_to_match(&p, &p.sluice, Duration::from_secs(60));
}
