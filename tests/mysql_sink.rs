//! The MySQL/MariaDB sink: PostgreSQL → MariaDB with every value kept (or the table held with
//! the reason, when MySQL cannot hold a type exactly), MariaDB → MariaDB, exactly once across
//! router kills, and sysbench's workload through a pipeline killed -9 again and again.

use std::time::{Duration, Instant};

use sluice_harness::compare::pg_rows;
use sluice_harness::{metric_value, MariaDb, Pipeline};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Rows of a MariaDB query, tab-separated fields joined with `|` (as `pg_rows` gives them).
fn maria_rows(maria: &MariaDb, sql: &str) -> Vec<String> {
    maria
        .root_sql(sql)
        .unwrap_or_default()
        .lines()
        .map(|l| l.replace('\t', "|"))
        .collect()
}

fn eventually(what: &str, log: impl Fn() -> String, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{what}: {e}\n--- log ---\n{}",
                log()
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A `[sources.maria]` section capturing `tables` from `maria`, with a replica id of its own.
fn mysql_source(maria: &MariaDb, tables: &[&str]) -> String {
    let tables = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[sources.maria]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [{tables}]\nserver_id = {}\n",
        maria.url(),
        MariaDb::next_server_id()
    )
}

const TYPES_DDL: &str = "CREATE TABLE public.t (
    id int PRIMARY KEY, b boolean, i16 smallint, i64 bigint, f4 real, f8 double precision,
    dec numeric(12,2), txt text, vc varchar(20), by bytea, d date, tm time, ts timestamp,
    tz timestamptz, u uuid, j jsonb, arr int[], iv interval, money_col money
)";

/// The source's rows as MariaDB must show them.
const EXPECTED: &str =
    "SELECT id, b::int, i16, i64, f4, f8, dec, txt, vc, upper(encode(by, 'hex')), d, \
    to_char(tm, 'HH24:MI:SS.US'), to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), \
    to_char(tz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), u, j::text, \
    array_to_json(arr)::text, iv, money_col::numeric FROM public.t ORDER BY id";
const SINK: &str =
    "SELECT id, b, i16, i64, f4, f8, `dec`, txt, vc, HEX(`by`), d, tm, ts, tz, u, j, \
    arr, iv, money_col FROM wh.t ORDER BY id";

