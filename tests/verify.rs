//! `sluice verify`: a sink equal to its source passes, also while writes go on; a damaged sink
//! is found exactly (missing, extra and differing rows, by key); a table it cannot compare is
//! named with the reason.

use std::process::Command;
use std::time::Duration;

use sluice_harness::Pipeline;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// `sluice verify --config <config>` with `args`: exit code and output.
fn verify(p: &Pipeline, args: &[&str]) -> (i32, String) {
    let out = Command::new(SLUICE)
        .arg("verify")
        .arg("--config")
        .arg(&p.config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits up to two minutes until `sql` at the sink reads `want`.
fn wait_for_sink(p: &Pipeline, sluice: &sluice_harness::SluiceProcess, sql: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while p.pg.psql("sink", sql).ok().as_deref().map(str::trim) != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "{sql} never read {want}\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until MariaDB's `table` holds `rows` rows.
fn wait_for_maria_rows(
    maria: &sluice_harness::MariaDb,
    table: &str,
    rows: &str,
    sluice: &sluice_harness::SluiceProcess,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let sql = format!("SELECT COUNT(*) FROM {table}");
    while maria.root_sql(&sql).ok().as_deref().map(str::trim) != Some(rows) {
        assert!(
            std::time::Instant::now() < deadline,
            "{table} never held {rows} rows\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn pipeline(name: &str) -> Pipeline {
    Pipeline::postgres(SLUICE, name)
        .ddl(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), at timestamptz);
             INSERT INTO public.items SELECT i, 'item ' || i, i % 7, i * 1.5, '2026-01-01'::timestamptz + i * interval '1 minute'
               FROM generate_series(1, 20000) i;
             CREATE TABLE public.pairs (a int, b text, v int, PRIMARY KEY (a, b));
             INSERT INTO public.pairs SELECT i % 100, 'k' || (i / 100), i FROM generate_series(1, 3000) i;",
        )
        .tables(&["public.items", "public.pairs"])
        .build()
}

#[test]
fn an_equal_sink_passes_and_a_damaged_one_is_found_row_for_row() {
    // Given a pipeline whose sink has caught up,
    let p = pipeline("verify_damage");
    let mut sluice = p.run();
    p.wait_for_match(
        &sluice,
        &["public.items", "public.pairs"],
        Duration::from_secs(120),
    );
    sluice.terminate(Duration::from_secs(20));

    // then verify finds both tables equal, exit 0;
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("table=public.items sink_table=public.items status=equal source_rows=20000 sink_rows=20000 missing=0 extra=0 differing=0"),
        "{out}"
    );
    assert!(
        out.contains("table=public.pairs") && out.contains("source_rows=3000"),
        "{out}"
    );

    // when the sink is damaged — rows deleted, changed (one only in a column's fraction, one
    // in a composite-key table), and added —
    p.pg.psql(
        "sink",
        "DELETE FROM public.items WHERE id IN (7, 9000, 19999);
         UPDATE public.items SET price = price + 0.01 WHERE id = 12345;
         UPDATE public.items SET name = NULL WHERE id = 42;
         UPDATE public.pairs SET v = -1 WHERE a = 5 AND b = 'k3';
         INSERT INTO public.items VALUES (30000, 'only at the sink', 1, 1, now());",
    )
    .unwrap();
    let out_file = p.dir.path().join("differences.jsonl");

    // then verify reports each one by its key, exit 1, and writes them all as JSON lines.
    let (code, out) = verify(
        &p,
        &[
            "--out",
            out_file.to_str().unwrap(),
            "--settle-ms",
            "0",
            "--parallel",
            "2",
        ],
    );
    assert_eq!(code, 1, "{out}");
    // (and a summary table, in the configured order)
    let summary: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("source "))
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        summary[1..],
        [
            [
                "pg_main",
                "public.items",
                "20000",
                "19998",
                "3",
                "1",
                "2",
                "0",
                "different"
            ],
            [
                "pg_main",
                "public.pairs",
                "3000",
                "3000",
                "0",
                "0",
                "1",
                "0",
                "different"
            ],
        ],
        "{out}"
    );
    assert!(
        out.contains("table=public.items sink_table=public.items status=different source_rows=20000 sink_rows=19998 missing=3 extra=1 differing=2"),
        "{out}"
    );
    assert!(
        out.contains("table=public.pairs") && out.contains("differing=1"),
        "{out}"
    );
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|l| {
        (
            l["table"].to_string(),
            l["kind"].to_string(),
            l["key"].to_string(),
        )
    });
    let seen: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("differing", "(12345)"),
            ("differing", "(42)"),
            ("extra", "(30000)"),
            ("missing", "(19999)"),
            ("missing", "(7)"),
            ("missing", "(9000)"),
            ("differing", "(5,k3)"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
        "{lines:?}"
    );
    // the same differences are found reading each side at most 5,000 rows a second (in block
    // ranges of one snapshot);
    for db in ["source", "sink"] {
        p.pg.psql(db, "ANALYZE public.items").unwrap();
    }
    let paced_file = p.dir.path().join("paced.jsonl");
    let (code, out) = verify(
        &p,
        &[
            "--settle-ms",
            "0",
            "--table",
            "public.items",
            "--max-rows-per-second",
            "5000",
            "--out",
            paced_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("source_rows=20000 sink_rows=19998 missing=3 extra=1 differing=2"),
        "{out}"
    );
    let mut paced: Vec<String> = std::fs::read_to_string(&paced_file)
        .unwrap()
        .lines()
        .map(|l| {
            let l: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}:{}",
                l["kind"].as_str().unwrap(),
                l["key"].as_str().unwrap()
            )
        })
        .collect();
    paced.sort();
    assert_eq!(
        paced,
        [
            "differing:(12345)",
            "differing:(42)",
            "extra:(30000)",
            "missing:(19999)",
            "missing:(7)",
            "missing:(9000)"
        ]
    );
    // as they are drawn on a terminal, unpaced (the tables then read in block ranges, so
    // that their lines show rows and an ETA);
    let out = Command::new(SLUICE)
        .args(["verify", "--config"])
        .arg(&p.config)
        .args(["--settle-ms", "0", "--table", "public.items"])
        .env("SLUICE_VERIFY_PROGRESS", "always")
        .output()
        .unwrap();
    let (code, drawn) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(code, Some(1), "{drawn}");
    assert!(
        drawn.contains("source_rows=20000 sink_rows=19998 missing=3 extra=1 differing=2"),
        "{drawn}"
    );
    // and --table limits it to one table;
    let (code, out) = verify(&p, &["--table", "public.pairs", "--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("public.items"), "{out}");

    // a table that cannot be compared is named with why, and the others are still compared.
    p.pg.psql("sink", "DROP TABLE public.pairs").unwrap();
    let (code, out) = verify(&p, &["--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("table=public.pairs status=not_compared")
            && out.contains("the sink has no table public.pairs"),
        "{out}"
    );
    assert!(
        out.contains("table=public.items sink_table=public.items status=different"),
        "{out}"
    );
}

#[test]
fn writes_in_flight_are_not_differences() {
    // Given a running pipeline and a writer that keeps changing the source,
    let p = pipeline("verify_moving");
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(120));
    let writer =
        p.pg.write_in_rounds("source", 40, Duration::from_millis(100), |round| {
            format!(
                "UPDATE public.items SET qty = qty + 1 WHERE id % 50 = {}; \
             INSERT INTO public.items VALUES ({}, 'new', 0, 0, now())",
                round % 50,
                100_000 + round
            )
        });

    // when verify runs meanwhile, with time for what is in flight to land,
    let (code, out) = verify(&p, &["--table", "public.items", "--settle-ms", "20000"]);
    writer.join().unwrap();

    // then it reports the table equal (rows read while moving settle, and are counted so).
    assert_eq!(code, 0, "{out}\n--- sluice log ---\n{}", sluice.log());
    assert!(out.contains("status=equal"), "{out}");
}

#[test]
fn changes_the_pipeline_has_not_applied_are_in_flight_not_differences() {
    // Given a pipeline whose sink has caught up, then stopped,
    let p = pipeline("verify_behind");
    let mut sluice = p.run();
    p.wait_for_match(
        &sluice,
        &["public.items", "public.pairs"],
        Duration::from_secs(120),
    );
    sluice.terminate(Duration::from_secs(20));

    // when seven rows of one table change at the source meanwhile, and the sink of the other
    // table is damaged,
    p.pg.psql(
        "source",
        "UPDATE public.items SET qty = qty + 100 WHERE id <= 5;
         DELETE FROM public.items WHERE id = 6;
         INSERT INTO public.items VALUES (50001, 'new', 1, 1, now());",
    )
    .unwrap();
    p.pg.psql(
        "sink",
        "UPDATE public.pairs SET v = -v WHERE a = 5 AND b = 'k1';",
    )
    .unwrap();

    // then verify says the changed rows are in flight (capture's slot still holds them), not
    // different, and finds the damage (which no pending change explains) exactly;
    let (code, out) = verify(&p, &["--settle-ms", "2000"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("table=public.items sink_table=public.items status=in_flight source_rows=20000 sink_rows=20000 missing=0 extra=0 differing=0 in_flight=7"),
        "{out}"
    );
    assert!(
        out.contains("changes of the table wait in the slot"),
        "{out}"
    );
    assert!(
        out.contains("table=public.pairs sink_table=public.pairs status=different source_rows=3000 sink_rows=3000 missing=0 extra=0 differing=1 in_flight=0"),
        "{out}"
    );
    // with only rows in flight, the exit code says so (3: run again);
    let (code, out) = verify(&p, &["--table", "public.items", "--settle-ms", "1000"]);
    assert_eq!(code, 3, "{out}");

    // when capture alone runs, the changes reach Kafka but no router applies them: still in
    // flight, now because the sink's offsets are behind the topic's end;
    let mut capture = p.start("capture", &[]);
    let (code, out) = verify(&p, &["--table", "public.items", "--settle-ms", "3000"]);
    assert_eq!(code, 3, "{out}\n--- capture ---\n{}", capture.log());
    assert!(out.contains("in_flight=7"), "{out}");
    assert!(
        out.contains("the sink has not applied the table's topic up to the rows' position"),
        "{out}"
    );
    capture.terminate(Duration::from_secs(20));

    // and once the router has applied them, the table is equal.
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(120));
    let (code, out) = verify(&p, &["--table", "public.items"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("status=equal"), "{out}");
}

#[test]
fn with_no_capture_ever_run_nothing_is_in_flight_and_differences_are_found() {
    // Given a source and a sink filled by hand, whose capture never ran (no slot),
    let p = Pipeline::postgres(SLUICE, "verify_noslot")
        .ddl(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, v int);
             INSERT INTO public.items SELECT i, i FROM generate_series(1, 100) i;",
        )
        .sink_ddl(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, v int);
             INSERT INTO public.items SELECT i, i FROM generate_series(2, 100) i;",
        )
        .tables(&["public.items"])
        .build();

    // then verify waits for no pipeline, says why, and reports the difference.
    let (code, out) = verify(&p, &["--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("status=different source_rows=100 sink_rows=99 missing=1 extra=0 differing=0 in_flight=0"),
        "{out}"
    );
    assert!(out.contains("the source has no such slot"), "{out}");
}

#[test]
fn a_scheduled_verify_exposes_what_it_finds_as_metrics() {
    // Given a local-mode pipeline that verifies one table every second, on a timing of its
    // own, and the other one hourly,
    let p = Pipeline::postgres(SLUICE, "verify_scheduled")
        .local()
        .ddl(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, qty int);
             INSERT INTO public.items SELECT i, 'item ' || i, i % 7 FROM generate_series(1, 5000) i;
             CREATE TABLE public.notes (id bigint PRIMARY KEY, body text);
             INSERT INTO public.notes VALUES (1, 'n');",
        )
        .tables(&["public.items", "public.notes"])
        .sections(
            "[verify]\ninterval_s = 3600\nsettle_ms = 300\n\
             [verify.table.\"public.items\"]\ninterval_s = 1\nfirst_after_s = 0\n",
        )
        .build();
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(120));
    let labels = [("source", "pg_main"), ("table", "public.items")];
    let wait = |metric: &str, want: f64, what: &str| {
        sluice.wait_for_metric(metric, &labels, Duration::from_secs(60), what, |v| {
            v == want
        });
    };
    wait(
        "sluice_verify_rows_checked",
        5000.0,
        "a run compared every row",
    );
    wait("sluice_verify_rows_missing", 0.0, "an equal sink");
    // (the hourly run has not come yet;)
    assert_eq!(
        sluice.metric("sluice_verify_rows_checked", &[("table", "public.notes")]),
        0.0
    );

    // when the sink is damaged behind the pipeline's back,
    p.pg.psql(
        "sink",
        "DELETE FROM public.items WHERE id IN (1, 2, 3); UPDATE public.items SET qty = -1 WHERE id IN (10, 11);",
    )
    .unwrap();

    // then the next runs say so, by kind,
    wait("sluice_verify_rows_missing", 3.0, "the deleted rows");
    wait("sluice_verify_rows_differing", 2.0, "the changed rows");
    assert!(
        sluice.metric(
            "sluice_verify_runs_total",
            &[("outcome", "different"), ("run", "public.items")]
        ) >= 1.0,
        "{}",
        sluice.log()
    );
    assert_eq!(
        sluice.metric("sluice_verify_table_not_compared", &labels),
        0.0
    );

    // and once the rows are sent again from the source, the sink is equal again.
    p.source("UPDATE public.items SET qty = qty WHERE id IN (1, 2, 3, 10, 11)");
    wait("sluice_verify_rows_missing", 0.0, "the rows back");
    wait("sluice_verify_rows_differing", 0.0, "the rows equal");
    assert!(
        sluice.metric(
            "sluice_verify_last_run_timestamp_seconds",
            &[("run", "public.items")]
        ) > 0.0
    );
    assert_eq!(
        sluice.metric(
            "sluice_verify_last_run_timestamp_seconds",
            &[("run", "default")]
        ),
        0.0
    );
}

