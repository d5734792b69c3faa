//! The PostgreSQL sink follows the source's columns (ADD always; type changes and drops by
//! policy), and a table it cannot take waits with its changes held while the others go on.

use std::time::Duration;

use sluice_harness::compare::pg_rows;
use sluice_harness::{metric_value, Pipeline, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A source with `public.a` and `public.b`, an empty sink, and `sluice run` with `sink_extra`
/// in the sink's section. The compatibility policy is off: these tests change types Avro
/// cannot resolve, on purpose.
struct Setup {
    p: Pipeline,
    sluice: SluiceProcess,
}

fn setup(sink_extra: &str) -> Setup {
    let p = Pipeline::postgres(SLUICE, "evolve")
        .ddl(
            "CREATE TABLE public.a (id int PRIMARY KEY, qty int, code int, note text);
             CREATE TABLE public.b (id int PRIMARY KEY, v text);
             INSERT INTO public.a SELECT i, i, i * 10, 'n' || i FROM generate_series(1, 20) i;
             INSERT INTO public.b SELECT i, 'v' || i FROM generate_series(1, 5) i;",
        )
        .tables(&["public.a", "public.b"])
        .sections("[schemas]\ncompatibility = \"none\"")
        .sink(sink_extra)
        .router("blocked_retry_ms = 1000")
        .build();
    let sluice = p.run();
    Setup { p, sluice }
}

/// Waits until `query` reads the same at the sink as at the source.
fn wait_for_same(s: &Setup, query: &str) {
    s.p.wait_for_query(&s.sluice, query, query, Duration::from_secs(60));
}

fn column_type(s: &Setup, column: &str) -> String {
    s.p.pg
        .psql(
            "sink",
            &format!(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'public.a'::regclass AND attname = '{column}' AND NOT attisdropped"
            ),
        )
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn by_default_widened_types_are_followed_and_dropped_columns_keep_their_data() {
    let s = setup("");
    let query = "SELECT id, qty, code FROM public.a ORDER BY id";
    wait_for_same(&s, query);
    // When a column widens (int → bigint) and another becomes text, and one is dropped,
    s.p.pg
        .psql(
            "source",
            "ALTER TABLE public.a ALTER COLUMN qty TYPE bigint;
         UPDATE public.a SET qty = 9000000000 WHERE id = 1;
         ALTER TABLE public.a ALTER COLUMN code TYPE text;
         UPDATE public.a SET code = 'X-' || code WHERE id <= 3;
         ALTER TABLE public.a DROP COLUMN note;
         INSERT INTO public.a (id, qty, code) VALUES (21, 21, 'new');",
        )
        .unwrap();
    // then the sink columns follow, with every value,
    wait_for_same(&s, query);
    assert_eq!(column_type(&s, "qty"), "bigint");
    assert_eq!(column_type(&s, "code"), "text");
    // and the dropped column stays with the data it had; new rows leave it null.
    assert_eq!(
        pg_rows(
            &s.p.pg,
            "sink",
            "SELECT id, note FROM public.a WHERE id IN (2, 21) ORDER BY id"
        )
        .unwrap(),
        ["2|n2", "21|"]
    );
    let metrics = s.sluice.metrics().unwrap();
    assert_eq!(
        metric_value(&metrics, "sluice_sink_ddl_total", &[("ddl", "alter_type")]),
        Some(2.0)
    );
}

#[test]
fn a_table_the_sink_cannot_take_waits_while_the_others_go_on() {
    // Given a sink that follows every type change and drop,
    let s = setup("column_types = \"alter\"\ndropped_columns = \"drop\"");
    let a = "SELECT id, qty, code FROM public.a ORDER BY id";
    let b = "SELECT id, v FROM public.b ORDER BY id";
    wait_for_same(&s, a);
    wait_for_same(&s, b);
    // and a row in the sink that only the sink has, which the next type change cannot convert,
    s.p.pg.psql("sink", "ALTER TABLE public.a ALTER COLUMN note TYPE text; INSERT INTO public.a VALUES (999, 0, 0, 'sink only')")
        .unwrap();
    s.p.pg.psql("sink", "ALTER TABLE public.a ALTER COLUMN code TYPE text; UPDATE public.a SET code = 'not a number' WHERE id = 999")
        .unwrap();
    // when the source changes code from int to numeric(12,2) and keeps writing both tables,
    s.p.pg
        .psql(
            "source",
            "ALTER TABLE public.a ALTER COLUMN code TYPE numeric(12,2)",
        )
        .unwrap();
    // all in one transaction (one record batch: the partition of a is paused inside it, and
    // on Tansu 0.6 the fetch after the resume starts inside it),
    let mut sql = String::from("BEGIN;");
    for id in 1..=5 {
        sql.push_str(&format!(
            "UPDATE public.a SET code = code + 0.5 WHERE id = {id}; \
             INSERT INTO public.b VALUES ({}, 'later');",
            id + 5
        ));
    }
    sql.push_str("COMMIT;");
    s.p.pg.psql("source", &sql).unwrap();
    // then table b goes on while a waits, its changes held, saying why,
    wait_for_same(&s, b);
    s.sluice.wait_for_metric(
        "sluice_router_table_blocked",
        &[("table", "public.a")],
        Duration::from_secs(30),
        "1",
        |v| v == 1.0,
    );
    let log = s.sluice.log();
    assert!(
        log.contains("alter type of public.a failed: invalid input syntax for type numeric: \\\"not a number\\\"")
            || log.contains("alter type of public.a failed: invalid input syntax for type numeric: \"not a number\""),
        "{log}"
    );
    assert!(
        log.contains("Its changes wait; the other tables go on"),
        "{log}"
    );
    // and once the sink's own data is fixed, a takes its held changes and goes on.
    s.p.pg
        .psql("sink", "DELETE FROM public.a WHERE id = 999")
        .unwrap();
    let a_all = "SELECT id, qty, code FROM public.a ORDER BY id";
    wait_for_same(&s, a_all);
    assert_eq!(column_type(&s, "code"), "numeric(12,2)");
    s.p.pg
        .psql(
            "source",
            "ALTER TABLE public.a DROP COLUMN note; UPDATE public.a SET qty = 0 WHERE id = 1",
        )
        .unwrap();
    wait_for_same(&s, a_all);
    assert_eq!(
        column_type(&s, "note"),
        "",
        "the dropped column is dropped in the sink too"
    );
    assert_eq!(
        metric_value(
            &s.sluice.metrics().unwrap(),
            "sluice_router_table_blocked",
            &[("table", "public.a")]
        ),
        Some(0.0)
    );
}