#[test]
fn a_postgres_table_reaches_mariadb_with_every_value_and_a_lossy_type_waits() {
    // Given PostgreSQL tables, one with a column MySQL cannot hold exactly,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    let p = Pipeline::postgres(SLUICE, "to_maria")
        .ddl(&format!(
        "{TYPES_DDL}; \
         CREATE TABLE public.wide (id int PRIMARY KEY, n numeric); \
         INSERT INTO public.t VALUES
           (1, true, -32768, 9223372036854775807, 1.5, 0.25, -1234567890.12, 'héllo ☃ 𝄞', 'v', '\\x00ff10', \
            '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.123456', '2024-06-01 12:00:00+02', \
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2]}}', '{{1,NULL,3}}', 'P1Y2M3DT4H5M6S', 12.34),
           (2, false, 0, 0, 0, 0, 0, '', '', '', '1000-01-01', '00:00:00', '1000-01-01 00:00:00', \
            '1970-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000', '[]', '{{}}', 'PT0S', 0),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL); \
         INSERT INTO public.wide VALUES (1, 1.5)"
    ))
        .tables(&["public.t", "public.wide"])
        .mysql_sink(&maria, &wh)
        .router("blocked_retry_ms = 1000")
        .build();
    let pg = &p.pg;
    // (So that psql shows intervals as capture reads them.)
    pg.psql(
        "source",
        &format!(
            "ALTER DATABASE {} SET IntervalStyle = iso_8601",
            pg.name("source")
        ),
    )
    .unwrap();
    let sluice = p.run();

    // when rows are changed after the snapshot too,
    pg.psql(
        "source",
        "UPDATE public.t SET txt = 'updated', f8 = -0.5 WHERE id = 2; DELETE FROM public.t WHERE id = 3; \
         INSERT INTO public.t (id, txt) VALUES (4, 'late')",
    )
    .unwrap();

    // then MariaDB holds every value exactly,
    eventually(
        "public.t in MariaDB",
        || sluice.log(),
        || {
            let want = pg_rows(pg, "source", EXPECTED).unwrap();
            let got = maria_rows(&maria, &SINK.replace("wh.", &format!("{wh}.")));
            // MariaDB prints NULL as the text NULL; PostgreSQL as nothing.
            let got: Vec<String> = got
                .iter()
                .map(|r| {
                    r.split('|')
                        .map(|f| if f == "NULL" { "" } else { f })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("\nwant {want:#?}\n got {got:#?}"))
            }
        },
    );
    assert_eq!(
        maria_rows(
            &maria,
            &format!(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = '{wh}' AND TABLE_NAME = 't' \
                 AND COLUMN_NAME IN ('id', 'dec', 'ts', 'j', 'u') ORDER BY ORDINAL_POSITION"
            )
        ),
        [
            "id|int(11)",
            "dec|decimal(12,2)",
            "ts|datetime(6)",
            "u|char(36)",
            "j|longtext"
        ]
    );
    // and the table with a numeric of no precision waits, saying why, while t went on.
    eventually(
        "public.wide is held",
        || sluice.log(),
        || {
            let held = metric_value(
                &sluice.metrics().unwrap_or_default(),
                "sluice_router_table_blocked",
                &[("table", "public.wide")],
            );
            (held == Some(1.0)).then_some(()).ok_or(format!("{held:?}"))
        },
    );
    assert!(
        sluice.log().contains(
            "column public.wide.n is numeric, and numeric without a precision can hold more digits than MySQL's DECIMAL"
        ),
        "{}",
        sluice.log()
    );
}

#[test]
fn mariadb_to_mariadb_is_exactly_once_across_router_kills() {
    mariadb_to_mariadb_killed("maria_kill", false);
}

#[test]
fn mariadb_to_mariadb_is_exactly_once_across_kills_in_local_mode() {
    mariadb_to_mariadb_killed("maria_kill_local", true);
}