#[test]
fn a_table_keyed_by_its_replica_identity_index_is_compared_by_it() {
    // Given a table with no primary key, keyed (as capture keys it) by a unique index made its
    // replica identity,
    let p = Pipeline::postgres(SLUICE, "verify_replident")
        .local()
        .ddl(
            "CREATE TABLE public.codes (code text NOT NULL, n int);
             CREATE UNIQUE INDEX codes_code ON public.codes (code);
             ALTER TABLE public.codes REPLICA IDENTITY USING INDEX codes_code;
             INSERT INTO public.codes SELECT 'c' || i, i FROM generate_series(1, 500) i;",
        )
        .tables(&["public.codes"])
        .build();
    let mut sluice = p.run();
    p.wait_for_match(&sluice, &["public.codes"], Duration::from_secs(120));
    sluice.terminate(Duration::from_secs(20));

    // when one row is changed at the sink,
    p.pg.psql("sink", "UPDATE public.codes SET n = -1 WHERE code = 'c42'")
        .unwrap();

    // then verify compares the table by that key and names the row.
    let (code, out) = verify(&p, &["--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("table=public.codes sink_table=public.codes status=different source_rows=500 sink_rows=500 missing=0 extra=0 differing=1")
            && out.contains("differing:(c42)"),
        "{out}"
    );
}

#[test]
fn a_repair_request_capture_never_served_is_asked_for_again() {
    // Given a pipeline whose sink was damaged while it was stopped,
    let p = pipeline("verify_reask");
    let mut sluice = p.run();
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(120));
    sluice.terminate(Duration::from_secs(20));
    p.pg.psql(
        "sink",
        "DELETE FROM public.items WHERE id IN (3, 4); UPDATE public.items SET qty = -1 WHERE id = 5;",
    )
    .unwrap();

    // when verify asks for a repair and the request is lost — capture's slot is moved past it,
    // as when capture read it and restarted before serving it —
    let verify = Command::new(SLUICE)
        .args(["verify", "--config"])
        .arg(&p.config)
        .args([
            "--table",
            "public.items",
            "--repair",
            "--repair-wait-ms",
            "30000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let slot = p.slot().to_string();
    let asked = || {
        p.pg.psql(
            "source",
            &format!(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'verify_reask', 'messages', 'true') \
                 WHERE get_byte(data, 0) = 77 \
                   AND position(convert_to('sluice.signal', 'UTF8') IN data) > 0"
            ),
        )
        // (verify's own look at the stopped slot may hold it at that moment: read again)
        .is_ok_and(|n| n.trim() != "0")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !asked() {
        assert!(std::time::Instant::now() < deadline, "verify never asked");
        std::thread::sleep(Duration::from_millis(100));
    }
    p.pg.psql(
        "source",
        &format!("SELECT pg_replication_slot_advance('{slot}', pg_current_wal_lsn())"),
    )
    .unwrap();
    let sluice = p.run();

    // then verify asks again once a third of its wait has passed, and the sink is repaired.
    let out = verify.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", sluice.log());
    assert!(text.contains("reread=3 deleted=0 repaired=3"), "{text}");
}

#[test]
fn repair_makes_a_damaged_sink_equal_through_the_pipeline_while_writes_go_on() {
    // Given a running pipeline whose sink has caught up,
    let p = pipeline("verify_repair");
    let sluice = p.run();
    p.wait_for_match(
        &sluice,
        &["public.items", "public.pairs"],
        Duration::from_secs(120),
    );

    // when the sink is damaged by hand — rows deleted, changed, added, in both tables —
    p.pg.psql(
        "sink",
        "DELETE FROM public.items WHERE id % 1000 = 7;
         UPDATE public.items SET qty = -1, at = at + interval '1 second' WHERE id % 997 = 3;
         INSERT INTO public.items VALUES (900001, 'only at the sink', 0, 0, now());
         UPDATE public.pairs SET v = -v WHERE a = 5;
         DELETE FROM public.pairs WHERE a = 6 AND b = 'k1';",
    )
    .unwrap();
    // then a dry run says what a repair would send, and sends nothing;
    let (code, out) = verify(&p, &["--repair", "--dry-run", "--settle-ms", "1000"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("table=public.items") && out.contains("would_delete=1"),
        "{out}"
    );
    assert_eq!(
        sluice.metric(
            "sluice_capture_reread_rows_total",
            &[("table", "public.items"), ("outcome", "read")]
        ),
        0.0
    );

    // and while the source keeps changing rows, damaged ones among them,
    let writer =
        p.pg.write_in_rounds("source", 40, Duration::from_millis(100), |round| {
            format!(
                "UPDATE public.items SET qty = qty + 1 WHERE id % 50 = {round};
             UPDATE public.items SET name = 'round {round}' WHERE id % 1000 = 7 AND id < {};
             DELETE FROM public.items WHERE id = {};
             UPDATE public.pairs SET v = v + 1 WHERE a = 5 AND b = 'k{}';",
                (round + 1) * 500,
                round * 997 + 3,
                round % 30
            )
        });
    // a repair makes the sink equal through the pipeline: exit 0, each difference repaired,
    let (code, out) = verify(&p, &["--repair", "--settle-ms", "1000"]);
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}\n{}", sluice.log());
    assert!(out.contains("repaired="), "{out}");
    let reread = |outcome: &str| {
        ["public.items", "public.pairs"]
            .iter()
            .map(|t| {
                sluice.metric(
                    "sluice_capture_reread_rows_total",
                    &[("table", t), ("outcome", outcome)],
                )
            })
            .sum::<f64>()
    };
    assert!(reread("read") >= 1.0, "{}", sluice.log());
    assert!(reread("deleted") >= 1.0, "{}", sluice.log());
    writer.join().unwrap();

    // and once the writes stop, the sink equals the source row for row.
    p.wait_for_match(
        &sluice,
        &["public.items", "public.pairs"],
        Duration::from_secs(60),
    );
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
}

/// The scheme e2e_schemes edits: renamed, dropped, defaulted, computed, masked and filtered
/// fields, into another table.
const EDITED: &str = include_str!("schemes/customers.edited.avsc");

#[test]
fn a_table_written_through_a_scheme_is_compared_through_it_and_repaired() {
    // Given a table routed through a scheme that renames, drops, masks, computes, filters and
    // writes another table, and a sink that has caught up,
    let p = Pipeline::postgres(SLUICE, "verify_scheme")
        .ddl(
            "CREATE TABLE public.customers (
               id int PRIMARY KEY, name text NOT NULL, email text, status text, qty int, price numeric(10,2));
             INSERT INTO public.customers
               SELECT i, 'name ' || i, 'user' || i || '@Example.ORG',
                      CASE WHEN i % 10 = 0 THEN 'test' ELSE 'live' END, i % 9, i * 0.25
               FROM generate_series(1, 3000) i;",
        )
        .tables(&["public.customers"])
        .router("schemes = \"schemes\"")
        .build();
    let schemes = p.dir.path().join("schemes");
    std::fs::create_dir(&schemes).unwrap();
    std::fs::write(schemes.join("public.customers.avsc"), EDITED).unwrap();
    let sluice = p.run();
    let expected = "SELECT id, name, encode(sha256(convert_to(email, 'UTF8')), 'hex'), \
        lower(split_part(email, '@', 2)), qty, (qty * price)::numeric(14,2), 'eu' \
        FROM public.customers WHERE status IS DISTINCT FROM 'test' ORDER BY id";
    let sink = "SELECT id, full_name, email, email_domain, qty, total, region \
        FROM crm.customers ORDER BY id";
    p.wait_for_query(&sluice, expected, sink, Duration::from_secs(120));

    // then verify compares it through the scheme and finds it equal;
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("table=public.customers sink_table=crm.customers status=equal source_rows=2700 sink_rows=2700"),
        "{out}"
    );

    // when the sink is damaged: a row deleted, a renamed field and a masked one changed, a
    // row added, and a row the filter keeps out written,
    p.pg.psql(
        "sink",
        "DELETE FROM crm.customers WHERE id = 7;
         UPDATE crm.customers SET full_name = 'someone else' WHERE id = 11;
         UPDATE crm.customers SET email = 'not the hash' WHERE id = 12;
         INSERT INTO crm.customers VALUES (9999, 'ghost', NULL, NULL, 1, 1, 'eu');
         INSERT INTO crm.customers VALUES (20, 'filtered out', NULL, NULL, 1, 1, 'eu');",
    )
    .unwrap();

    // then each is found by its target key,
    let (code, out) = verify(&p, &["--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "status=different source_rows=2700 sink_rows=2701 missing=1 extra=2 differing=2"
        ),
        "{out}"
    );
    for key in [
        "missing:(7)",
        "differing:(11)",
        "differing:(12)",
        "extra:(20)",
        "extra:(9999)",
    ] {
        assert!(out.contains(key), "{key}: {out}");
    }

    // and a repair sends them through the pipeline again, scheme and all: equal, exit 0.
    let (code, out) = verify(&p, &["--repair", "--settle-ms", "0"]);
    assert_eq!(code, 0, "{out}\n{}", sluice.log());
    assert!(out.contains("reread=3 deleted=2 repaired=5"), "{out}");
    p.wait_for_query(&sluice, expected, sink, Duration::from_secs(30));
}

