//! PostgreSQL tables and deployments outside the plain shape: tables without a key, tables
//! that lose their key while streaming, partitioned tables, a column added with a default
//! across partitions, two sources with the same table name, topics named the old way. None of
//! them may lose a change silently: a table capture cannot take is stopped alone, named with
//! the fix, counted and alerted on, and read again once fixed; a partitioned table is captured
//! as itself; every source has topics of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{Broker, Pipeline, Postgres, SluiceProcess};
use sluice_schemas::Op;

mod common;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// How long a sink may take to equal its source.
const CONVERGE: Duration = Duration::from_secs(120);

/// A pipeline capturing `tables` from the source (running `ddl`) into the sink.
fn setup(slot: &str, ddl: &str, tables: &[&str]) -> Pipeline {
    setup_with(slot, ddl, tables, "")
}

/// [`setup`] with extra `[kafka]` settings.
fn setup_with(slot: &str, ddl: &str, tables: &[&str], kafka_extra: &str) -> Pipeline {
    Pipeline::postgres(SLUICE, slot)
        .ddl(ddl)
        .tables(tables)
        .kafka(kafka_extra)
        .build()
}

/// Waits until `table` holds the same rows at the sink as at the source.
fn wait_for_match(s: &Pipeline, sluice: &SluiceProcess, table: &str) {
    s.wait_for_match(sluice, &[table], CONVERGE);
}

/// Waits until `name{labels}` reads `value`.
fn wait_for_metric(sluice: &SluiceProcess, name: &str, labels: &[(&str, &str)], value: f64) {
    sluice.wait_for_metric(
        name,
        labels,
        Duration::from_secs(60),
        &format!("{value}"),
        |v| v == value,
    );
}

const STOPPED: &str = "sluice_capture_table_stopped";

/// Waits until capture has published at least `n` records.
fn wait_for_acknowledged(capture: &SluiceProcess, n: f64) {
    capture.wait_for_metric(
        "sluice_capture_records_acknowledged_total",
        &[("source", "pg_main")],
        Duration::from_secs(60),
        &format!(">= {n}"),
        |v| v >= n,
    );
}

#[test]
fn a_table_without_a_key_is_refused_by_name_and_the_others_go_on() {
    // Given a keyed table and a REPLICA IDENTITY FULL table without a primary key holding NULLs,
    let s = setup(
        "shapes_nokey",
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
         CREATE TABLE public.history (id bigint NOT NULL, delta int, note text);
         ALTER TABLE public.history REPLICA IDENTITY FULL;
         INSERT INTO public.orders VALUES (1, 'before');
         INSERT INTO public.history VALUES (1, NULL, NULL), (2, 5, 'x');",
        &["public.orders", "public.history"],
    );
    let mut sluice = s.run();
    let history = [("source", "pg_main"), ("table", "public.history")];

    // when both take writes, NULLs included,
    s.source(
        "INSERT INTO public.history VALUES (3, NULL, NULL), (3, NULL, NULL);
         UPDATE public.history SET delta = 7 WHERE id = 2;
         DELETE FROM public.history WHERE id = 1;
         INSERT INTO public.orders SELECT i, 'row ' || i FROM generate_series(2, 300) i;
         UPDATE public.orders SET note = NULL WHERE id % 3 = 0;",
    );

    // then the keyed table arrives row for row and capture keeps running,
    wait_for_match(&s, &sluice, "public.orders");
    assert!(!sluice.has_exited(), "sluice stopped:\n{}", sluice.log());
    // the keyless table is refused by name, with the fix, counted and not silently dropped,
    let log = sluice.log();
    assert!(
        log.contains("table public.history has no primary key (REPLICA IDENTITY FULL is not a key")
            && log.contains("ALTER TABLE public.history REPLICA IDENTITY USING INDEX"),
        "no refusal naming the table and the fix:\n{log}"
    );
    wait_for_metric(&sluice, STOPPED, &history, 1.0);
    assert_eq!(
        sluice.metric(
            STOPPED,
            &[("source", "pg_main"), ("table", "public.orders")]
        ),
        0.0
    );
    assert!(
        !log.contains("capture interrupted"),
        "capture restarted:\n{log}"
    );

    // and once the table has a key and capture restarts, it is read, NULLs and all.
    sluice.terminate(Duration::from_secs(20));
    s.source(
        "DELETE FROM public.history WHERE ctid NOT IN (SELECT min(ctid) FROM public.history GROUP BY id);
         ALTER TABLE public.history ADD PRIMARY KEY (id);
         INSERT INTO public.history VALUES (4, NULL, 'after the fix');",
    );
    let sluice = s.run();
    wait_for_match(&s, &sluice, "public.history");
    wait_for_metric(&sluice, STOPPED, &history, 0.0);
    s.source("UPDATE public.history SET note = 'streamed' WHERE id = 3");
    wait_for_match(&s, &sluice, "public.history");
}

