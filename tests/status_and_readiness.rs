//! What an operator sees of a running pipeline: `sluice status` (tables, snapshot progress,
//! positions, consumer lag), `/readyz` through a sink outage, and the consumer-lag metric.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{http_get, metric_value, Broker, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Polls `check` every 500 ms until it returns `Some`, or panics with `what` and `context()`.
fn eventually<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(config: &Path) -> (i32, String) {
    let out = Command::new(SLUICE)
        .args(["status", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn count(pg: &Postgres, db: &str, sql: &str) -> Option<i64> {
    pg.psql(db, sql).ok().and_then(|s| s.trim().parse().ok())
}

/// A source table with `rows` rows (analyzed, so a snapshot has an estimate) on the shared
/// cluster, a sink on a server of its own (the tests stop it), and `sluice run` over them.
struct Setup {
    source: Postgres,
    sink: Postgres,
    kafka: Broker,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    sluice: SluiceProcess,
}

fn setup(rows: i32) -> Setup {
    let source = Postgres::shared().unwrap();
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            &format!(
                "CREATE TABLE public.t (id int PRIMARY KEY, v text); \
                 INSERT INTO public.t SELECT i, 'v' || i FROM generate_series(1, {rows}) i; ANALYZE public.t"
            ),
        )
        .unwrap();
    let sink = Postgres::start().unwrap();
    sink.create_database("wh").unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sluice, config) = SluiceProcess::start_in(
        Path::new(SLUICE),
        "run",
        dir.path(),
        &format!(
            r#"
[kafka]
{kafka}
[sources.pg]
kind = "postgres"
url = "{}"
tables = ["public.t"]
slot = "{slot}"
publication = "status"
[sinks.wh]
kind = "postgres"
url = "{}"
[router]
sink = "wh"
group_id = "{ns}status"
"#,
            source.url("shop"),
            sink.url("wh"),
            kafka = kafka.kafka_toml("sluice"),
            ns = kafka.namespace(),
            slot = source.name("status"),
        ),
    )
    .unwrap();
    Setup {
        source,
        sink,
        kafka,
        _dir: dir,
        config,
        sluice,
    }
}

#[test]
fn status_shows_each_table_and_readyz_follows_a_sink_outage() {
    // Given a source table of 2,000 rows, a sink on its own server, and a pipeline over them,
    // (`_dir` is bound so it lives to the end of the test.)
    let Setup {
        source,
        mut sink,
        kafka,
        _dir,
        config,
        sluice,
    } = setup(2000);
    let topic = format!("{}sluice.pg.public.t", kafka.namespace());
    let port = sluice.metrics_port;
    let log = || sluice.log();

    // when the snapshot has been applied,
    eventually(
        "the snapshot in the sink",
        Duration::from_secs(60),
        log,
        || (count(&sink, "wh", "SELECT count(*) FROM public.t") == Some(2000)).then_some(()),
    );

    // then status reports the table done, captured and applied, with no consumer lag (the lag
    // comes from librdkafka statistics every 5 s), and exits 0 because all is ready.
    let report = eventually(
        "a settled status report",
        Duration::from_secs(30),
        log,
        || {
            let (code, out) = status(&config);
            let line = out
                .lines()
                .find(|l| l.starts_with("pg ") && l.contains("public.t"))?;
            let cells: Vec<&str> = line
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            (code == 0 && cells == ["pg", "public.t", "done 2,000", "2,000", "2,000", "0"])
                .then_some(out)
        },
    );
    assert!(report.contains("capture pg: ready"), "{report}");
    assert!(report.contains("router: ready"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("pg ") && l.contains("streaming") && l.contains("lsn ")),
        "{report}"
    );
    let (code, body) = http_get(port, "/readyz").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "capture pg: ready\nrouter: ready\n")
    );

    // When the sink goes away and changes keep coming,
    sink.stop();
    source
        .psql(
            "shop",
            "INSERT INTO public.t SELECT i, 'late' FROM generate_series(2001, 2010) i",
        )
        .unwrap();

    // then /readyz says the router lost its sink (capture stays ready), status exits 1, and
    // the consumer lag shows the ten waiting changes.
    let body = eventually("/readyz to fail", Duration::from_secs(30), log, || {
        http_get(port, "/readyz")
            .filter(|(code, _)| *code == 503)
            .map(|(_, b)| b)
    });
    assert_eq!(body, "capture pg: ready\nrouter: not connected to sink\n");
    let (code, out) = status(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NOT READY") && out.contains("router: not connected to sink"),
        "{out}"
    );
    eventually(
        "the consumer lag to show the waiting changes",
        Duration::from_secs(30),
        log,
        || {
            let text = sluice.metrics()?;
            let lag = metric_value(
                &text,
                "sluice_router_consumer_lag_messages",
                &[("topic", &topic)],
            )?;
            (lag >= 10.0).then_some(())
        },
    );

    // When the sink comes back, the router reconnects, applies what waited, and is ready again
    // with no lag; the sink equals the source.
    sink.start_again().unwrap();
    eventually(
        "the late rows in the sink",
        Duration::from_secs(90),
        log,
        || (count(&sink, "wh", "SELECT count(*) FROM public.t") == Some(2010)).then_some(()),
    );
    eventually(
        "readiness and zero lag",
        Duration::from_secs(30),
        log,
        || {
            let ready = http_get(port, "/readyz").is_some_and(|(code, _)| code == 200);
            let lag = metric_value(
                &sluice.metrics()?,
                "sluice_router_consumer_lag_messages",
                &[("topic", &topic)],
            )?;
            (ready && lag == 0.0).then_some(())
        },
    );
    let q = "SELECT * FROM public.t ORDER BY id";
    compare_rows(
        &pg_rows(&source, "shop", q).unwrap(),
        &pg_rows(&sink, "wh", q).unwrap(),
    )
    .unwrap();
    assert!(
        sluice.log().contains("reconnecting to the sink"),
        "{}",
        sluice.log()
    );

    // And --watch without a terminal prints timestamped log lines per source and table.
    let mut watch = Command::new(SLUICE)
        .args(["status", "--watch", "--interval", "0.3", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    watch.kill().unwrap();
    let out = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    let table_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("source=pg table=public.t "))
        .collect();
    assert!(table_lines.len() >= 2, "{out}");
    for line in table_lines {
        // 2026-11-23T09:41:07Z source=pg table=public.t snapshot="done 2000" ...
        let (ts, rest) = line.split_once(' ').unwrap();
        assert!(
            ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{line}"
        );
        assert!(
            rest.contains("captured=2010 applied=2010 consumer_lag=0"),
            "{line}"
        );
    }
}