#[test]
fn a_mariadb_source_is_compared_with_its_postgres_sink_through_its_identity_scheme() {
    // Given a MariaDB table of several types streamed into a PostgreSQL sink,
    let maria = sluice_harness::MariaDb::start().unwrap();
    maria.create_database("shop").unwrap();
    maria
        .root_sql(
            "CREATE TABLE shop.items (id int PRIMARY KEY, name varchar(100), price decimal(10,2), \
               at datetime(6), flag tinyint(1), note text);
             INSERT INTO shop.items SELECT seq, CONCAT('item ', seq), seq * 1.25, \
               TIMESTAMP('2026-01-01') + INTERVAL seq MINUTE, seq % 2, IF(seq % 3 = 0, NULL, 'n') \
               FROM shop.seq_1_to_2000;",
        )
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "verify_maria")
        .source_section(&format!(
            "[sources.shop]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"shop.items\"]\nserver_id = {}",
            maria.url(),
            sluice_harness::MariaDb::next_server_id()
        ))
        .build();
    let sluice = p.run();
    wait_for_sink(&p, &sluice, "SELECT count(*) FROM shop.items", "2000");

    // then verify reads MariaDB as capture does and finds the sink equal;
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("source=shop table=shop.items sink_table=shop.items status=equal source_rows=2000 sink_rows=2000"),
        "{out}"
    );

    // when capture is stopped and a row changes at the source, the row is in flight (the
    // binlog after capture's recorded position has a change of the table), not different;
    let mut sluice = sluice;
    sluice.terminate(Duration::from_secs(20));
    maria
        .root_sql("UPDATE shop.items SET name = 'changed' WHERE id = 100")
        .unwrap();
    let (code, out) = verify(&p, &["--settle-ms", "2000"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("status=in_flight source_rows=2000 sink_rows=2000 missing=0 extra=0 differing=0 in_flight=1"),
        "{out}"
    );
    assert!(
        out.contains("the binlog between has changes of the table"),
        "{out}"
    );
    // once capture runs again, the table is equal.
    let sluice = p.run();
    wait_for_sink(
        &p,
        &sluice,
        "SELECT name FROM shop.items WHERE id = 100",
        "changed",
    );
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");

    // when the sink is damaged (a row deleted, a price and a time changed, a row added),
    p.pg.psql(
        "sink",
        "DELETE FROM shop.items WHERE id = 7;
         UPDATE shop.items SET price = price + 0.01 WHERE id = 11;
         UPDATE shop.items SET at = at + interval '1 microsecond' WHERE id = 12;
         INSERT INTO shop.items (id, name) VALUES (9999, 'ghost');",
    )
    .unwrap();

    // then each is found by its key, and without a signal table a repair says what it would
    // send and how to let it send it.
    let (code, out) = verify(&p, &["--settle-ms", "0", "--repair"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "missing=1 extra=1 differing=2 in_flight=0 caught_up=0 would_reread=3 would_delete=1"
        ),
        "{out}"
    );
    assert!(
        out.contains("set sources.shop.signal_table = \"<database>.sluice_signal\""),
        "{out}"
    );
    for key in [
        "missing:(7)",
        "differing:(11)",
        "differing:(12)",
        "extra:(9999)",
    ] {
        assert!(out.contains(key), "{key}: {out}");
    }
    // and paced, the MariaDB source's 2,000 rows are read at 1,000 a second: two seconds at
    // least, though the sink, cut down to 500 rows, is read at once.
    p.pg.psql("sink", "DELETE FROM shop.items WHERE id > 500;")
        .unwrap();
    let started = std::time::Instant::now();
    let (code, out) = verify(&p, &["--settle-ms", "0", "--max-rows-per-second", "1000"]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("source_rows=2000 sink_rows=499 missing=1501 extra=0 differing=2"),
        "{out}"
    );
    assert!(took >= Duration::from_millis(1900), "{took:?}: {out}");
    drop(sluice);
}

