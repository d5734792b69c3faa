//! Capture alone, killed with SIGKILL again and again while the source keeps writing: every
//! change reaches Kafka at least once, in order per key, and the position each event carries
//! lets a consumer drop the repeats.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::{free_port, Broker, MariaDb, Postgres, SluiceProcess};
use sluice_schemas::{Datum, Position};

mod common;
use common::TopicReader;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const KEYS: i64 = 20;

fn config_file(dir: &Path, kafka: &Broker, metrics_port: u16, source: &str) -> std::path::PathBuf {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
{}{source}
snapshot = "never"
[observability]
listen = "127.0.0.1:{metrics_port}"
"#,
            kafka.kafka_toml("restarts"),
        ),
    )
    .unwrap();
    config
}

/// Runs `sluice capture` while `increment(id)` adds one to a key's counter, 300 times, with
/// capture killed -9 and restarted every 60 transactions; then checks the topic: every value
/// of every key arrived, and dropping every event whose position is not above the last one
/// kept leaves each key's values exactly 1, 2, 3, … in order.
fn kill_9_while_counting(
    kafka: &Broker,
    config: &Path,
    topic: &str,
    streaming_marker: &str,
    mut increment: impl FnMut(i64),
) {
    let dir = config.parent().unwrap();
    let log = dir.join("sluice.log");
    let topic = &format!("{}{topic}", kafka.namespace());
    let port = |c: &Path| -> u16 {
        let text = std::fs::read_to_string(c).unwrap();
        text.rsplit(':')
            .next()
            .unwrap()
            .trim()
            .trim_end_matches('"')
            .parse()
            .unwrap()
    };
    let metrics_port = port(config);
    let start =
        || SluiceProcess::start(Path::new(SLUICE), "capture", config, &log, metrics_port).unwrap();
    let mut capture = start();
    // With snapshot = "never", changes before capture first streams are not captured: wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !capture.log().contains(streaming_marker) {
        assert!(
            Instant::now() < deadline,
            "capture never started streaming\n{}",
            capture.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut expected: HashMap<i64, i64> = HashMap::new();
    for t in 0..300 {
        let id = 1 + (t * 7) % KEYS;
        increment(id);
        *expected.entry(id).or_insert(0) += 1;
        if t % 60 == 30 {
            capture.kill9();
            capture = start();
        }
    }
    let events = read_until_complete(kafka, topic, &expected, Duration::from_secs(90));
    let mut seen: HashMap<i64, Vec<i64>> = HashMap::new();
    for (_, id, v) in &events {
        seen.entry(*id).or_default().push(*v);
    }
    for (id, last) in &expected {
        let values = &seen[id];
        for v in 1..=*last {
            assert!(
                values.contains(&v),
                "key {id}: value {v} never reached Kafka ({values:?})"
            );
        }
    }
    let mut high_water: Option<Position> = None;
    let mut kept: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut dropped = 0;
    for (position, id, v) in &events {
        if high_water.as_ref().is_some_and(|hw| position <= hw) {
            dropped += 1;
            continue;
        }
        high_water = Some(position.clone());
        kept.entry(*id).or_default().push(*v);
    }
    for (id, values) in &kept {
        let want: Vec<i64> = (1..=expected[id]).collect();
        assert_eq!(values, &want, "key {id} after dropping repeats by position");
    }
    eprintln!(
        "{topic}: {} events read, {dropped} repeats dropped by position",
        events.len()
    );
}

#[test]
fn kill_9_during_streaming_loses_nothing_and_repeats_are_droppable_by_position() {
    // Given a counter table and capture running on its own,
    let pg = Postgres::shared().unwrap();
    pg.create_database("source").unwrap();
    pg.psql(
        "source",
        &format!(
            "CREATE TABLE public.counters (id bigint PRIMARY KEY, v bigint NOT NULL);
                  INSERT INTO public.counters SELECT i, 0 FROM generate_series(1, {KEYS}) i;"
        ),
    )
    .unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "[sources.pg_main]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.counters\"]\n\
         slot = \"{}\"\npublication = \"sluice_restarts\"",
        pg.url("source"),
        pg.name("sluice_restarts")
    );
    let config = config_file(dir.path(), &kafka, free_port(), &source);

    // when each key is incremented one transaction at a time while capture is killed -9 and
    // restarted, every change arrives and the repeats are droppable by position.
    kill_9_while_counting(
        &kafka,
        &config,
        "restarts.pg_main.public.counters",
        "starting replication",
        |id| {
            pg.psql(
                "source",
                &format!("UPDATE public.counters SET v = v + 1 WHERE id = {id}"),
            )
            .unwrap();
        },
    );
}

#[test]
fn mariadb_kill_9_during_streaming_loses_nothing_and_repeats_are_droppable_by_position() {
    // Given a MariaDB counter table and capture running on its own,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("shop").unwrap();
    let shop = maria.db("shop");
    maria
        .root_sql(&format!(
            "CREATE TABLE {shop}.counters (id bigint PRIMARY KEY, v bigint NOT NULL);
             INSERT INTO {shop}.counters SELECT seq, 0 FROM {shop}.seq_1_to_{KEYS};"
        ))
        .unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "[sources.maria]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"{shop}.counters\"]\nserver_id = {}",
        maria.url(),
        MariaDb::next_server_id()
    );
    let config = config_file(dir.path(), &kafka, free_port(), &source);

    // when each key is incremented one transaction at a time while capture is killed -9 and
    // restarted, every change arrives and the repeats are droppable by position.
    kill_9_while_counting(
        &kafka,
        &config,
        &format!("restarts.maria.{shop}.counters"),
        "starting binlog stream",
        |id| {
            maria
                .root_sql(&format!(
                    "UPDATE {shop}.counters SET v = v + 1 WHERE id = {id}"
                ))
                .unwrap();
        },
    );
}

/// Reads `(position, id, v)` of every event on partition 0 until each key's expected final
/// value has been seen.
fn read_until_complete(
    kafka: &Broker,
    topic: &str,
    expected: &HashMap<i64, i64>,
    timeout: Duration,
) -> Vec<(Position, i64, i64)> {
    let mut reader = TopicReader::new(&kafka.bootstrap(), kafka.namespace(), topic);
    let mut events = Vec::new();
    let mut latest: HashMap<i64, i64> = HashMap::new();
    let deadline = Instant::now() + timeout;
    while expected.iter().any(|(id, v)| latest.get(id) != Some(v)) {
        assert!(
            Instant::now() < deadline,
            "not every change arrived: {latest:?} vs {expected:?}"
        );
        let Some(read) = reader.next(Duration::from_millis(200)) else {
            continue;
        };
        let after = read.event.row.after.expect("updates carry the after image");
        let (Datum::Long(id), Datum::Long(v)) = (&after[0], &after[1]) else {
            panic!("{after:?}")
        };
        latest.insert(*id, (*latest.get(id).unwrap_or(&0)).max(*v));
        events.push((read.position, *id, *v));
    }
    events
}