/// MariaDB → MariaDB with the pipeline killed -9 four times under writes, through Kafka or in
/// local mode (`local`).
fn mariadb_to_mariadb_killed(name: &str, local: bool) {
    // Given a MariaDB source and a MariaDB sink whose table records every write in a trigger,
    let (source, sink) = (MariaDb::shared().unwrap(), MariaDb::shared().unwrap());
    let (shop, wh) = (
        source.db(&format!("{name}_shop")),
        sink.db(&format!("{name}_wh")),
    );
    source.create_database(&format!("{name}_shop")).unwrap();
    source
        .root_sql(&format!(
            "USE {shop}; CREATE TABLE {shop}.acct (id int PRIMARY KEY, n int NOT NULL, note varchar(40)); \
             INSERT INTO {shop}.acct SELECT seq, 0, 'start' FROM seq_1_to_40"
        ))
        .unwrap();
    sink.create_database(&format!("{name}_wh")).unwrap();
    sink.root_sql(&format!(
        "CREATE TABLE {wh}.acct (id int PRIMARY KEY, n int NOT NULL, note longtext); \
         CREATE TABLE {wh}.applied (seq bigint AUTO_INCREMENT PRIMARY KEY, id int, n int); \
         CREATE TRIGGER {wh}.ins AFTER INSERT ON {wh}.acct FOR EACH ROW \
           INSERT INTO {wh}.applied (id, n) VALUES (NEW.id, NEW.n); \
         CREATE TRIGGER {wh}.upd AFTER UPDATE ON {wh}.acct FOR EACH ROW \
           INSERT INTO {wh}.applied (id, n) VALUES (NEW.id, NEW.n);",
    ))
    .unwrap();
    let p = Pipeline::postgres(SLUICE, name)
        .source_section(&mysql_source(&source, &[&format!("{shop}.acct")]))
        .mysql_sink(&sink, &wh)
        .batch("max_rows = 100\nmax_delay_ms = 100");
    let p = if local { p.local() } else { p }.build();
    let mut sluice = p.run();

    // when a writer makes 1,500 single-row transactions while the pipeline is killed -9 four
    // times,
    let write = source.root_sql_command();
    let shop_db = shop.clone();
    let writer = std::thread::spawn(move || {
        let shop = shop_db;
        for chunk in 0..30 {
            let sql: String = (0..50)
                .map(|i| {
                    let id = (chunk * 50 + i) % 40 + 1;
                    format!(
                        "UPDATE {shop}.acct SET n = n + 1, note = 'w{chunk}.{i}' WHERE id = {id};"
                    )
                })
                .collect();
            write(&sql);
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1300));
        sluice.kill9();
        sluice = p.run();
    }
    writer.join().unwrap();

    // then the sink equals the source, and no write was applied twice or out of order.
    let query = "SELECT id, n, note FROM {}.acct ORDER BY id";
    eventually(
        "wh.acct",
        || sluice.log(),
        || {
            let want = maria_rows(&source, &query.replace("{}", &shop));
            let got = maria_rows(&sink, &query.replace("{}", &wh));
            (want == got).then_some(()).ok_or(format!(
                "want {} rows, got {}",
                want.len(),
                got.len()
            ))
        },
    );
    let regressions = maria_rows(
        &sink,
        &format!(
            "SELECT count(*) FROM (SELECT n, LAG(n) OVER (PARTITION BY id ORDER BY seq) AS prev \
             FROM {wh}.applied) w WHERE prev IS NOT NULL AND n <= prev"
        ),
    );
    assert_eq!(regressions, ["0"], "writes applied twice or out of order");
    let total: i64 = maria_rows(&source, &format!("SELECT sum(n) FROM {shop}.acct"))[0]
        .parse()
        .unwrap();
    assert_eq!(total, 1500);
}