#[test]
fn a_repair_request_the_source_refuses_is_counted_and_capture_goes_on() {
    // Given a running pipeline,
    let p = pipeline("verify_refused");
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(120));
    let config = std::fs::read_to_string(&p.config).unwrap();
    let slot = config
        .lines()
        .find_map(|l| l.strip_prefix("slot = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();

    // when a repair request names a key the source cannot read (not a bigint),
    p.pg.psql(
        "source",
        &format!(
            "SELECT pg_logical_emit_message(true, 'sluice.signal', \
             '{{\"slot\": \"{slot}\", \"op\": \"reread\", \"table\": \"public.items\", \
               \"columns\": [\"id\"], \"keys\": [[\"abc\"]]}}')"
        ),
    )
    .unwrap();

    // then that request is refused and counted, and capture goes on streaming.
    sluice.wait_for_metric(
        "sluice_capture_reread_rows_total",
        &[("table", "public.items"), ("outcome", "refused")],
        Duration::from_secs(30),
        "1",
        |v| v == 1.0,
    );
    p.source("UPDATE public.items SET qty = 99 WHERE id = 1");
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(60));
    assert_eq!(
        sluice.metric(
            "sluice_capture_errors_total",
            &[("source", "pg_main"), ("kind", "transient")]
        ),
        0.0,
        "{}",
        sluice.log()
    );
}

