//! PostgreSQL transactions the server streams while they are in progress (pgoutput protocol 2):
//! capture holds their changes and publishes a transaction only when it commits, in commit
//! order; an aborted transaction or a rolled-back subtransaction never reaches Kafka, and a
//! capture killed while a transaction streams loses and doubles nothing.

use std::time::Duration;

use sluice_harness::{Pipeline, SluiceProcess};
use sluice_schemas::Datum;

mod common;
use common::TopicReader;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const CONVERGE: Duration = Duration::from_secs(120);
const STREAMED: &str = "sluice_capture_streamed_transactions_total";

/// A pipeline of `public.big` whose source streams any transaction past 64 kB (the least
/// `logical_decoding_work_mem` allows; 64 MB by default), with an observer of the sink's
/// writes.
fn streaming(name: &str) -> Pipeline {
    let p = Pipeline::postgres(SLUICE, name)
        .ddl("CREATE TABLE public.big (id bigint PRIMARY KEY, who text NOT NULL, n int NOT NULL)")
        .sink_ddl(
            "CREATE TABLE public.big (id bigint PRIMARY KEY, who text NOT NULL, n int NOT NULL)",
        )
        .tables(&["public.big"])
        .build();
    let source = p.pg.name("source");
    p.pg.psql(
        "postgres",
        &format!("ALTER DATABASE {source} SET logical_decoding_work_mem = '64kB'"),
    )
    .unwrap();
    p
}

/// `rows` inserts of `who` from `first`, in statements of 1,000 rows.
fn inserts(who: &str, first: i64, rows: i64) -> String {
    (0..rows / 1000)
        .map(|k| {
            let from = first + k * 1000;
            format!(
                "INSERT INTO public.big SELECT i, '{who}', 0 FROM generate_series({from}, {}) i;",
                from + 999
            )
        })
        .collect()
}

/// Runs `sql` through psql on a thread of its own (a session that stays open while the others
/// write).
fn session(p: &Pipeline, sql: String) -> std::thread::JoinHandle<()> {
    p.pg.write_in_rounds("source", 1, Duration::ZERO, move |_| sql.clone())
}

fn streamed(sluice: &SluiceProcess, outcome: &str) -> f64 {
    sluice.metric(STREAMED, &[("source", "pg_main"), ("outcome", outcome)])
}

#[test]
fn interleaved_streamed_transactions_publish_in_commit_order_and_aborted_work_never_reaches_kafka()
{
    // Given capture streaming transactions in progress,
    let p = streaming("streams");
    let applies =
        p.pg.log_applies("sink", "public.big", ("id", "bigint"), ("n", "int"))
            .unwrap();
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when three sessions write large transactions at the same time — `a` commits last, `b`
    // rolls a subtransaction back and commits first, `c` rolls back —
    let a = session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(3); {} COMMIT;",
            inserts("a", 1, 20_000),
            inserts("a", 20_001, 10_000)
        ),
    );
    let b = session(
        &p,
        format!(
            "BEGIN; {} SAVEPOINT s; {} ROLLBACK TO SAVEPOINT s; SELECT pg_sleep(1); {} COMMIT;",
            inserts("b", 100_001, 20_000),
            inserts("rolled back", 130_001, 5_000),
            inserts("b", 120_001, 5_000)
        ),
    );
    let c = session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(1); ROLLBACK;",
            inserts("c", 200_001, 20_000)
        ),
    );
    for s in [a, b, c] {
        s.join().unwrap();
    }

    // then the sink holds exactly the committed rows, each written once,
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    let count =
        p.pg.psql("sink", "SELECT count(*) FROM public.big")
            .unwrap();
    assert_eq!(count.trim(), "55000");
    assert_eq!(
        applies.written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
    // the server streamed the transactions (two committed, one aborted),
    assert!(streamed(&sluice, "committed") >= 2.0, "{}", sluice.log());
    assert!(streamed(&sluice, "aborted") >= 1.0, "{}", sluice.log());
    // and Kafka holds nothing of the aborted work, `b` entirely before `a`, positions rising.
    let topic = format!("{}sluice.pg_main.public.big", p.ns());
    let mut reader = TopicReader::new(&p.kafka().bootstrap(), p.ns(), &topic);
    let mut seen = Vec::new();
    let mut last = None;
    while let Some(read) = reader.next(Duration::from_secs(5)) {
        assert!(
            last.as_ref().is_none_or(|l| *l < read.position),
            "positions went back at event {}",
            seen.len()
        );
        last = Some(read.position.clone());
        let who = match read.event.row.after.as_ref().map(|row| &row[1]) {
            Some(Datum::String(who)) => who.clone(),
            other => panic!("an insert without its `who`: {other:?}"),
        };
        if seen.last() != Some(&who) {
            seen.push(who);
        }
    }
    assert_eq!(seen, ["b", "a"], "runs of events by writer, in topic order");
}

#[test]
fn a_capture_killed_while_a_transaction_streams_loses_and_doubles_nothing() {
    // Given capture streaming a large transaction that is still open,
    let p = streaming("streams_kill");
    let applies =
        p.pg.log_applies("sink", "public.big", ("id", "bigint"), ("n", "int"))
            .unwrap();
    let mut sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));
    p.source(&inserts("before", 1, 1_000));
    let open = session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(6); {} COMMIT;",
            inserts("open", 10_001, 20_000),
            inserts("open", 30_001, 10_000)
        ),
    );
    sluice.wait_for_metric(
        "sluice_capture_held_bytes",
        &[("source", "pg_main")],
        Duration::from_secs(30),
        "> 0 (changes of the open transaction held)",
        |v| v > 0.0,
    );

    // when capture is killed -9 with the transaction's first part held, the transaction
    // commits while it is down, and capture starts again,
    sluice.kill9();
    open.join().unwrap();
    p.source("UPDATE public.big SET n = 1 WHERE id % 100 = 0");
    let sluice = p.run();

    // then the sink equals the source (the server streams the transaction again from its
    // start), and no row version was written twice.
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    assert_eq!(
        applies.written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
    assert!(streamed(&sluice, "committed") >= 1.0, "{}", sluice.log());
}

#[test]
fn a_streamed_transaction_with_nothing_captured_in_it_commits_as_an_empty_one() {
    // Given capture of `public.big`, and a table it does not capture,
    let p = streaming("streams_empty");
    p.source("CREATE TABLE public.other (id bigint PRIMARY KEY, v text)");
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when a transaction large enough to be streamed writes only that other table,
    p.source(&format!(
        "BEGIN; {} COMMIT;",
        (0..20)
            .map(|k| format!(
                "INSERT INTO public.other SELECT i, 'x' FROM generate_series({}, {}) i;",
                k * 1000 + 1,
                k * 1000 + 1000
            ))
            .collect::<String>()
    ));
    p.source(&inserts("after", 1, 1_000));

    // then capture goes on: what follows it reaches the sink.
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    let log = sluice.log();
    assert!(!log.contains("capture stopped"), "{log}");
    assert!(!log.contains("capture interrupted"), "{log}");
}