#[test]
fn a_change_mariadb_refuses_is_dead_lettered_and_the_rest_is_applied() {
    // Given a MariaDB table stricter than its PostgreSQL source,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    maria
        .root_sql(&format!(
            "CREATE TABLE {wh}.orders (id int PRIMARY KEY, qty int, note varchar(5), \
             CONSTRAINT qty_not_negative CHECK (qty >= 0))"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "maria_poison")
        .ddl("CREATE TABLE public.orders (id int PRIMARY KEY, qty int, note text)")
        .tables(&["public.orders"])
        .mysql_sink(&maria, &wh)
        .batch("max_delay_ms = 200")
        .build();
    let pg = &p.pg;
    let sluice = p.run();
    // (Written once capture streams: a snapshot taken after them would read rows 3 and 4 with
    // the refused values already in them.)
    sluice.wait_for_log("starting replication", Duration::from_secs(60));
    // when, in one transaction, one row breaks the CHECK and one is too long for its column,
    pg.psql(
        "source",
        "BEGIN;
         INSERT INTO public.orders SELECT i, i, 'ok' FROM generate_series(1, 10) i;
         UPDATE public.orders SET qty = -1 WHERE id = 3;
         UPDATE public.orders SET note = 'far too long' WHERE id = 4;
         COMMIT;
         INSERT INTO public.orders VALUES (11, 11, 'later');",
    )
    .unwrap();
    // then MariaDB has every row with the refused updates left out (nothing truncated),
    let want: Vec<String> = (1..=10)
        .map(|i| format!("{i}|{i}|ok"))
        .chain(["11|11|later".to_string()])
        .collect();
    eventually(
        "wh.orders",
        || sluice.log(),
        || {
            let got = maria_rows(
                &maria,
                &format!("SELECT id, qty, note FROM {wh}.orders ORDER BY id"),
            );
            (got == want).then_some(()).ok_or(format!("{got:?}"))
        },
    );
    // and the two refused changes went to the dead-letter topic with MariaDB's reasons.
    eventually(
        "two dead letters",
        || sluice.log(),
        || {
            let dlq = metric_value(
                &sluice.metrics().unwrap_or_default(),
                "sluice_router_dlq_total",
                &[("reason", "rejected_by_sink")],
            );
            (dlq == Some(2.0)).then_some(()).ok_or(format!("{dlq:?}"))
        },
    );
    let log = sluice.log();
    assert!(
        log.contains("CONSTRAINT `qty_not_negative` failed") && log.contains("error 4025"),
        "{log}"
    );
    assert!(
        log.contains("Data too long for column") && log.contains("error 1406"),
        "{log}"
    );
}

#[test]
fn a_sysbench_workload_with_the_pipeline_killed_reaches_mariadb_row_for_row() {
    // Given sysbench's own schema and data (2 tables of 10,000 rows) in a MariaDB source and a
    // pipeline into another MariaDB,
    let (source, sink) = (MariaDb::shared().unwrap(), MariaDb::shared().unwrap());
    let (shop, wh) = (source.db("shop"), sink.db("wh"));
    source.create_database("shop").unwrap();
    source.sysbench("shop", (2, 10_000), "prepare", &[]);
    sink.create_database("wh").unwrap();
    let p = Pipeline::postgres(SLUICE, "sysbench_kill")
        .source_section(&mysql_source(
            &source,
            &[&format!("{shop}.sbtest1"), &format!("{shop}.sbtest2")],
        ))
        .mysql_sink(&sink, &wh)
        .batch("max_rows = 1000\nmax_delay_ms = 100")
        .build();
    let sluice = p.run();

    // when sysbench's read-write load runs with 4 threads for 20 s, through the snapshot and
    // on, while the pipeline is killed -9 every three seconds,
    let load = source.sysbench_in_background(
        "shop",
        (2, 10_000),
        "run",
        &["--threads=4", "--time=20", "--report-interval=0"],
    );
    let (sluice, kills) =
        p.run_killed_while(sluice, Duration::from_secs(3), || !load.is_finished());
    let report = load.join().unwrap();
    let tps = report
        .lines()
        .find(|l| l.contains("transactions:"))
        .unwrap_or_default()
        .trim()
        .to_string();

    // then both tables match row for row.
    for table in ["sbtest1", "sbtest2"] {
        let query = "SELECT id, k, c, pad FROM {}.TABLE ORDER BY id".replace("TABLE", table);
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let want = maria_rows(&source, &query.replace("{}", &shop));
            let got = maria_rows(&sink, &query.replace("{}", &wh));
            if want == got {
                assert!(want.len() > 9_000, "{} rows", want.len());
                break;
            }
            let first = want.iter().zip(&got).position(|(a, b)| a != b);
            assert!(
                Instant::now() < deadline,
                "{table}: {} rows at the source, {} in the sink, first difference at {first:?}\n\
                 --- log ---\n{}",
                want.len(),
                got.len(),
                sluice.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(kills >= 5, "only {kills} kills during the load");
    eprintln!("sysbench {tps}; {kills} kills; the sink matches the source");
}

#[test]
fn schemes_check_compares_a_scheme_with_the_existing_mariadb_table() {
    // Given a PostgreSQL table and, in a MariaDB sink, an existing table for it whose name
    // column is too narrow and which has a NOT NULL column no field writes,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    maria
        .root_sql(&format!(
            "CREATE TABLE {wh}.t (id int PRIMARY KEY, name varchar(20), n text, audit int NOT NULL)"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "chk")
        .ddl("CREATE TABLE public.t (id int PRIMARY KEY, name text, n numeric)")
        .tables(&["public.t"])
        .mysql_sink(&maria, &wh)
        .router("schemes = \"schemes\"")
        .build();
    let (config, dir) = (&p.config, &p.dir);
    std::fs::create_dir(dir.path().join("schemes")).unwrap();
    let sluice = |args: &[&str]| {
        let out = std::process::Command::new(SLUICE)
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = sluice(&["schemes", "generate"]);
    assert_eq!(code, Some(0), "{out}");

    // when the identity scheme is checked, each problem names the column and the fix, exit 1;
    let (code, out) = sluice(&["schemes", "check"]);
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        "sink warehouse, column `n`: MySQL cannot hold these values exactly: numeric without a precision".to_string(),
        format!("sink warehouse, column `name`: the sink column is varchar(20), and the scheme writes text (LONGTEXT) values into it\n  fix: ALTER TABLE `{wh}`.`t` MODIFY `name` LONGTEXT"),
        format!("sink warehouse, column `audit`: {wh}.t.audit is NOT NULL without a default, and no field of the scheme writes it"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in\n{out}");
    }

    // With the scheme asking for text, `n` is still too small (MySQL's TEXT holds 64 KB, a
    // PostgreSQL text up to 1 GB),
    let file = dir.path().join("schemes/public.t.avsc");
    let mut scheme: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(scheme["fields"][2]["name"], "n");
    scheme["fields"][2]["sluice.type"] = "text".into();
    std::fs::write(&file, scheme.to_string()).unwrap();
    let (code, out) = sluice(&["schemes", "check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("sink warehouse, column `n`: the sink column is text, and the scheme writes text (LONGTEXT) values into it"),
        "{out}"
    );
    // and once the table is fixed too, the check passes.
    maria
        .root_sql(&format!(
            "ALTER TABLE {wh}.t MODIFY name LONGTEXT, MODIFY n LONGTEXT, \
             MODIFY audit int NOT NULL DEFAULT 0"
        ))
        .unwrap();
    let (code, out) = sluice(&["schemes", "check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok: public.t → public.t in sink warehouse"),
        "{out}"
    );
}

#[test]
fn a_batch_mariadb_refuses_only_as_a_whole_is_applied_in_pieces_and_nothing_is_dead_lettered() {
    // Given a MariaDB table with a unique column, as its PostgreSQL source has it,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    maria
        .root_sql(&format!(
            "CREATE TABLE {wh}.seat (id int PRIMARY KEY, code int NOT NULL UNIQUE)"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "maria_whole")
        .ddl(
            "CREATE TABLE public.seat (id int PRIMARY KEY, code int NOT NULL UNIQUE);
             INSERT INTO public.seat VALUES (1, 10), (2, 20);",
        )
        .tables(&["public.seat"])
        .mysql_sink(&maria, &wh)
        .batch("max_delay_ms = 300")
        .build();
    let (pg, sluice) = (&p.pg, p.run());
    let seats = || {
        maria_rows(
            &maria,
            &format!("SELECT id, code FROM {wh}.seat ORDER BY id"),
        )
    };
    eventually(
        "the snapshot",
        || sluice.log(),
        || {
            (seats() == ["1|10", "2|20"])
                .then_some(())
                .ok_or(format!("{:?}", seats()))
        },
    );
    // when one transaction swaps the two codes through a spare value (collapsed into one
    // upsert, the swap breaks the unique index),
    pg.psql(
        "source",
        "BEGIN;
         UPDATE public.seat SET code = -1 WHERE id = 1;
         UPDATE public.seat SET code = 10 WHERE id = 2;
         UPDATE public.seat SET code = 20 WHERE id = 1;
         COMMIT;",
    )
    .unwrap();
    // then MariaDB takes it in pieces, in order, and nothing is dead-lettered.
    eventually(
        "the swap",
        || sluice.log(),
        || {
            (seats() == ["1|20", "2|10"])
                .then_some(())
                .ok_or(format!("{:?}", seats()))
        },
    );
    let log = sluice.log();
    assert_eq!(
        sluice.metric("sluice_router_dlq_total", &[]),
        0.0,
        "dead-lettered\n{log}"
    );
    let split = sluice.metric("sluice_sink_batches_split_total", &[]);
    assert!(split >= 1.0, "no batch was applied in pieces\n{log}");
}

#[test]
fn an_older_table_version_never_turns_a_mariadb_type_change_back() {
    // Given a PostgreSQL table streamed through three partitions, written as int and then
    // retyped to numeric with fractions, and a MariaDB sink that follows every type change,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    let p = Pipeline::postgres(SLUICE, "maria_backwards")
        .ddl("CREATE TABLE public.prices (id bigint PRIMARY KEY, amount int)")
        .tables(&["public.prices"])
        .kafka("partitions = 3")
        .sections("[schemas]\ncompatibility = \"none\"")
        .mysql_sink(&maria, &wh)
        .sink("column_types = \"alter\"")
        .build();
    let pg = &p.pg;
    let start = |command: &str, max_rows: u32| {
        let batch = format!("max_rows = {max_rows}\n");
        p.start_other(command, command, &[("max_rows = 500\n", &batch)])
    };
    let capture = start("capture", 500);
    capture.wait_for_log("starting replication", Duration::from_secs(60));
    pg.psql(
        "source",
        "INSERT INTO public.prices SELECT i, i FROM generate_series(1, 600) i",
    )
    .unwrap();
    pg.psql(
        "source",
        "ALTER TABLE public.prices ALTER COLUMN amount TYPE numeric(12,2);
         UPDATE public.prices SET amount = amount + 0.25 WHERE id > 300;",
    )
    .unwrap();
    eventually(
        "capture publishes everything",
        || capture.log(),
        || {
            let acked = metric_value(
                &capture.metrics().unwrap_or_default(),
                "sluice_capture_records_acknowledged_total",
                &[("source", "pg_main")],
            )
            .unwrap_or(0.0);
            (acked >= 900.0).then_some(()).ok_or(format!("{acked}"))
        },
    );
    // when a router with small batches takes the partitions in whatever order it fetches them,
    let router = start("route", 20);
    // then MariaDB ends with the source's values (fractions kept: the column was never
    // retyped back to int) and the column retyped at most once.
    let want = pg_rows(
        pg,
        "source",
        "SELECT id, amount FROM public.prices ORDER BY id",
    )
    .unwrap();
    eventually(
        "wh.prices",
        || router.log(),
        || {
            let got = maria_rows(
                &maria,
                &format!("SELECT id, amount FROM {wh}.prices ORDER BY id"),
            );
            (got == want).then_some(()).ok_or(format!(
                "{} rows; first difference: {:?}",
                got.len(),
                got.iter().zip(&want).find(|(a, b)| a != b)
            ))
        },
    );
    let altered = metric_value(
        &router.metrics().unwrap_or_default(),
        "sluice_sink_ddl_total",
        &[("table", "public.prices"), ("ddl", "alter_type")],
    )
    .unwrap_or(0.0);
    assert!(
        altered <= 1.0,
        "the column type flip-flopped: {altered} alters\n{}",
        router.log()
    );
}

#[test]
fn a_child_row_before_its_parent_waits_for_it_at_mariadb() {
    // Given MariaDB tables bound by a foreign key the PostgreSQL source does not have,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    maria
        .root_sql(&format!(
            "CREATE TABLE {wh}.parent (id int PRIMARY KEY, name text);
             CREATE TABLE {wh}.child (id int PRIMARY KEY, parent_id int NOT NULL, v int,
               FOREIGN KEY (parent_id) REFERENCES {wh}.parent (id));"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "maria_fk")
        .ddl(
            "CREATE TABLE public.parent (id int PRIMARY KEY, name text);
             CREATE TABLE public.child (id int PRIMARY KEY, parent_id int NOT NULL, v int);",
        )
        .tables(&["public.parent", "public.child"])
        .mysql_sink(&maria, &wh)
        .batch("max_delay_ms = 100")
        .build();
    let pg = &p.pg;
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));
    let waited = |table: &str| {
        metric_value(
            &sluice.metrics().unwrap_or_default(),
            "sluice_router_missing_row_waits_total",
            &[("table", table)],
        )
        .unwrap_or(0.0)
    };
    let rows = |table: &str| {
        maria_rows(
            &maria,
            &format!("SELECT id, parent_id FROM {wh}.{table} ORDER BY id"),
        )
    };

    // when children come before their parents, and later a parent is deleted before its
    // children,
    pg.psql(
        "source",
        "INSERT INTO public.child SELECT i, i, 0 FROM generate_series(1, 10) i",
    )
    .unwrap();
    eventually(
        "a child waiting",
        || sluice.log(),
        || {
            (waited("public.child") >= 1.0)
                .then_some(())
                .ok_or("no wait".into())
        },
    );
    pg.psql(
        "source",
        "INSERT INTO public.parent SELECT i, 'p' FROM generate_series(1, 10) i",
    )
    .unwrap();
    let want: Vec<String> = (1..=10).map(|i| format!("{i}|{i}")).collect();
    eventually(
        "every child",
        || sluice.log(),
        || {
            (rows("child") == want)
                .then_some(())
                .ok_or(format!("{:?}", rows("child")))
        },
    );
    pg.psql("source", "DELETE FROM public.parent WHERE id = 1")
        .unwrap();
    eventually(
        "the parent's delete waiting",
        || sluice.log(),
        || {
            (waited("public.parent") >= 1.0)
                .then_some(())
                .ok_or("no wait".into())
        },
    );
    pg.psql("source", "DELETE FROM public.child WHERE id = 1")
        .unwrap();

    // then MariaDB ends with the source's rows and nothing dead-lettered.
    let want: Vec<String> = (2..=10).map(|i| format!("{i}|{i}")).collect();
    eventually(
        "children and parents",
        || sluice.log(),
        || {
            let parents = maria_rows(&maria, &format!("SELECT id FROM {wh}.parent ORDER BY id"));
            let ids: Vec<String> = (2..=10).map(|i| i.to_string()).collect();
            (rows("child") == want && parents == ids)
                .then_some(())
                .ok_or(format!("{:?} {parents:?}", rows("child")))
        },
    );
    let dlq = metric_value(
        &sluice.metrics().unwrap_or_default(),
        "sluice_router_dlq_total",
        &[("reason", "rejected_by_sink")],
    );
    assert_eq!(dlq.unwrap_or(0.0), 0.0, "{}", sluice.log());
}

#[test]
fn a_key_changed_at_the_source_holds_the_mariadb_table_instead_of_merging_rows() {
    // Given a table streaming into MariaDB, its consumers told to take a key change,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    let p = Pipeline::postgres(SLUICE, "maria_key_moved")
        .ddl(
            "CREATE TABLE public.kc (id int PRIMARY KEY, region varchar(8) NOT NULL DEFAULT 'eu', v int);
             INSERT INTO public.kc (id, v) SELECT i, i FROM generate_series(1, 5) i;",
        )
        .tables(&["public.kc"])
        .mysql_sink(&maria, &wh)
        .sections("[schemas.compatibility_overrides]\n\"public.kc\" = \"none\"")
        .router("blocked_retry_ms = 1000")
        .build();
    let sluice = p.run();
    let rows = || {
        maria_rows(
            &maria,
            &format!("SELECT id, region, v FROM {wh}.kc ORDER BY id, region"),
        )
    };
    let first: Vec<String> = (1..=5).map(|i| format!("{i}|eu|{i}")).collect();
    eventually(
        "the snapshot",
        || sluice.log(),
        || {
            (rows() == first)
                .then_some(())
                .ok_or(format!("{:?}", rows()))
        },
    );

    // when its primary key gains a column at the source and a row differing only in it comes,
    p.pg.psql(
        "source",
        "ALTER TABLE public.kc DROP CONSTRAINT kc_pkey, ADD PRIMARY KEY (id, region);
         INSERT INTO public.kc VALUES (1, 'us', 10);",
    )
    .unwrap();

    // then MariaDB's table waits, named with the fix, its row (1, eu) not overwritten,
    eventually(
        "the table held",
        || sluice.log(),
        || {
            let held = metric_value(
                &sluice.metrics().unwrap_or_default(),
                "sluice_router_table_blocked",
                &[("table", "public.kc")],
            );
            (held == Some(1.0)).then_some(()).ok_or(format!("{held:?}"))
        },
    );
    assert_eq!(rows(), first);
    // (the log says how to make the sink's key follow)
    let log = sluice.log();
    assert!(
        log.contains(&format!(
            "ALTER TABLE `{wh}`.`kc` DROP PRIMARY KEY, ADD PRIMARY KEY (`id`, `region`) \
             (a TEXT column in it must first become a VARCHAR)"
        )),
        "{log}"
    );
    // and once it does, the new row arrives beside the old one.
    maria
        .root_sql(&format!(
            "ALTER TABLE {wh}.kc MODIFY region varchar(8) NOT NULL, DROP PRIMARY KEY, \
             ADD PRIMARY KEY (id, region)"
        ))
        .unwrap();
    let mut want = first.clone();
    want.insert(1, "1|us|10".to_string());
    eventually(
        "the new row",
        || sluice.log(),
        || {
            (rows() == want)
                .then_some(())
                .ok_or(format!("{:?}", rows()))
        },
    );
}

#[test]
fn changes_of_the_older_key_applied_after_the_newer_keys_are_counted_at_mariadb() {
    // Given a table streamed through two partitions into a MariaDB table keyed as the source
    // will be,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("wh").unwrap();
    let wh = maria.db("wh");
    maria
        .root_sql(&format!(
            "CREATE TABLE {wh}.ko (id int, region varchar(8) NOT NULL DEFAULT 'eu', v int, \
             PRIMARY KEY (id, region))"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "maria_key_order")
        .ddl(
            "CREATE TABLE public.ko (id int PRIMARY KEY, region varchar(8) NOT NULL DEFAULT 'eu', v int);
             INSERT INTO public.ko (id, v) SELECT i, i FROM generate_series(1, 40) i;",
        )
        .tables(&["public.ko"])
        .kafka("partitions = 2")
        .mysql_sink(&maria, &wh)
        .sections("[schemas.compatibility_overrides]\n\"public.ko\" = \"none\"")
        .build();
    let mut sluice = p.run();
    let stale = || {
        maria_rows(
            &maria,
            &format!("SELECT count(*) FROM {wh}.ko WHERE v - id < 200"),
        )
    };
    let changed = || {
        maria_rows(
            &maria,
            &format!("SELECT count(*) FROM {wh}.ko WHERE v - id = 200"),
        )
    };
    eventually(
        "the snapshot",
        || sluice.log(),
        || {
            (stale() == ["40"])
                .then_some(())
                .ok_or(format!("{:?}", stale()))
        },
    );

    // when every row changes under the old key, the key gains a column and every row changes
    // again under the new one, applied in order,
    p.source("UPDATE public.ko SET v = v + 100");
    p.source("ALTER TABLE public.ko DROP CONSTRAINT ko_pkey, ADD PRIMARY KEY (id, region)");
    p.source("UPDATE public.ko SET v = v + 100");
    eventually(
        "the changes",
        || sluice.log(),
        || {
            (changed() == ["40"])
                .then_some(())
                .ok_or(format!("{:?}", changed()))
        },
    );

    // and then partition 0's changes reach the sink after partition 1's (a router group that
    // has partition 1's progress and none of partition 0's reads them again),
    sluice.terminate(Duration::from_secs(20));
    p.regroup_keeping(1, &format!("{wh}.sluice_offsets"), |sql| {
        maria.root_sql(sql).unwrap();
    });
    let sluice = p.run();

    // then the changes written under the older key after the newer key's are counted and
    // warned of, and the rows they put back to an older value are there to be repaired.
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
    eventually(
        "rows put back",
        || sluice.log(),
        || {
            (stale() != ["0"])
                .then_some(())
                .ok_or(format!("{:?}", stale()))
        },
    );
}