#[test]
fn a_mariadb_sink_is_compared_value_for_value_and_repaired_through_the_pipeline() {
    // Given a PostgreSQL table of many types streamed into a MariaDB sink,
    let maria = sluice_harness::MariaDb::shared().unwrap();
    maria.create_database("vwh").unwrap();
    let wh = maria.db("vwh");
    let p = Pipeline::postgres(SLUICE, "verify_to_maria")
        .ddl(
            "CREATE TABLE public.kinds (id bigint PRIMARY KEY, b boolean, i int, f8 float8, \
               d numeric(12,2), t text, by bytea, day date, tm time, ts timestamp, tz timestamptz, \
               u uuid, j jsonb, arr int[], tags text[]); \
             INSERT INTO public.kinds SELECT i, i % 2 = 0, i * 7, i / 3.0, i * 1.25, 'row ' || i, \
               decode(md5(i::text), 'hex'), date '2024-02-29' + i, time '12:34:56.123456' + i * interval '1 second', \
               timestamp '2026-01-01 00:00:00.000001' + i * interval '1 minute', \
               timestamptz '2026-06-01 12:00:00+02' + i * interval '1 hour', \
               ('a0eebc99-9c0b-4ef8-bb6d-' || lpad(i::text, 12, '0'))::uuid, \
               jsonb_build_object('n', i, 'xs', jsonb_build_array(i, 'x')), ARRAY[i, NULL, 3], \
               ARRAY['a', 'b ' || i] \
             FROM generate_series(1, 1500) i; \
             INSERT INTO public.kinds (id) VALUES (0)",
        )
        .tables(&["public.kinds"])
        .mysql_sink(&maria, &wh)
        .build();
    let sluice = p.run();
    wait_for_maria_rows(&maria, &format!("{wh}.kinds"), "1501", &sluice);

    // then verify reads MariaDB's values back as the sink wrote them and finds it equal;
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "table=public.kinds sink_table={wh}.kinds status=equal source_rows=1501 sink_rows=1501"
        )),
        "{out}"
    );

    // when the sink is damaged — a row deleted, a decimal, a time to the microsecond, a boolean
    // and an array element changed, a row added —
    maria
        .root_sql(&format!(
            "DELETE FROM {wh}.kinds WHERE id = 7; \
             UPDATE {wh}.kinds SET d = d + 0.01 WHERE id = 11; \
             UPDATE {wh}.kinds SET ts = ts + INTERVAL 1 MICROSECOND WHERE id = 12; \
             UPDATE {wh}.kinds SET b = NOT b WHERE id = 13; \
             UPDATE {wh}.kinds SET arr = '[14, null, 4]' WHERE id = 14; \
             INSERT INTO {wh}.kinds (id, t) VALUES (9999, 'ghost');"
        ))
        .unwrap();

    // then each is found by its key;
    let listed = p.dir.path().join("differences.jsonl");
    let (code, out) = verify(&p, &["--settle-ms", "0", "--out", listed.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("missing=1 extra=1 differing=4 in_flight=0"),
        "{out}"
    );
    let listed = std::fs::read_to_string(&listed).unwrap();
    assert_eq!(listed.lines().count(), 6, "{listed}");
    for (kind, key) in [
        ("missing", "(7)"),
        ("differing", "(11)"),
        ("differing", "(12)"),
        ("differing", "(13)"),
        ("differing", "(14)"),
        ("extra", "(9999)"),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.contains(&format!("\"{kind}\"")) && l.contains(&format!("\"{key}\""))),
            "{kind} {key}: {listed}"
        );
    }

    // and a repair while the source takes writes sends them through the pipeline and ends
    // with the sink equal.
    let writer =
        p.pg.write_in_rounds("source", 20, Duration::from_millis(100), |round| {
            format!(
                "UPDATE public.kinds SET i = i + 1 WHERE id > 100 AND id % 20 = {}",
                round % 20
            )
        });
    let (code, out) = verify(&p, &["--repair"]);
    writer.join().unwrap();
    assert_eq!(code, 0, "{out}\n{}", sluice.log());
    assert!(out.contains("reread=5 deleted=1 repaired=6"), "{out}");
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    drop(sluice);
}

