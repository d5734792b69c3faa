//! Faults on the way into the sink: a change the sink refuses goes to the dead-letter topic
//! with the reason and its origin, and everything else — other rows of the batch, other
//! tables, later changes — is applied.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{metric_value, Postgres, SluiceProcess, Tansu, TansuStorage};

mod common;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn wait_for(pg: &Postgres, expected: &[&str], query: &str, sluice: &SluiceProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pg_rows(pg, "sink", query) {
            Ok(rows) if rows == expected => return,
            other => assert!(
                Instant::now() < deadline,
                "{query}: {other:?}\n--- log ---\n{}",
                sluice.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_change_the_sink_refuses_is_dead_lettered_and_the_rest_is_applied() {
    // Given a sink table stricter than its source (a CHECK and a shorter column),
    let pg = Postgres::start().unwrap();
    pg.create_database("source").unwrap();
    pg.create_database("sink").unwrap();
    pg.psql(
        "source",
        "CREATE TABLE public.orders (id int PRIMARY KEY, qty int, note text);
         CREATE TABLE public.other (id int PRIMARY KEY, v text);",
    )
    .unwrap();
    pg.psql(
        "sink",
        "CREATE TABLE public.orders (id int PRIMARY KEY, qty int CONSTRAINT qty_not_negative CHECK (qty >= 0), note varchar(5))",
    )
    .unwrap();
    let kafka = Tansu::start(TansuStorage::Memory).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sluice, _) = SluiceProcess::start_in(
        Path::new(SLUICE),
        "run",
        dir.path(),
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n[sources.pg]\nkind = \"postgres\"\nurl = \"{}\"\n\
             tables = [\"public.orders\", \"public.other\"]\nslot = \"faults\"\npublication = \"faults\"\n\
             [sinks.wh]\nkind = \"postgres\"\nurl = \"{}\"\n[router]\nsink = \"wh\"\ngroup_id = \"faults\"\n\
             [router.batch]\nmax_delay_ms = 200\n",
            kafka.bootstrap(),
            pg.url("source"),
            pg.url("sink")
        ),
    )
    .unwrap();

    // when rows the sink refuses arrive in one transaction with rows it takes, and other tables
    // and later changes follow,
    pg.psql(
        "source",
        "BEGIN;
         INSERT INTO public.orders SELECT i, i, 'ok' FROM generate_series(1, 20) i;
         UPDATE public.orders SET qty = -1 WHERE id = 7;
         UPDATE public.orders SET note = 'far too long' WHERE id = 12;
         INSERT INTO public.other SELECT i, 'v' || i FROM generate_series(1, 10) i;
         COMMIT;",
    )
    .unwrap();
    pg.psql(
        "source",
        "INSERT INTO public.orders SELECT i, i, 'later' FROM generate_series(21, 25) i",
    )
    .unwrap();

    // then the sink has every row but the refused changes (row 7 keeps its inserted value, row
    // 12 its insert's; the refused updates are not applied),
    let orders = "SELECT id, qty, note FROM public.orders ORDER BY id";
    let mut expected: Vec<String> = (1..=20).map(|i| format!("{i}|{i}|ok")).collect();
    expected.extend((21..=25).map(|i| format!("{i}|{i}|later")));
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    wait_for(&pg, &expected, orders, &sluice);
    let source_other = pg_rows(&pg, "source", "SELECT * FROM public.other ORDER BY id").unwrap();
    let sink_other = pg_rows(&pg, "sink", "SELECT * FROM public.other ORDER BY id").unwrap();
    compare_rows(&source_other, &sink_other).unwrap();

    // the two refused changes are in the dead-letter topic, unchanged, with why and whence,
    let dead = common::read_raw(
        &kafka.bootstrap(),
        "_sluice_dead_letter",
        Duration::from_secs(3),
    );
    assert_eq!(
        dead.len(),
        2,
        "{:?}",
        dead.iter().map(|d| &d.headers).collect::<Vec<_>>()
    );
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["sluice.dlq.reason"].as_str())
        .collect();
    assert_eq!(reasons, ["rejected_by_sink", "rejected_by_sink"]);
    let details: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["sluice.dlq.detail"].as_str())
        .collect();
    assert!(
        details.iter().any(
            |d| d.contains("wh refused the update of a row of public.orders")
                && d.contains("SQLSTATE 23514")
                && d.contains("constraint: qty_not_negative")
        ),
        "{details:?}"
    );
    assert!(
        details.iter().any(
            |d| d.contains("value too long for type character varying(5)")
                && d.contains("SQLSTATE 22001")
        ),
        "{details:?}"
    );
    for d in &dead {
        assert_eq!(d.headers["sluice.dlq.topic"], "sluice.public.orders");
        assert_eq!(d.headers["sluice.dlq.partition"], "0");
        assert!(d.headers["sluice.dlq.offset"].parse::<i64>().unwrap() >= 20);
        // The message itself, as it was consumed (Avro single-object encoding).
        assert_eq!(
            d.payload.as_deref().map(|p| &p[..2]),
            Some(&[0xC3, 0x01][..])
        );
    }
    // and the router goes on: a change to a refused row that the sink takes is applied.
    pg.psql(
        "source",
        "UPDATE public.orders SET qty = 70, note = 'fixed' WHERE id = 7",
    )
    .unwrap();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected[6] = "7|70|fixed".into();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    wait_for(&pg, &expected, orders, &sluice);
    let dlq = metric_value(
        &sluice.metrics().unwrap(),
        "sluice_router_dlq_total",
        &[("reason", "rejected_by_sink")],
    );
    assert_eq!(dlq, Some(2.0));
}