#[test]
fn a_sink_down_before_a_partition_s_first_message_holds_it_until_the_sink_returns() {
    // Given a pipeline over an empty table, so the router has read nothing yet,
    let mut p = setup(0);
    let log = || p.sluice.log();
    eventually(
        "the router to be ready",
        Duration::from_secs(30),
        log,
        || {
            http_get(p.sluice.metrics_port, "/readyz")
                .is_some_and(|(code, _)| code == 200)
                .then_some(())
        },
    );
    // when the sink goes down before the first change arrives (the router then has to read
    // the partition's stored offset from a sink that is not there),
    // (One row: Tansu 0.6 returns nothing to a fetch that starts inside a record batch, and
    // resuming after the pause fetches from the next offset; see README, Known limits.)
    p.sink.stop();
    p.source
        .psql("shop", "INSERT INTO public.t VALUES (1, 'first')")
        .unwrap();
    let log = || p.sluice.log();
    eventually(
        "the router to report the sink down",
        Duration::from_secs(30),
        log,
        || {
            http_get(p.sluice.metrics_port, "/readyz")
                .is_some_and(|(_, body)| body.contains("router: not connected to sink"))
                .then_some(())
        },
    );
    // then the router keeps retrying rather than stopping; once the sink is back that change
    // and every later one arrive.
    p.sink.start_again().unwrap();
    p.source
        .psql(
            "shop",
            "INSERT INTO public.t SELECT i, 'x' FROM generate_series(2, 50) i",
        )
        .unwrap();
    let (sink, source) = (&p.sink, &p.source);
    eventually("the rows in the sink", Duration::from_secs(90), log, || {
        (count(sink, "wh", "SELECT count(*) FROM public.t") == Some(50)).then_some(())
    });
    let q = "SELECT * FROM public.t ORDER BY id";
    compare_rows(
        &pg_rows(source, "shop", q).unwrap(),
        &pg_rows(sink, "wh", q).unwrap(),
    )
    .unwrap();
    assert!(
        !p.sluice.log().contains("router stopped"),
        "{}",
        p.sluice.log()
    );
}
