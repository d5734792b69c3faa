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

/// [`streaming`] in local mode (no broker): a streamed transaction is applied at the sink
/// while in progress. On a cluster of its own: another test creating a slot on the shared one
/// waits for every open transaction there — the sink's open one too, which then gives way.
fn local_streaming(name: &str, sink_ddl: &str) -> Pipeline {
    let p = Pipeline::postgres(SLUICE, name)
        .local()
        .own_postgres()
        .ddl("CREATE TABLE public.big (id bigint PRIMARY KEY, who text NOT NULL, n int NOT NULL)")
        .sink_ddl(sink_ddl)
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

const BIG: &str =
    "CREATE TABLE public.big (id bigint PRIMARY KEY, who text NOT NULL, n int NOT NULL)";

fn in_progress(sluice: &SluiceProcess, outcome: &str) -> f64 {
    sluice.metric(
        "sluice_router_provisional_transactions_total",
        &[("sink", "warehouse"), ("outcome", outcome)],
    )
}

/// Waits until `sql` at the sink answers `expected`.
fn wait_sql(p: &Pipeline, sql: &str, expected: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        let got = p.pg.psql("sink", sql).unwrap_or_default();
        if got.trim() == expected {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{sql} at the sink answered {got:?}, not {expected}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sink_count(p: &Pipeline) -> i64 {
    p.pg.psql("sink", "SELECT count(*) FROM public.big")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn in_local_mode_a_large_transaction_is_written_while_in_progress_and_seen_only_with_its_commit() {
    // Given a local-mode pipeline whose source streams transactions in progress,
    let p = local_streaming("inprog", BIG);
    let applies =
        p.pg.log_applies("sink", "public.big", ("id", "bigint"), ("n", "int"))
            .unwrap();
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when a large transaction writes, waits, and writes again while small transactions
    // commit around it,
    let open = session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(8); {} COMMIT;",
            inserts("open", 1, 20_000),
            inserts("open", 20_001, 10_000)
        ),
    );
    let small =
        p.pg.write_in_rounds("source", 40, Duration::from_millis(200), |round| {
            format!(
                "INSERT INTO public.big VALUES ({}, 'small', 0); \
                 UPDATE public.big SET n = n + 1 WHERE who = 'small'",
                900_000 + round
            )
        });
    // then its rows are written into a sink transaction of their own while it is open,
    sluice.wait_for_metric(
        "sluice_sink_provisional_rows_total",
        &[("sink", "warehouse")],
        Duration::from_secs(30),
        ">= 10000 (rows of the open transaction written at the sink)",
        |v| v >= 10_000.0,
    );
    // none of them visible there (nor to the observer of the sink's writes) before the
    // commit, while the small transactions arrive,
    std::thread::sleep(Duration::from_secs(1));
    let opened =
        p.pg.psql(
            "sink",
            "SELECT count(*) FILTER (WHERE who = 'open'), count(*) FILTER (WHERE who = 'small') FROM public.big",
        )
        .unwrap();
    let (open_rows, small_rows) = opened.trim().split_once('|').unwrap();
    assert_eq!(
        open_rows, "0",
        "rows of a transaction still in progress were visible"
    );
    assert!(
        small_rows.parse::<i64>().unwrap() > 0,
        "small transactions wait for nothing"
    );
    open.join().unwrap();
    small.join().unwrap();

    // and after it the sink equals the source, each row version written once, the
    // transaction committed at the sink as one (capture published nothing of it again).
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    assert_eq!(sink_count(&p), 30_040);
    assert_eq!(
        applies.written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
    assert_eq!(in_progress(&sluice, "committed"), 1.0, "{}", sluice.log());
    assert_eq!(
        sluice.metric(
            "sluice_capture_in_progress_transactions_total",
            &[("source", "pg_main"), ("outcome", "applied")]
        ),
        1.0
    );
}

#[test]
fn in_local_mode_a_transaction_in_progress_that_drops_a_full_identity_key_is_not_applied_by_it() {
    // Given a local-mode pipeline streaming a REPLICA IDENTITY FULL table (its Relation
    // messages flag every column, whatever its key) whose row 1 is at the sink,
    let p = local_streaming("inprog_full_key", BIG);
    p.source("ALTER TABLE public.big REPLICA IDENTITY FULL");
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));
    p.source("INSERT INTO public.big VALUES (1, 'first', 0)");
    wait_sql(
        &p,
        "SELECT who FROM public.big WHERE id = 1",
        "first",
        CONVERGE,
    );

    // when a large transaction drops the table's primary key and writes rows with ids the
    // table already has (streamed while in progress: the catalog cannot show the drop yet),
    p.source(&format!(
        "BEGIN; ALTER TABLE public.big DROP CONSTRAINT big_pkey; {} COMMIT;",
        inserts("open", 1, 5_000)
    ));

    // then it is not applied keyed by the key it dropped (row 1 would be overwritten): at its
    // commit it is given up, and read after it the table is stopped by name for having no key.
    sluice.wait_for_metric(
        "sluice_capture_table_stopped",
        &[("source", "pg_main"), ("table", "public.big")],
        CONVERGE,
        "1",
        |v| v == 1.0,
    );
    assert_eq!(
        p.pg.psql("sink", "SELECT id, who FROM public.big ORDER BY id")
            .unwrap()
            .trim(),
        "1|first"
    );
    assert_eq!(
        sluice.metric(
            "sluice_capture_in_progress_transactions_total",
            &[("source", "pg_main"), ("outcome", "applied")]
        ),
        0.0,
        "{}",
        sluice.log()
    );
    assert!(
        sluice.log().contains("table public.big has no primary key"),
        "{}",
        sluice.log()
    );
}

#[test]
fn in_local_mode_interleaved_transactions_in_progress_commit_in_order_and_rollbacks_leave_nothing()
{
    // Given a local-mode pipeline whose source streams transactions in progress,
    let p = local_streaming("inprog_mix", BIG);
    let applies =
        p.pg.log_applies("sink", "public.big", ("id", "bigint"), ("n", "int"))
            .unwrap();
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when `a` commits last, `b` rolls back a subtransaction (with one nested in it) and
    // commits first, and `c` rolls back, all streamed at once — and a row `a` writes last was
    // written by `b` first —
    let a = session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(4); {} UPDATE public.big SET n = 7 WHERE id = 100001; COMMIT;",
            inserts("a", 1, 20_000),
            inserts("a", 20_001, 10_000)
        ),
    );
    let b = session(
        &p,
        format!(
            "BEGIN; {} SAVEPOINT s; {} SAVEPOINT t; {} RELEASE SAVEPOINT t; ROLLBACK TO SAVEPOINT s; \
             SAVEPOINT u; {} RELEASE SAVEPOINT u; SELECT pg_sleep(1); {} COMMIT;",
            inserts("b", 100_001, 20_000),
            inserts("rolled back", 130_001, 5_000),
            inserts("rolled back", 140_001, 5_000),
            inserts("b", 150_001, 2_000),
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

    // then the sink equals the source, each row version written once,
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    assert_eq!(sink_count(&p), 57_000);
    assert_eq!(
        applies.written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
    let n =
        p.pg.psql("sink", "SELECT n FROM public.big WHERE id = 100001")
            .unwrap();
    assert_eq!(n.trim(), "7", "`a`'s update, after `b`'s insert");
    // and the two committed ones were held open at the sink, the rolled-back one let go.
    assert_eq!(in_progress(&sluice, "committed"), 2.0, "{}", sluice.log());
    assert!(in_progress(&sluice, "aborted") >= 1.0, "{}", sluice.log());
}

#[test]
fn in_local_mode_a_kill_while_a_transaction_is_written_in_progress_loses_and_doubles_nothing() {
    // Given a local-mode pipeline writing a large open transaction at the sink,
    let p = local_streaming("inprog_kill", BIG);
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
        "sluice_sink_provisional_rows_total",
        &[("sink", "warehouse")],
        Duration::from_secs(30),
        "> 0 (rows of the open transaction written at the sink)",
        |v| v > 0.0,
    );

    // when the process is killed -9 then, the transaction commits while it is down, and it
    // starts again,
    sluice.kill9();
    open.join().unwrap();
    p.source("UPDATE public.big SET n = 1 WHERE id % 100 = 0");
    let sluice = p.run();

    // then the sink equals the source and no row version was written twice.
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    assert_eq!(
        applies.written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
}

#[test]
fn in_local_mode_a_transaction_in_progress_that_blocks_the_sink_is_let_go_and_applied_after_its_commit(
) {
    // Given a sink with a unique index the source does not have,
    let p = local_streaming(
        "inprog_block",
        &format!("{BIG}; CREATE UNIQUE INDEX big_n_once ON public.big (n) WHERE n > 0"),
    );
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when a large open transaction writes n = 7, and a transaction committed meanwhile writes
    // n = 7 too (at the sink it would wait for the open one's commit, which waits for it),
    let open = session(
        &p,
        format!(
            "BEGIN; INSERT INTO public.big VALUES (1, 'open', 7); {} SELECT pg_sleep(6); {} COMMIT;",
            inserts("open", 10_001, 20_000),
            inserts("open", 30_001, 10_000)
        ),
    );
    sluice.wait_for_metric(
        "sluice_sink_provisional_rows_total",
        &[("sink", "warehouse")],
        Duration::from_secs(30),
        "> 0 (rows of the open transaction written at the sink)",
        |v| v > 0.0,
    );
    p.source("INSERT INTO public.big VALUES (2, 'committed first', 7)");

    // then the sink's transaction of the open one is rolled back so the other goes on, and
    // the open one is applied after its commit — its row the sink refuses dead-lettered, the
    // rest there: nothing lost, nothing in a deadlock.
    let dead_letters = p.dir.path().join("state").join("dead-letters.jsonl");
    wait_sql(
        &p,
        "SELECT count(*) FROM public.big WHERE id = 2",
        "1",
        Duration::from_secs(30),
    );
    open.join().unwrap();
    wait_sql(&p, "SELECT count(*) FROM public.big", "30001", CONVERGE);
    assert_eq!(in_progress(&sluice, "abandoned"), 1.0, "{}", sluice.log());
    assert_eq!(in_progress(&sluice, "committed"), 0.0);
    let letters = std::fs::read_to_string(&dead_letters).unwrap_or_default();
    assert_eq!(letters.lines().count(), 1, "{letters}");
    assert!(letters.contains("rejected_by_sink"), "{letters}");
    assert!(sluice.log().contains("waited"), "the reason is logged");
}

#[test]
fn in_local_mode_a_postgres_sink_holds_a_transaction_in_progress_and_a_mariadb_one_takes_it_after_its_commit(
) {
    // Given a local-mode pipeline from a streaming PostgreSQL source into a PostgreSQL sink and,
    // beside it, a MariaDB one (which cannot hold a transaction open beside its batches),
    let maria = sluice_harness::MariaDb::shared().unwrap();
    maria.create_database("inprog_wh").unwrap();
    let wh = maria.db("inprog_wh");
    let p = Pipeline::postgres(SLUICE, "inprog_maria")
        .local()
        .own_postgres()
        .ddl(BIG)
        .sink_ddl(BIG)
        .tables(&["public.big"])
        .router("also_sinks = [\"mart\"]")
        .build();
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        config.replace(
            "[router]",
            &format!(
                "[sinks.mart]\nkind = \"mysql\"\nurl = \"{}/{wh}\"\ndatabase = \"{wh}\"\n\n[router]",
                maria.url()
            ),
        ),
    )
    .unwrap();
    let source = p.pg.name("source");
    p.pg.psql(
        "postgres",
        &format!("ALTER DATABASE {source} SET logical_decoding_work_mem = '64kB'"),
    )
    .unwrap();
    let applies =
        p.pg.log_applies("sink", "public.big", ("id", "bigint"), ("n", "int"))
            .unwrap();
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));

    // when a large transaction streams while in progress and commits,
    session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(2); {} COMMIT;",
            inserts("open", 1, 20_000),
            inserts("open", 20_001, 10_000)
        ),
    )
    .join()
    .unwrap();

    // then the PostgreSQL sink committed the one it held, MariaDB refused to hold one, so
    // capture published the transaction after its commit: MariaDB applied it, and the
    // PostgreSQL sink skipped it as applied — both hold all of it, each row written once.
    let deadline = std::time::Instant::now() + CONVERGE;
    while maria
        .root_sql(&format!("SELECT COUNT(*) FROM {wh}.big"))
        .ok()
        .as_deref()
        .map(str::trim)
        != Some("30000")
    {
        assert!(std::time::Instant::now() < deadline, "{}", sluice.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    p.wait_for_match(&sluice, &["public.big"], CONVERGE);
    assert_eq!(
        applies.written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
    assert_eq!(in_progress(&sluice, "committed"), 1.0, "{}", sluice.log());
    assert_eq!(
        sluice.metric(
            "sluice_router_provisional_transactions_total",
            &[("sink", "mart"), ("outcome", "abandoned")]
        ),
        1.0
    );
    assert_eq!(
        sluice.metric(
            "sluice_capture_in_progress_transactions_total",
            &[("source", "pg_main"), ("outcome", "after_commit")]
        ),
        1.0
    );
}

#[test]
fn in_local_mode_a_sink_outage_while_a_transaction_is_written_in_progress_loses_and_doubles_nothing(
) {
    // Given a local-mode pipeline writing a large open transaction into a sink on a server of
    // its own,
    let p = local_streaming("inprog_outage", BIG);
    let mut sink = sluice_harness::Postgres::start().unwrap();
    sink.create_database("sink").unwrap();
    sink.psql("sink", BIG).unwrap();
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        config.replace(&p.pg.url("sink"), &sink.url("sink")),
    )
    .unwrap();
    sink.log_applies("sink", "public.big", ("id", "bigint"), ("n", "int"))
        .unwrap();
    let sluice = p.run();
    sluice.wait_for_log("starting replication", Duration::from_secs(60));
    let open = session(
        &p,
        format!(
            "BEGIN; {} SELECT pg_sleep(5); {} COMMIT;",
            inserts("open", 1, 20_000),
            inserts("open", 20_001, 10_000)
        ),
    );
    sluice.wait_for_metric(
        "sluice_sink_provisional_rows_total",
        &[("sink", "warehouse")],
        Duration::from_secs(30),
        "> 0 (rows of the open transaction written at the sink)",
        |v| v > 0.0,
    );

    // when the sink's server stops then (the open transaction with it), the source commits
    // and writes on, and the sink comes back,
    sink.stop();
    open.join().unwrap();
    p.source("UPDATE public.big SET n = 1 WHERE id % 100 = 0");
    std::thread::sleep(Duration::from_secs(2));
    sink.start_again().unwrap();

    // then the sink equals the source, each row version written once.
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let source = sluice_harness::compare::pg_rows(
            &p.pg,
            "source",
            "SELECT * FROM public.big ORDER BY id",
        )
        .unwrap();
        let at_sink =
            sluice_harness::compare::pg_rows(&sink, "sink", "SELECT * FROM public.big ORDER BY id")
                .unwrap_or_default();
        if source == at_sink {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "source {} rows, sink {}\n{}",
            source.len(),
            at_sink.len(),
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        sink.apply_log("sink", "id", "n").written_twice(),
        "",
        "rows written twice (id|n|times)"
    );
    // (The open transaction went with the sink: it was applied after its commit.)
    assert_eq!(in_progress(&sluice, "abandoned"), 1.0, "{}", sluice.log());
}
