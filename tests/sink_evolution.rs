//! The PostgreSQL sink follows the source's columns (ADD always; type changes and drops by
//! policy), and a table it cannot take waits with its changes held while the others go on.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{metric_value, Broker, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A source with `public.a` and `public.b`, an empty sink, and `sluice run` with `sink_extra`
/// in the sink's section. The compatibility policy is off: these tests change types Avro
/// cannot resolve, on purpose.
struct Setup {
    pg: Postgres,
    _kafka: Broker,
    _dir: tempfile::TempDir,
    sluice: SluiceProcess,
}

fn setup(sink_extra: &str) -> Setup {
    let pg = Postgres::start().unwrap();
    pg.create_database("source").unwrap();
    pg.create_database("sink").unwrap();
    pg.psql(
        "source",
        "CREATE TABLE public.a (id int PRIMARY KEY, qty int, code int, note text);
         CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.a SELECT i, i, i * 10, 'n' || i FROM generate_series(1, 20) i;
         INSERT INTO public.b SELECT i, 'v' || i FROM generate_series(1, 5) i;",
    )
    .unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sluice, _) = SluiceProcess::start_in(
        Path::new(SLUICE),
        "run",
        dir.path(),
        &format!(
            "[kafka]\n{}[schemas]\ncompatibility = \"none\"\n\
             [sources.pg]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.a\", \"public.b\"]\n\
             slot = \"evolve\"\npublication = \"evolve\"\n\
             [sinks.wh]\nkind = \"postgres\"\nurl = \"{}\"\n{sink_extra}\n\
             [router]\nsink = \"wh\"\ngroup_id = \"{ns}evolve\"\nblocked_retry_ms = 1000\n\
             [router.batch]\nmax_delay_ms = 50\n",
            kafka.kafka_toml("sluice"),
            pg.url("source"),
            pg.url("sink"),
            ns = kafka.namespace(),
        ),
    )
    .unwrap();
    Setup {
        pg,
        _kafka: kafka,
        _dir: dir,
        sluice,
    }
}

fn wait_for(s: &Setup, what: &str, query: &str, expected: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = pg_rows(&s.pg, "sink", query);
        if rows.as_deref().is_ok_and(&expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {rows:?}\n--- log ---\n{}",
            s.sluice.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn same_as_source<'a>(s: &'a Setup, query: &str) -> impl Fn(&[String]) -> bool + 'a {
    let query = query.to_string();
    move |sink: &[String]| {
        let source = pg_rows(&s.pg, "source", &query).unwrap();
        compare_rows(&source, sink).is_ok()
    }
}

fn column_type(s: &Setup, column: &str) -> String {
    s.pg.psql(
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
    wait_for(&s, "the snapshot", query, same_as_source(&s, query));
    // When a column widens (int → bigint) and another becomes text, and one is dropped,
    s.pg.psql(
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
    wait_for(&s, "the widened values", query, same_as_source(&s, query));
    assert_eq!(column_type(&s, "qty"), "bigint");
    assert_eq!(column_type(&s, "code"), "text");
    // and the dropped column stays with the data it had; new rows leave it null.
    assert_eq!(
        pg_rows(
            &s.pg,
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
    wait_for(&s, "the snapshot", a, same_as_source(&s, a));
    wait_for(&s, "the snapshot of b", b, same_as_source(&s, b));
    // and a row in the sink that only the sink has, which the next type change cannot convert,
    s.pg.psql("sink", "ALTER TABLE public.a ALTER COLUMN note TYPE text; INSERT INTO public.a VALUES (999, 0, 0, 'sink only')")
        .unwrap();
    s.pg.psql("sink", "ALTER TABLE public.a ALTER COLUMN code TYPE text; UPDATE public.a SET code = 'not a number' WHERE id = 999")
        .unwrap();
    // when the source changes code from int to numeric(12,2) and keeps writing both tables,
    s.pg.psql(
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
    s.pg.psql("source", &sql).unwrap();
    // then table b goes on while a waits, its changes held, saying why,
    wait_for(&s, "b goes on", b, same_as_source(&s, b));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(
        &s.sluice.metrics().unwrap_or_default(),
        "sluice_router_table_blocked",
        &[("table", "public.a")],
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "{}", s.sluice.log());
        std::thread::sleep(Duration::from_millis(200));
    }
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
    s.pg.psql("sink", "DELETE FROM public.a WHERE id = 999")
        .unwrap();
    let a_all = "SELECT id, qty, code FROM public.a ORDER BY id";
    wait_for(&s, "a after the fix", a_all, same_as_source(&s, a_all));
    assert_eq!(column_type(&s, "code"), "numeric(12,2)");
    s.pg.psql(
        "source",
        "ALTER TABLE public.a DROP COLUMN note; UPDATE public.a SET qty = 0 WHERE id = 1",
    )
    .unwrap();
    wait_for(&s, "a after the drop", a_all, same_as_source(&s, a_all));
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