#[test]
fn a_mariadb_source_is_repaired_through_its_signal_table_while_writes_go_on() {
    // Given two MariaDB tables (one keyed by two columns) streamed into a PostgreSQL sink, with
    // a signal table configured for repairs,
    let maria = sluice_harness::MariaDb::shared().unwrap();
    maria.create_database("rshop").unwrap();
    let db = maria.db("rshop");
    maria
        .root_sql(&format!(
            "CREATE TABLE {db}.items (id int PRIMARY KEY, name varchar(100), price decimal(10,2), \
               at datetime(6));
             INSERT INTO {db}.items SELECT seq, CONCAT('item ', seq), seq * 1.25, \
               TIMESTAMP('2026-01-01') + INTERVAL seq MINUTE FROM {db}.seq_1_to_2000;
             CREATE TABLE {db}.pairs (a int, b varchar(20), v int, PRIMARY KEY (a, b));
             INSERT INTO {db}.pairs SELECT seq % 10, CONCAT('k', seq DIV 10), seq FROM {db}.seq_1_to_3000;"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "verify_maria_repair")
        .source_section(&format!(
            "[sources.shop]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.items\", \"{db}.pairs\"]\n\
             server_id = {}\nsignal_table = \"{db}.sluice_signal\"",
            maria.url(),
            sluice_harness::MariaDb::next_server_id()
        ))
        .build();
    let sluice = p.run();
    wait_for_sink(
        &p,
        &sluice,
        &format!("SELECT count(*) FROM {db}.items"),
        "2000",
    );
    wait_for_sink(
        &p,
        &sluice,
        &format!("SELECT count(*) FROM {db}.pairs"),
        "3000",
    );
    // (an observer at the sink: every row version written to items)
    let applies =
        p.pg.log_applies(
            "sink",
            &format!("{db}.items"),
            ("id", "int"),
            ("price", "numeric"),
        )
        .unwrap();

    // when the sink is damaged — rows deleted, a price and a time changed, a row added —
    p.pg.psql(
        "sink",
        &format!(
            "DELETE FROM {db}.items WHERE id = 7;
             UPDATE {db}.items SET price = price + 0.01 WHERE id = 11;
             UPDATE {db}.items SET at = at + interval '1 microsecond' WHERE id = 12;
             INSERT INTO {db}.items (id, name) VALUES (9999, 'ghost');
             DELETE FROM {db}.pairs WHERE a = 5 AND b = 'k1';
             UPDATE {db}.pairs SET v = -v WHERE a = 6 AND b = 'k2';
             TRUNCATE public.applies;"
        ),
    )
    .unwrap();
    // and the source keeps taking writes (to other rows),
    let write = maria.root_sql_command();
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        for round in 0..30 {
            write(&format!(
                "UPDATE {writer_db}.items SET name = CONCAT('round ', {round}) \
                 WHERE id > 100 AND id % 30 = {round}"
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    // then a repair signals capture through the table: the sink ends equal, each difference
    // repaired,
    let (code, out) = verify(&p, &["--repair", "--settle-ms", "1000"]);
    writer.join().unwrap();
    assert_eq!(code, 0, "{out}\n{}", sluice.log());
    assert!(
        out.contains(&format!("table={db}.items")) && out.contains("reread=3 deleted=1 repaired=4"),
        "{out}"
    );
    assert!(out.contains("reread=2 deleted=0 repaired=2"), "{out}");
    let reread = |outcome: &str| {
        sluice.metric(
            "sluice_capture_reread_rows_total",
            &[("table", &format!("{db}.items")), ("outcome", outcome)],
        )
    };
    assert_eq!(reread("read"), 3.0, "{}", sluice.log());
    assert_eq!(reread("deleted"), 1.0, "{}", sluice.log());
    // each damaged row written once at the sink, no other row below the writer's written again,
    assert_eq!(
        p.pg.psql(
            "sink",
            "SELECT string_agg(id || ':' || n, ' ' ORDER BY id) FROM \
             (SELECT id, count(*) n FROM public.applies WHERE id <= 100 GROUP BY id) w"
        )
        .unwrap()
        .trim(),
        "7:1 11:1 12:1"
    );
    assert_eq!(applies.written_twice(), "");
    // the signal table stays empty,
    assert_eq!(
        maria
            .root_sql(&format!("SELECT COUNT(*) FROM {db}.sluice_signal"))
            .unwrap()
            .trim(),
        "0"
    );
    // and verify finds the tables equal;
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");

    // a repair of more rows than capture reads at once (1,000 a read, published in turn at
    // the same position when nothing was written in between) sends every one.
    p.pg.psql("sink", &format!("DELETE FROM {db}.pairs WHERE v > 1500"))
        .unwrap();
    let pairs = format!("{db}.pairs");
    let (code, out) = verify(&p, &["--repair", "--settle-ms", "0", "--table", &pairs]);
    assert_eq!(code, 0, "{out}\n{}", sluice.log());
    assert!(out.contains("reread=1500 deleted=0 repaired=1500"), "{out}");
    assert_eq!(
        sluice.metric(
            "sluice_capture_reread_rows_total",
            &[("table", &pairs), ("outcome", "read")]
        ),
        1502.0
    );
    drop(sluice);
}

#[test]
fn a_mariadb_source_and_sink_are_compared_and_repaired_while_writes_go_on() {
    // Given a MariaDB table streamed into a MariaDB sink (another database), with a signal
    // table for repairs,
    let maria = sluice_harness::MariaDb::shared().unwrap();
    maria.create_database("mshop").unwrap();
    maria.create_database("mwh").unwrap();
    let (db, wh) = (maria.db("mshop"), maria.db("mwh"));
    maria
        .root_sql(&format!(
            "CREATE TABLE {db}.orders (id bigint PRIMARY KEY, customer varchar(50), \
               total decimal(12,2), placed datetime(6), paid tinyint(1));
             INSERT INTO {db}.orders SELECT seq, CONCAT('c', seq % 97), seq * 0.5, \
               TIMESTAMP('2026-03-01') + INTERVAL seq SECOND, seq % 2 FROM {db}.seq_1_to_3000;"
        ))
        .unwrap();
    let p = Pipeline::postgres(SLUICE, "verify_maria_to_maria")
        .source_section(&format!(
            "[sources.shop]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.orders\"]\n\
             server_id = {}\nsignal_table = \"{db}.sluice_signal\"",
            maria.url(),
            sluice_harness::MariaDb::next_server_id()
        ))
        .mysql_sink(&maria, &wh)
        .build();
    let sluice = p.run();
    wait_for_maria_rows(&maria, &format!("{wh}.orders"), "3000", &sluice);
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "table={db}.orders sink_table={wh}.orders status=equal source_rows=3000 sink_rows=3000"
        )),
        "{out}"
    );

    // when the sink is damaged — a row deleted, a decimal, a time to the microsecond and a
    // flag changed, a row added —
    maria
        .root_sql(&format!(
            "DELETE FROM {wh}.orders WHERE id = 7;
             UPDATE {wh}.orders SET total = total + 0.01 WHERE id = 11;
             UPDATE {wh}.orders SET placed = placed + INTERVAL 1 MICROSECOND WHERE id = 12;
             UPDATE {wh}.orders SET paid = 1 - paid WHERE id = 13;
             INSERT INTO {wh}.orders (id, customer) VALUES (99999, 'ghost');"
        ))
        .unwrap();
    // then each is found by its key,
    let (code, out) = verify(&p, &["--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("missing=1 extra=1 differing=3 in_flight=0"),
        "{out}"
    );
    // and a repair while the source takes writes (to other rows) makes the sink equal.
    let write = maria.root_sql_command();
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        for round in 0..20 {
            write(&format!(
                "UPDATE {writer_db}.orders SET total = total + 1 WHERE id > 100 AND id % 20 = {round}"
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (code, out) = verify(&p, &["--repair", "--settle-ms", "1000"]);
    writer.join().unwrap();
    assert_eq!(code, 0, "{out}\n{}", sluice.log());
    assert!(out.contains("reread=4 deleted=1 repaired=5"), "{out}");
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    drop(sluice);
}