#[test]
fn a_table_that_loses_its_key_while_streaming_stops_alone_and_is_read_again_once_fixed() {
    // Given two keyed tables streaming to the sink,
    let s = setup(
        "shapes_lost_key",
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
         CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
         INSERT INTO public.items SELECT i, i FROM generate_series(1, 50) i;",
        &["public.orders", "public.items"],
    );
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");

    // when one loses its primary key (REPLICA IDENTITY FULL) and takes a NULL, and the other
    // goes on taking writes,
    s.source(
        "ALTER TABLE public.items DROP CONSTRAINT items_pkey;
         ALTER TABLE public.items REPLICA IDENTITY FULL;
         INSERT INTO public.items VALUES (51, NULL);
         UPDATE public.items SET qty = NULL WHERE id <= 10;",
    );
    s.source("INSERT INTO public.orders SELECT i, 'row ' || i FROM generate_series(1, 200) i");

    // then the other table still arrives, the lost-key table is stopped by name and counted,
    wait_for_match(&s, &sluice, "public.orders");
    let items = [("source", "pg_main"), ("table", "public.items")];
    let deadline = Instant::now() + Duration::from_secs(60);
    while sluice.metric(STOPPED, &items) != 1.0 {
        // (What the sink got says whether capture read the table's changes as keyed — as it
        // did when it read the catalog before the transaction was visible: see
        // `a_transaction_sent_before_its_commit_is_visible…` — or never read them.)
        assert!(
            Instant::now() < deadline,
            "items was not stopped; the sink holds:\n{}\nthe source:\n{}\n{}",
            s.pg.psql(
                "sink",
                "SELECT * FROM public.items WHERE id > 50 OR qty IS NULL ORDER BY id"
            )
            .unwrap_or_default(),
            s.pg.psql(
                "source",
                "SELECT * FROM public.items WHERE id > 50 OR qty IS NULL ORDER BY id"
            )
            .unwrap_or_default(),
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!sluice.has_exited(), "sluice stopped:\n{}", sluice.log());
    assert!(
        sluice
            .log()
            .contains("table public.items has no primary key"),
        "{}",
        sluice.log()
    );
    s.source("UPDATE public.items SET qty = 0 WHERE id = 20");
    sluice.wait_for_metric(
        "sluice_capture_stopped_table_changes_total",
        &items,
        Duration::from_secs(60),
        ">= 1",
        |v| v >= 1.0,
    );

    // and once the key is back and capture restarts, the table is read again: the sink holds
    // exactly the source's rows, those changed while it was stopped included.
    sluice.terminate(Duration::from_secs(20));
    s.source("ALTER TABLE public.items ADD PRIMARY KEY (id); ALTER TABLE public.items REPLICA IDENTITY DEFAULT;");
    let sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");
    wait_for_metric(&sluice, STOPPED, &items, 0.0);
    s.source(
        "DELETE FROM public.items WHERE id > 40; INSERT INTO public.orders VALUES (999, 'last')",
    );
    wait_for_match(&s, &sluice, "public.items");
    wait_for_match(&s, &sluice, "public.orders");
}

#[test]
fn a_transaction_sent_before_its_commit_is_visible_is_described_as_it_left_the_table() {
    // Given two keyed tables streaming from a server of the test's own whose commits wait for
    // a synchronous standby that never answers, unless a session says otherwise (the
    // pipeline's own sessions do),
    let s = Pipeline::postgres(SLUICE, "shapes_invisible")
        .own_postgres()
        .ddl(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
             CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
             INSERT INTO public.items SELECT i, i FROM generate_series(1, 20) i;",
        )
        .tables(&["public.orders", "public.items"])
        .build();
    for db in ["source", "sink", "postgres"] {
        s.pg.psql(
            "postgres",
            &format!(
                "ALTER DATABASE \"{}\" SET synchronous_commit = local",
                s.pg.name(db)
            ),
        )
        .unwrap();
    }
    s.pg.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
    )
    .unwrap();
    s.pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");

    // when a transaction drops a table's key (REPLICA IDENTITY FULL) and writes a row, and its
    // backend waits for the standby after its commit is in the log (the server sends the
    // transaction; other sessions do not see it yet),
    let mut committing = std::process::Command::new(s.pg.tool("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            &s.pg.url("source"),
            "-c",
        ])
        .arg(
            "SET synchronous_commit = on;
             ALTER TABLE public.items DROP CONSTRAINT items_pkey;
             ALTER TABLE public.items REPLICA IDENTITY FULL;
             INSERT INTO public.items VALUES (21, NULL);",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // then capture does not describe the table from the catalog while the catalog does not
    // show the transaction: it says which backend holds it and on what, and reads it again,
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.contains("still not visible to queries") {
        let _ = committing.try_wait();
        assert!(
            Instant::now() < deadline,
            "capture never waited for the transaction; the sink holds {:?}\n{log}",
            s.pg.psql("sink", "SELECT * FROM public.items WHERE id > 20"),
        );
        std::thread::sleep(Duration::from_millis(200));
        log = sluice.log();
    }
    assert!(log.contains("wait event SyncRep"), "{log}");

    // and once the backend finishes its commit (the wait cancelled), the table is described
    // as the transaction left it: without a key, so it is stopped by name and its row is not
    // applied under the key it no longer has, while the other table goes on.
    s.pg.psql(
        "postgres",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
    )
    .unwrap();
    assert!(committing.wait().unwrap().success());
    let items = [("source", "pg_main"), ("table", "public.items")];
    wait_for_metric(&sluice, STOPPED, &items, 1.0);
    assert!(
        sluice
            .log()
            .contains("table public.items has no primary key"),
        "{}",
        sluice.log()
    );
    s.source("INSERT INTO public.orders SELECT i, 'row ' || i FROM generate_series(1, 50) i");
    wait_for_match(&s, &sluice, "public.orders");
    assert_eq!(
        s.pg.psql("sink", "SELECT count(*) FROM public.items WHERE id > 20")
            .unwrap()
            .trim(),
        "0"
    );
    assert!(!sluice.has_exited(), "{}", sluice.log());
}

#[test]
fn changes_written_before_a_key_change_that_capture_reads_late_keep_the_key_they_had() {
    // Given a keyed table captured once (its consumers told to take a key change), then
    // capture stopped (behind the log from here on),
    let s = Pipeline::postgres(SLUICE, "shapes_key_moved")
        .ddl(
            "CREATE TABLE public.moved (id int PRIMARY KEY, region text NOT NULL DEFAULT 'eu', v int);
             INSERT INTO public.moved (id, v) SELECT i, i FROM generate_series(1, 5) i;",
        )
        .tables(&["public.moved"])
        .sections("[schemas.compatibility_overrides]\n\"public.moved\" = \"none\"")
        .build();
    let mut capture = s.start("capture", &[]);
    capture.wait_for_log("starting replication", Duration::from_secs(60));
    capture.terminate(Duration::from_secs(20));

    // when a row is deleted, then the primary key changes to (id, region), then another row is
    // deleted, and capture reads all of it afterwards,
    s.source("DELETE FROM public.moved WHERE id = 2");
    s.source("ALTER TABLE public.moved DROP CONSTRAINT moved_pkey, ADD PRIMARY KEY (id, region)");
    s.source("DELETE FROM public.moved WHERE id = 3");
    let capture = s.start("capture", &[]);

    // then the first delete is keyed by id, as the log wrote it (keyed by today's key its
    // region would be missing, and a sink's delete would match nothing), and the second by
    // (id, region).
    let topic = format!("{}sluice.pg_main.public.moved", s.ns());
    let mut reader = common::TopicReader::new(&s.kafka().bootstrap(), s.ns(), &topic);
    let mut deletes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while deletes.len() < 2 {
        assert!(Instant::now() < deadline, "{deletes:?}\n{}", capture.log());
        let Some(read) = reader.next(Duration::from_secs(5)) else {
            continue;
        };
        if read.event.row.op == Op::Delete {
            let key: Vec<String> = read.table.key_columns().map(|c| c.name.clone()).collect();
            deletes.push(key);
        }
    }
    assert_eq!(
        deletes,
        [
            vec!["id".to_string()],
            vec!["id".to_string(), "region".to_string()]
        ],
        "{}",
        capture.log()
    );
}

#[test]
fn a_partitioned_table_is_captured_as_itself_rows_moving_and_partitions_attached() {
    // Given a partitioned table with rows, published by a publication made without
    // publish_via_partition_root (as an existing deployment's would be),
    let s = setup(
        "shapes_parts",
        "CREATE TABLE public.measurements (id bigint, region text, v int, PRIMARY KEY (id, region))
             PARTITION BY LIST (region);
         CREATE TABLE public.m_eu PARTITION OF public.measurements FOR VALUES IN ('eu');
         CREATE TABLE public.m_us PARTITION OF public.measurements FOR VALUES IN ('us');
         INSERT INTO public.measurements SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i
             FROM generate_series(1, 100) i;
         CREATE PUBLICATION shapes_parts FOR TABLE public.measurements;",
        &["public.measurements"],
    );
    let sluice = s.run();
    wait_for_match(&s, &sluice, "public.measurements");
    assert_eq!(
        s.pg.psql(
            "source",
            "SELECT pubviaroot FROM pg_publication WHERE pubname = 'shapes_parts'"
        )
        .unwrap()
        .trim(),
        "t"
    );

    // when rows are written to each partition, move between partitions (an update of the
    // partition key), and a partition is attached and created while streaming,
    s.source(
        "INSERT INTO public.measurements SELECT i, 'eu', i FROM generate_series(101, 150) i;
         UPDATE public.measurements SET region = 'us', v = -v WHERE region = 'eu' AND id <= 20;
         UPDATE public.measurements SET v = v + 1000 WHERE id BETWEEN 30 AND 40;
         DELETE FROM public.measurements WHERE id BETWEEN 41 AND 45;
         CREATE TABLE public.m_asia (id bigint NOT NULL, region text NOT NULL, v int);
         INSERT INTO public.m_asia VALUES (1000, 'asia', 1);
         ALTER TABLE public.measurements ATTACH PARTITION public.m_asia FOR VALUES IN ('asia');
         INSERT INTO public.measurements VALUES (1001, 'asia', 2);
         UPDATE public.measurements SET region = 'asia' WHERE id = 21;
         CREATE TABLE public.m_other PARTITION OF public.measurements DEFAULT;
         INSERT INTO public.measurements VALUES (2000, 'mars', 3);",
    );

    // then the sink's table holds exactly the source's rows.
    wait_for_match(&s, &sluice, "public.measurements");
    assert!(!sluice.log().contains("table stopped"), "{}", sluice.log());
}

#[test]
fn a_row_older_than_an_added_column_gets_the_columns_default_from_any_partition() {
    // Given a table streamed through three partitions, where rows written before
    // `ADD COLUMN … DEFAULT` and rows written after it share the topic,
    let s = setup_with(
        "shapes_default",
        "CREATE TABLE public.accounts (id bigint PRIMARY KEY, owner text)",
        &["public.accounts"],
        "partitions = 3",
    );
    let capture = s.start("capture", &[]);
    capture.wait_for_log("starting replication", Duration::from_secs(60));
    s.source("INSERT INTO public.accounts SELECT i, 'owner ' || i FROM generate_series(1, 600) i");
    s.source(
        "ALTER TABLE public.accounts ADD COLUMN region text DEFAULT 'eu';
         INSERT INTO public.accounts SELECT i, 'owner ' || i, 'us' FROM generate_series(601, 1200) i;
         INSERT INTO public.accounts (id, owner) SELECT i, 'owner ' || i FROM generate_series(1201, 1300) i;",
    );
    wait_for_acknowledged(&capture, 1300.0);

    // when a router with small batches takes the partitions in whatever order it fetches them
    // (so old-version inserts from one partition come after the column was added for another),
    s.edit_config("max_rows = 500", "max_rows = 25");
    let router = s.start_other("route", "route", &[]);

    // then every row reads at the sink what it reads at the source: the old ones the default.
    wait_for_match(&s, &router, "public.accounts");
    drop(capture);
}

#[test]
fn two_sources_with_the_same_table_name_each_deliver_every_change() {
    // Given two servers that both have public.orders (keys apart), captured into one sink,
    // the second one's WAL far ahead of the first's (positions are per server),
    let (east, west) = (Postgres::shared().unwrap(), Postgres::start().unwrap());
    for pg in [&east, &west] {
        pg.create_database("shop").unwrap();
        pg.psql(
            "shop",
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, origin text)",
        )
        .unwrap();
    }
    east.create_database("sink").unwrap();
    for i in 0..4 {
        west.psql(
            "shop",
            &format!("CREATE TABLE public.filler_{i} (x int); SELECT pg_switch_wal()"),
        )
        .unwrap();
    }
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = |name: &str, pg: &Postgres| {
        format!(
            "[sources.{name}]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.orders\"]\n\
             slot = \"{}\"\npublication = \"{name}\"\n",
            pg.url("shop"),
            pg.name(name)
        )
    };
    let config = format!(
        "[kafka]\n{}{}{}\
         [sinks.wh]\nkind = \"postgres\"\nurl = \"{}\"\n[router]\nsink = \"wh\"\ngroup_id = \"{}two\"\n\
         [router.batch]\nmax_delay_ms = 50\n",
        kafka.kafka_toml("two"),
        source("east", &east),
        source("west", &west),
        east.url("sink"),
        kafka.namespace(),
    );
    let (sluice, _) =
        SluiceProcess::start_in(Path::new(SLUICE), "run", dir.path(), &config).unwrap();
    let query = "SELECT * FROM public.orders ORDER BY id";
    let wait_for = |expected: Vec<String>| {
        let start = Instant::now();
        loop {
            match pg_rows(&east, "sink", query).and_then(|sink| compare_rows(&expected, &sink)) {
                Ok(()) => return,
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "{e}\n--- sluice log ---\n{}",
                    sluice.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    // when the server with the later positions is applied first, then the other one writes,
    west.psql(
        "shop",
        "INSERT INTO public.orders SELECT i, 'west' FROM generate_series(1001, 1100) i",
    )
    .unwrap();
    wait_for(pg_rows(&west, "shop", query).unwrap());
    east.psql(
        "shop",
        "INSERT INTO public.orders SELECT i, 'east' FROM generate_series(1, 100) i",
    )
    .unwrap();
    east.psql(
        "shop",
        "UPDATE public.orders SET origin = 'east!' WHERE id <= 10",
    )
    .unwrap();

    // then each goes through a topic of its own and the sink has every row of both (sharing
    // a topic, the first server's changes were skipped below the second's high-water mark).
    let mut expected = pg_rows(&east, "shop", query).unwrap();
    expected.extend(pg_rows(&west, "shop", query).unwrap());
    wait_for(expected);
    let log = sluice.log();
    assert!(
        log.contains("two.east.public.orders") && log.contains("two.west.public.orders"),
        "{log}"
    );
}

#[test]
fn a_topic_named_the_old_way_stops_capture_and_router_until_the_config_says_which_name_to_use() {
    // Given the topic an earlier Sluice published public.orders to (no source in its name),
    let s = setup(
        "shapes_legacy",
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
         INSERT INTO public.orders VALUES (1, 'one');",
        &["public.orders"],
    );
    let ns = s.ns().to_string();
    let old = s.config_with(
        "old.toml",
        "publication = ",
        &format!("topic_prefix = \"{ns}sluice\"\npublication = "),
    );
    let mut first = SluiceProcess::start(
        Path::new(SLUICE),
        "capture",
        &old,
        &s.dir.path().join("old.log"),
        s.metrics_port,
    )
    .unwrap();
    first.wait_for_log("starting replication", Duration::from_secs(60));
    first.terminate(Duration::from_secs(20));

    // when capture, or capture and router in one process, start with a config that does not
    // say which topic names to use (the router would create the new topic before capture
    // could see that it is missing),
    for subcommand in ["capture", "run"] {
        let log = s.run_until_exit(subcommand, &s.config, &[]);

        // then it refuses, naming the old topic, the new one and both fixes;
        assert!(
            log.contains(&format!("topic {ns}sluice.public.orders exists"))
                && log.contains(&format!(
                    "would now publish public.orders to {ns}sluice.pg_main.public.orders"
                ))
                && log.contains(&format!("sources.pg_main.topic_prefix = \"{ns}sluice\""))
                && log.contains(&format!(
                    "sources.pg_main.topic_prefix = \"{ns}sluice.pg_main\""
                )),
            "sluice {subcommand}:\n{log}"
        );
    }
    // and with the old names kept, the pipeline runs on the old topic.
    let kept = SluiceProcess::start(
        Path::new(SLUICE),
        "run",
        &old,
        &s.dir.path().join("kept.log"),
        s.metrics_port,
    )
    .unwrap();
    s.source("INSERT INTO public.orders VALUES (2, 'two')");
    wait_for_match(&s, &kept, "public.orders");
}

#[test]
fn a_truncate_across_three_partitions_clears_what_came_before_it_and_nothing_after() {
    // Given a table streamed through three partitions, and two routers sharing them,
    let s = setup_with(
        "shapes_truncate",
        "CREATE TABLE public.events (id bigint PRIMARY KEY, note text)",
        &["public.events"],
        "partitions = 3",
    );
    let capture = s.start("capture", &[]);
    // (Written once capture streams: rows written before its slot exists are read by the
    // snapshot instead, which the count below does not expect.)
    capture.wait_for_log("starting replication", Duration::from_secs(60));
    // when rows are written, truncated, written again, truncated and written again, all
    // published before any router reads them (so each partition is read at its own pace),
    for (from, to) in [(1, 300), (301, 600), (601, 900)] {
        s.source(&format!(
            "INSERT INTO public.events SELECT i, 'row ' || i FROM generate_series({from}, {to}) i"
        ));
        if to < 900 {
            s.source("TRUNCATE public.events");
        }
    }
    s.source("UPDATE public.events SET note = 'last' WHERE id % 10 = 0");
    wait_for_acknowledged(&capture, 936.0);
    s.edit_config("max_rows = 500", "max_rows = 40");
    s.edit_config(
        "dead_letter_topic",
        "assignment_strategy = \"range\"\ndead_letter_topic",
    );
    let first = s.start_other("route", "route-1", &[]);
    let second = s.start_other("route", "route-2", &[]);

    // then the sink holds exactly the rows written after the last truncate, each once.
    wait_for_match(&s, &first, "public.events");
    std::thread::sleep(Duration::from_secs(3));
    wait_for_match(&s, &second, "public.events");
    let waits: f64 = [&first, &second]
        .iter()
        .map(|r| {
            r.metric(
                "sluice_router_barrier_waits_total",
                &[("topic", &format!("{}sluice.pg_main.public.events", s.ns()))],
            )
        })
        .sum();
    assert!(waits >= 1.0, "no partition waited at a truncate");
    drop(capture);
}

#[test]
fn a_table_renamed_while_streaming_and_while_capture_is_down_is_followed_as_the_configured_table() {
    // Given two tables streaming to the sink on three partitions (renames are followed by
    // default),
    let s = setup_with(
        "shapes_follow",
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
         CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
         INSERT INTO public.items SELECT i, i FROM generate_series(1, 20) i;",
        &["public.orders", "public.items"],
        "partitions = 3",
    );
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");
    let items = [("source", "pg_main"), ("table", "public.items")];
    let equal_to = |source_table: &str, sluice: &SluiceProcess| {
        s.wait_for_query(
            sluice,
            &format!("SELECT * FROM {source_table} t ORDER BY t::text"),
            "SELECT * FROM public.items t ORDER BY t::text",
            CONVERGE,
        );
    };

    // when one is changed, renamed and changed again in one transaction, and then again,
    // while the other keeps taking writes,
    s.source(
        "BEGIN;
         UPDATE public.items SET qty = 100 WHERE id = 1;
         ALTER TABLE public.items RENAME TO goods;
         UPDATE public.goods SET qty = 200 WHERE id = 2;
         COMMIT;
         INSERT INTO public.goods VALUES (21, 21);
         DELETE FROM public.goods WHERE id = 20;",
    );
    s.source("INSERT INTO public.orders SELECT i, 'row ' || i FROM generate_series(1, 100) i");

    // then every change reaches the configured table's sink table, the table is not stopped,
    // and the rename is counted once the catalog check sees it;
    equal_to("public.goods", &sluice);
    wait_for_match(&s, &sluice, "public.orders");
    sluice.wait_for_metric(
        "sluice_capture_tables_renamed_total",
        &items,
        Duration::from_secs(30),
        "1",
        |v| v == 1.0,
    );
    s.source("UPDATE public.goods SET qty = 250 WHERE id = 5");
    equal_to("public.goods", &sluice);
    assert_eq!(sluice.metric(STOPPED, &items), 0.0, "{}", sluice.log());

    // and when, while sluice is down, it is renamed again and changed, and a new table takes
    // its configured name,
    sluice.terminate(Duration::from_secs(20));
    s.source(
        "ALTER TABLE public.goods RENAME TO wares;
         UPDATE public.wares SET qty = 300 WHERE id = 3;
         CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
         INSERT INTO public.items VALUES (999, 999);",
    );
    let sluice = s.run();
    s.source("UPDATE public.wares SET qty = 400 WHERE id = 4");

    // then capture finds it by its OID: the sink equals the renamed table (the new table of
    // the old name is another table and is not taken), with nothing read anew.
    equal_to("public.wares", &sluice);
    assert_eq!(
        sluice.metric("sluice_capture_snapshot_rows_total", &items),
        0.0,
        "the followed table was read anew\n{}",
        sluice.log()
    );
    assert_eq!(sluice.metric(STOPPED, &items), 0.0, "{}", sluice.log());
    assert!(
        sluice
            .log()
            .contains("a table named as the configured one exists too"),
        "{}",
        sluice.log()
    );
    // and verify, too, compares the configured table under its name now.
    let out = std::process::Command::new(SLUICE)
        .args(["verify", "--settle-ms", "2000", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "table=public.items sink_table=public.items status=equal source_rows=20 sink_rows=20"
        ),
        "{text}"
    );
}

#[test]
fn a_table_renamed_while_capture_is_down_mid_snapshot_is_followed() {
    // Given a table whose snapshot is under way,
    let s = setup(
        "shapes_follow_snap",
        "CREATE TABLE public.big (id bigint PRIMARY KEY, v text);
         INSERT INTO public.big SELECT i, 'v' || i FROM generate_series(1, 300000) i;",
        &["public.big"],
    );
    let mut capture = s.start_other("capture", "capture", &[]);
    capture.wait_for_metric(
        "sluice_capture_snapshot_rows_total",
        &[("table", "public.big")],
        Duration::from_secs(60),
        "> 0",
        |v| v > 0.0,
    );

    // when capture is killed before it finished, and the table is renamed and changed while
    // it is down,
    capture.kill9();
    s.source(
        "ALTER TABLE public.big RENAME TO huge;
         UPDATE public.huge SET v = 'after' WHERE id <= 10;",
    );

    // then the restarted pipeline follows it (its OID was recorded before the snapshot began)
    // and the sink's table of the configured name equals it.
    let sluice = s.run();
    s.wait_for_query(
        &sluice,
        "SELECT * FROM public.huge t ORDER BY t::text",
        "SELECT * FROM public.big t ORDER BY t::text",
        CONVERGE,
    );
}

#[test]
fn a_table_dropped_and_created_again_while_capture_is_down_is_read_anew() {
    // Given two tables streamed to the sink,
    let s = setup(
        "shapes_recreate",
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
         CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
         INSERT INTO public.items SELECT i, i FROM generate_series(1, 20) i;",
        &["public.orders", "public.items"],
    );
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");

    // when, while sluice is down, one is dropped and created again with other rows,
    sluice.terminate(Duration::from_secs(20));
    s.source(
        "DROP TABLE public.items;
         CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
         INSERT INTO public.items SELECT i, -i FROM generate_series(15, 30) i;",
    );
    let sluice = s.run();
    s.source("UPDATE public.items SET qty = 0 WHERE id = 30");

    // then the new table is read anew (its predecessor's rows are gone from the sink).
    wait_for_match(&s, &sluice, "public.items");
    s.source("INSERT INTO public.orders VALUES (1, 'after')");
    wait_for_match(&s, &sluice, "public.orders");
}

#[test]
fn with_renames_stop_a_table_renamed_while_streaming_stops_by_name_with_the_fix_and_is_read_anew_under_its_new_name(
) {
    // Given two tables streaming to the sink, renames set to stop a table,
    let s = Pipeline::postgres(SLUICE, "shapes_rename")
        .ddl(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
             CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
             INSERT INTO public.items SELECT i, i FROM generate_series(1, 20) i;",
        )
        .tables(&["public.orders", "public.items"])
        .source("renames = \"stop\"")
        .build();
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");
    let items = [("source", "pg_main"), ("table", "public.items")];

    // when one is changed, renamed and changed again, and the other keeps taking writes,
    s.source(
        "UPDATE public.items SET qty = 100 WHERE id = 1;
         ALTER TABLE public.items RENAME TO goods;
         UPDATE public.goods SET qty = 200 WHERE id = 2;",
    );
    s.source("INSERT INTO public.orders SELECT i, 'row ' || i FROM generate_series(1, 100) i");

    // then the change before the rename arrives, the renamed table is stopped by its
    // configured name with the fix (not silently left behind), and the other goes on;
    wait_for_match(&s, &sluice, "public.orders");
    wait_for_metric(&sluice, STOPPED, &items, 1.0);
    let log = sluice.log();
    assert!(
        log.contains("public.items was renamed to public.goods: put `public.goods` in place of `public.items` in sources.pg_main.tables"),
        "no stop naming the rename and the fix:\n{log}"
    );
    let qty =
        s.pg.psql("sink", "SELECT qty FROM public.items WHERE id = 1")
            .unwrap();
    assert_eq!(qty.trim(), "100", "the change before the rename is lost");
    sluice.wait_for_metric(
        "sluice_capture_stopped_table_changes_total",
        &items,
        Duration::from_secs(60),
        ">= 1",
        |v| v >= 1.0,
    );
    assert!(!sluice.has_exited(), "sluice stopped:\n{}", sluice.log());

    // and once the config names it by its new name, it is read anew, all of it.
    sluice.terminate(Duration::from_secs(20));
    s.edit_config("\"public.items\"", "\"public.goods\"");
    let sluice = s.run();
    wait_for_match(&s, &sluice, "public.goods");
    s.source("UPDATE public.goods SET qty = 300 WHERE id = 3");
    wait_for_match(&s, &sluice, "public.goods");
}

#[test]
fn a_table_dropped_before_its_changes_were_read_is_decoded_and_then_stopped_by_name() {
    // Given two tables streaming to the sink,
    let s = setup(
        "shapes_drop",
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, note text);
         CREATE TABLE public.items (id bigint PRIMARY KEY, qty int);
         INSERT INTO public.items SELECT i, i FROM generate_series(1, 20) i;",
        &["public.orders", "public.items"],
    );
    let sluice = s.run();
    wait_for_match(&s, &sluice, "public.items");

    // when a transaction adds a column to one, writes it, and drops the table (so capture
    // decodes those changes only once the table is gone from the catalog),
    s.source(
        "BEGIN;
         ALTER TABLE public.items ADD COLUMN note text;
         INSERT INTO public.items VALUES (21, 21, 'last words');
         UPDATE public.items SET qty = 0, note = 'zeroed' WHERE id <= 5;
         DROP TABLE public.items;
         COMMIT;",
    );
    s.source("INSERT INTO public.orders SELECT i, 'row ' || i FROM generate_series(1, 100) i");

    // then its changes reach the sink all the same (decoded from the stream's own
    // description of the table), the other table goes on, and the dropped table is stopped
    // by name with the fix.
    wait_for_match(&s, &sluice, "public.orders");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = pg_rows(
            &s.pg,
            "sink",
            "SELECT count(*) FILTER (WHERE qty = 0 AND note = 'zeroed'), \
             count(*) FILTER (WHERE id = 21 AND note = 'last words'), count(*) FROM public.items",
        );
        if rows.as_deref().ok() == Some(&["5|1|21".to_string()][..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped table's last changes: {rows:?}\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let items = [("source", "pg_main"), ("table", "public.items")];
    wait_for_metric(&sluice, STOPPED, &items, 1.0);
    let log = sluice.log();
    assert!(
        log.contains(
            "public.items was dropped at the source: remove it from sources.pg_main.tables"
        ),
        "{log}"
    );
    assert!(
        !log.contains("capture interrupted"),
        "capture restarted:\n{log}"
    );
}

#[test]
fn an_older_table_version_from_a_lagging_partition_never_turns_a_type_change_back() {
    // Given a sink that follows every type change, and a table streamed through three
    // partitions whose rows were written as int, then retyped to numeric with fractions,
    let s = setup_with(
        "shapes_backwards",
        "CREATE TABLE public.prices (id bigint PRIMARY KEY, amount int)",
        &["public.prices"],
        // (int to numeric is not an Avro-compatible change: allowed here on purpose.)
        "partitions = 3\n\n[schemas]\ncompatibility = \"none\"",
    );
    let capture = s.start("capture", &[]);
    capture.wait_for_log("starting replication", Duration::from_secs(60));
    s.source("INSERT INTO public.prices SELECT i, i FROM generate_series(1, 600) i");
    s.source(
        "ALTER TABLE public.prices ALTER COLUMN amount TYPE numeric(12,2);
         UPDATE public.prices SET amount = amount + 0.25 WHERE id > 300;",
    );
    wait_for_acknowledged(&capture, 900.0);

    // when a router with small batches takes the partitions in whatever order it fetches them
    // (so int-version rows of one partition come after numeric-version rows of another),
    s.edit_config("max_rows = 500", "max_rows = 20");
    s.edit_config(
        "[sinks.warehouse]\nkind = \"postgres\"\n",
        "[sinks.warehouse]\nkind = \"postgres\"\ncolumn_types = \"alter\"\n",
    );
    let router = s.start_other("route", "route", &[]);

    // then the column is retyped once, never back to int (which would round the fractions),
    // and every row reads at the sink what it reads at the source.
    wait_for_match(&s, &router, "public.prices");
    let altered = router.metric(
        "sluice_sink_ddl_total",
        &[("table", "public.prices"), ("ddl", "alter_type")],
    );
    assert!(
        altered <= 1.0,
        "the column type flip-flopped: {altered} alters\n{}",
        router.log()
    );
    let ty =
        s.pg.psql(
            "sink",
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'public.prices'::regclass AND attname = 'amount'",
        )
        .unwrap();
    assert_eq!(ty.trim(), "numeric(12,2)");
    drop(capture);
}

#[test]
fn a_key_changed_at_the_source_holds_only_that_table_until_the_sink_key_follows() {
    // Given two tables streaming to the sink, one whose consumers were told to take a key
    // change,
    let s = Pipeline::postgres(SLUICE, "shapes_key_sink")
        .ddl(
            "CREATE TABLE public.kc (id int PRIMARY KEY, region text NOT NULL DEFAULT 'eu', v int);
             CREATE TABLE public.other (id int PRIMARY KEY);
             INSERT INTO public.kc (id, v) SELECT i, i FROM generate_series(1, 5) i;",
        )
        .tables(&["public.kc", "public.other"])
        .sections("[schemas.compatibility_overrides]\n\"public.kc\" = \"none\"")
        .router("blocked_retry_ms = 1000")
        .build();
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.kc");

    // when its primary key gains a column at the source and rows differing only in it come,
    s.source("ALTER TABLE public.kc DROP CONSTRAINT kc_pkey, ADD PRIMARY KEY (id, region)");
    s.source(
        "INSERT INTO public.kc VALUES (1, 'us', 10);
         UPDATE public.kc SET v = 20 WHERE id = 2;
         DELETE FROM public.kc WHERE id = 3;",
    );
    s.source("INSERT INTO public.other SELECT i FROM generate_series(1, 20) i");

    // then the other table still arrives, only this one waits, named with the fix,
    wait_for_match(&s, &sluice, "public.other");
    let kc = [("table", "public.kc")];
    wait_for_metric(&sluice, "sluice_router_table_blocked", &kc, 1.0);
    assert!(!sluice.has_exited(), "{}", sluice.log());
    assert!(
        sluice.log().contains("change the sink's key to match"),
        "{}",
        sluice.log()
    );
    // and once the sink's key follows, its changes arrive and the sink equals the source.
    s.pg.psql(
        "sink",
        "ALTER TABLE public.kc DROP CONSTRAINT kc_pkey, ADD PRIMARY KEY (id, region)",
    )
    .unwrap();
    wait_for_match(&s, &sluice, "public.kc");
    wait_for_metric(&sluice, "sluice_router_table_blocked", &kc, 0.0);
}

#[test]
fn changes_of_the_older_key_still_apply_once_the_sink_key_followed_the_source() {
    // Given a keyed table captured once into a sink through two partitions, then stopped,
    let s = Pipeline::postgres(SLUICE, "shapes_key_followed")
        .ddl(
            "CREATE TABLE public.kf (id int PRIMARY KEY, region text NOT NULL DEFAULT 'eu', v int);
             INSERT INTO public.kf (id, v) SELECT i, i FROM generate_series(1, 8) i;",
        )
        .tables(&["public.kf"])
        .kafka("partitions = 2")
        .sections("[schemas.compatibility_overrides]\n\"public.kf\" = \"none\"")
        .build();
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.kf");
    sluice.terminate(Duration::from_secs(20));

    // when rows change under the old key, the key gains a column, rows come under the new
    // one, and the sink's key is changed to match before any of it is applied,
    s.source("UPDATE public.kf SET v = v + 100");
    s.source("ALTER TABLE public.kf DROP CONSTRAINT kf_pkey, ADD PRIMARY KEY (id, region)");
    s.source("INSERT INTO public.kf VALUES (1, 'us', 10), (2, 'us', 20)");
    let mut capture = s.start("capture", &[]);
    capture.wait_for_metric(
        "sluice_capture_events_total",
        &[],
        Duration::from_secs(60),
        ">= 10",
        |v| v >= 10.0,
    );
    capture.terminate(Duration::from_secs(20));
    s.pg.psql(
        "sink",
        "ALTER TABLE public.kf DROP CONSTRAINT kf_pkey, ADD PRIMARY KEY (id, region)",
    )
    .unwrap();

    // then the updates written under the old key are applied by the sink's key (which holds
    // it), the new rows beside them, and the sink equals the source with nothing held.
    let router = s.start("route", &[]);
    wait_for_match(&s, &router, "public.kf");
    wait_for_metric(
        &router,
        "sluice_router_table_blocked",
        &[("table", "public.kf")],
        0.0,
    );
}

#[test]
fn changes_of_the_older_key_applied_after_the_newer_key_are_counted_and_verify_repairs_them() {
    // Given a keyed table streamed through two partitions into a sink table keyed as the
    // source will be,
    let s = Pipeline::postgres(SLUICE, "shapes_key_order")
        .ddl(
            "CREATE TABLE public.ko (id int PRIMARY KEY, region text NOT NULL DEFAULT 'eu', v int);
             INSERT INTO public.ko (id, v) SELECT i, i FROM generate_series(1, 40) i;",
        )
        .sink_ddl(
            "CREATE TABLE public.ko (id int, region text NOT NULL DEFAULT 'eu', v int,
               PRIMARY KEY (id, region));",
        )
        .tables(&["public.ko"])
        .kafka("partitions = 2")
        .sections("[schemas.compatibility_overrides]\n\"public.ko\" = \"none\"")
        .build();
    let counted = |sluice: &SluiceProcess| {
        sluice.metric(
            "sluice_sink_older_key_changes_total",
            &[("table", "public.ko")],
        )
    };
    let mut sluice = s.run();
    wait_for_match(&s, &sluice, "public.ko");

    // when every row changes under the old key, the key gains a column, and every row changes
    // again under the new key (most rows' two changes in two partitions), applied in order,
    s.source("UPDATE public.ko SET v = v + 100");
    s.source("ALTER TABLE public.ko DROP CONSTRAINT ko_pkey, ADD PRIMARY KEY (id, region)");
    s.source("UPDATE public.ko SET v = v + 100");
    wait_for_match(&s, &sluice, "public.ko");
    assert_eq!(counted(&sluice), 0.0, "{}", sluice.log());

    // and then partition 0's changes reach the sink after partition 1's (as when it lags
    // behind: a router group that has partition 1's progress and none of partition 0's reads
    // them again),
    sluice.terminate(Duration::from_secs(20));
    s.regroup_keeping(1, "public.sluice_offsets", |sql| {
        s.pg.psql("sink", sql).unwrap();
    });
    let mut sluice = s.run();

    // then the changes written under the older key after the newer key's are counted and
    // warned of, with the fix,
    sluice.wait_for_metric(
        "sluice_sink_older_key_changes_total",
        &[("table", "public.ko")],
        Duration::from_secs(60),
        ">= 1",
        |v| v >= 1.0,
    );
    assert!(
        sluice
            .log()
            .contains("compare the table with `sluice verify --repair`"),
        "{}",
        sluice.log()
    );
    // (rows whose old-key change is in partition 0 and new-key change in 1 went back to the
    // older value),
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .pg
        .psql("sink", "SELECT count(*) FROM public.ko WHERE v - id < 200")
        .unwrap()
        .trim()
        == "0"
    {
        assert!(
            Instant::now() < deadline,
            "no row went back:\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // and a repair makes the sink equal to the source again.
    let out = std::process::Command::new(SLUICE)
        .args(["verify", "--config"])
        .arg(&s.config)
        .args(["--table", "public.ko", "--repair"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let repaired: u64 = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("repaired="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        repaired > 0 && said.contains("status=equal") && out.status.success(),
        "{said}"
    );
    wait_for_match(&s, &sluice, "public.ko");
    assert!(!sluice.has_exited(), "{}", sluice.log());
}
