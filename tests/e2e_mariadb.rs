//! End to end: MariaDB binlog → capture → Tansu → router → PostgreSQL sink.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{free_port, output_of, Broker, MariaDb, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

const ORDERS_DDL: &str = "CREATE TABLE shop.orders (
    id bigint PRIMARY KEY,
    customer varchar(64) NOT NULL,
    qty int NOT NULL,
    price decimal(12,2) NOT NULL,
    placed_at datetime(6) NOT NULL,
    note text NOT NULL
)";

/// The same rows, printed the same way by both servers.
const MARIADB_ROWS: &str = "SELECT id, customer, qty, price, \
    DATE_FORMAT(placed_at, '%Y-%m-%d %H:%i:%s.%f'), note FROM shop.orders ORDER BY id";
const PG_ROWS: &str = "SELECT id, customer, qty, price, \
    to_char(placed_at, 'YYYY-MM-DD HH24:MI:SS.US'), note FROM shop.orders ORDER BY id";

/// A MariaDB of the test's own (most tests here change server-wide settings, rotate, purge or
/// reset its binlog, or restart it), a `sink` database on the binary's shared PostgreSQL, the
/// shared broker, a directory and a metrics port.
struct Services {
    maria: MariaDb,
    pg: Postgres,
    kafka: Broker,
    dir: tempfile::TempDir,
    metrics_port: u16,
}

impl Services {
    fn start(setup: &str) -> Services {
        let maria = MariaDb::start().unwrap();
        maria.create_database("shop").unwrap();
        maria.root_sql(&format!("USE shop; {setup}")).unwrap();
        let pg = Postgres::shared().unwrap();
        pg.create_database("sink").unwrap();
        Services {
            maria,
            pg,
            kafka: Broker::shared().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            metrics_port: free_port(),
        }
    }

    fn config(&self, tables: &[&str]) -> std::path::PathBuf {
        self.config_with(tables, "")
    }

    /// The config, with `source_extra` (TOML) at the end of the source's table.
    fn config_with(&self, tables: &[&str], source_extra: &str) -> std::path::PathBuf {
        let tables = tables
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"
[kafka]
{kafka}# Three partitions: keys spread over them, truncates and snapshots are barriers across them.
partitions = 3

[sources.maria]
kind = "mysql"
url = "{source}"
tables = [{tables}]
server_id = 5401
{source_extra}

[sinks.warehouse]
kind = "postgres"
url = "{sink}"

[router]
sink = "warehouse"
group_id = "{ns}e2e-router"
dead_letter_topic = "{ns}_sluice_dead_letter"

[router.batch]
max_rows = 500
max_delay_ms = 50

[observability]
listen = "127.0.0.1:{port}"
"#,
            kafka = self.kafka.kafka_toml("e2e"),
            ns = self.kafka.namespace(),
            source = self.maria.url(),
            sink = self.pg.url("sink"),
            port = self.metrics_port,
        );
        let path = self.dir.path().join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    fn sluice(&self, config: &Path) -> SluiceProcess {
        SluiceProcess::start(
            Path::new(SLUICE),
            "run",
            config,
            &self.dir.path().join("sluice.log"),
            self.metrics_port,
        )
        .unwrap()
    }

    fn source_rows(&self, query: &str) -> Vec<String> {
        self.maria
            .root_sql(query)
            .unwrap()
            .lines()
            .map(|l| l.replace('\t', "|"))
            .collect()
    }

    /// Waits until the sink's rows equal the source's, row by row.
    fn wait_for_match(
        &self,
        sluice: &mut SluiceProcess,
        source: &str,
        sink: &str,
        timeout: Duration,
    ) {
        let start = Instant::now();
        loop {
            let expected = self.source_rows(source);
            let last =
                match pg_rows(&self.pg, "sink", sink).map(|got| compare_rows(&expected, &got)) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) | Err(e) => e,
                };
            assert!(
                start.elapsed() < timeout && !sluice.has_exited(),
                "sink did not converge within {timeout:?} (sluice exited: {}): {last}\n--- sluice log ---\n{}",
                sluice.has_exited(),
                sluice.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn insert_orders(from: u32, to: u32) -> String {
    format!(
        "INSERT INTO shop.orders SELECT seq, CONCAT('customer ', seq), seq % 7, seq * 1.25, \
         TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL (seq % 1000) MICROSECOND, \
         CONCAT('note ', seq, ' héllo') FROM shop.seq_{from}_to_{to}"
    )
}

#[test]
fn existing_rows_and_binlog_changes_reach_the_postgres_sink_row_for_row() {
    // Given a MariaDB table with rows before sluice starts,
    let services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 2000)));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);

    // when rows are inserted, updated and deleted afterwards (several transactions),
    services
        .maria
        .root_sql(&format!(
            "{}; UPDATE shop.orders SET qty = qty + 100, note = 'updated' WHERE id % 10 = 0; \
             DELETE FROM shop.orders WHERE id % 15 = 0; \
             BEGIN; UPDATE shop.orders SET price = price * 2 WHERE id BETWEEN 100 AND 120; \
             DELETE FROM shop.orders WHERE id = 2001; COMMIT;",
            insert_orders(2001, 2500)
        ))
        .unwrap();

    // then the sink holds exactly the source's rows.
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));
    let log = sluice.log();
    assert!(log.contains("table snapshot finished"), "{log}");

    // A change stamped an hour ago makes the binlog lag an hour; once capture has read it and
    // the server is idle, its heartbeats bring the lag back to 0.
    services
        .maria
        .root_sql(&format!(
            "SET TIMESTAMP = UNIX_TIMESTAMP() - 3600; {}",
            insert_orders(9_000, 9_000)
        ))
        .unwrap();
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(30));
    let lag = |s: &SluiceProcess| {
        s.metrics().and_then(|m| {
            sluice_harness::metric_value(&m, "sluice_capture_binlog_lag_seconds", &[])
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while lag(&sluice) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "binlog lag stays {:?} while idle",
            lag(&sluice)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(sluice: &SluiceProcess, name: &str) -> f64 {
    sluice
        .metrics()
        .and_then(|m| sluice_harness::metric_value(&m, name, &[]))
        .unwrap_or(0.0)
}

#[test]
fn a_crash_mid_snapshot_with_writes_running_resumes_and_the_sink_matches() {
    // Given 200,000 rows and a writer changing them from before sluice starts,
    let services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 200_000)));
    let config = services.config(&["shop.orders"]);
    let writer = {
        let socket_sql = services.maria.root_sql_command();
        std::thread::spawn(move || {
            for i in 0..150u32 {
                let sql = format!(
                    "UPDATE shop.orders SET qty = qty + 1, note = 'w{i}' WHERE id = {}; \
                     INSERT INTO shop.orders VALUES ({}, 'late', 1, 9.99, '2026-06-01 00:00:00', 'new'); \
                     DELETE FROM shop.orders WHERE id = {};",
                    1 + i * 997 % 200_000,
                    300_000 + i,
                    2 + i * 1_301 % 200_000,
                );
                socket_sql(&sql);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // when capture is killed -9 in the middle of the snapshot and started again,
    let mut sluice = services.sluice(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&sluice, "sluice_capture_snapshot_rows_total") < 20_000.0 {
        assert!(
            Instant::now() < deadline,
            "snapshot did not start\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sluice.kill9();
    assert!(
        !sluice.log().contains("table snapshot finished"),
        "the kill came too late to test a crash mid-snapshot"
    );
    let mut sluice = services.sluice(&config);
    writer.join().unwrap();

    // then the sink equals the source row for row: nothing lost, nothing left over.
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(180));
    assert!(sluice.log().contains("table snapshot finished"));
    assert!(metric(&sluice, "sluice_capture_snapshot_rows_total") >= 200_000.0);
}

#[test]
fn schema_changes_replayed_after_a_restart_decode_with_their_own_columns_and_truncate_flows() {
    // Given a synced table,
    let services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 100)));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));

    // when, with capture down, rows are written between two ALTER TABLEs,
    sluice.kill9();
    services
        .maria
        .root_sql(&format!(
            "{}; ALTER TABLE shop.orders ADD COLUMN vip int NOT NULL DEFAULT 7; \
             INSERT INTO shop.orders VALUES (111, 'vip', 1, 1.00, '2026-01-01', 'v', 1); \
             ALTER TABLE shop.orders MODIFY COLUMN customer varchar(200) NOT NULL, ADD COLUMN tag varchar(10) NULL; \
             INSERT INTO shop.orders VALUES (112, 'tagged', 2, 2.00, '2026-01-02', 't', 2, 'x'); \
             UPDATE shop.orders SET qty = 999 WHERE id = 5;",
            insert_orders(101, 110)
        ))
        .unwrap();
    let mut sluice = services.sluice(&config);

    // then each row arrives with the columns it was written with: rows older than `vip` read
    // its default, as at the source;
    let with_vip = |rows: &str| rows.replace("note FROM", "note, vip, COALESCE(tag, '-') FROM");
    services.wait_for_match(
        &mut sluice,
        &with_vip(MARIADB_ROWS),
        &with_vip(PG_ROWS),
        Duration::from_secs(60),
    );

    // and a TRUNCATE empties the sink table before new rows arrive.
    services
        .maria
        .root_sql("TRUNCATE TABLE shop.orders; INSERT INTO shop.orders (id, customer, qty, price, placed_at, note) VALUES (1, 'after', 1, 1.00, '2026-02-01', 'n')")
        .unwrap();
    services.wait_for_match(
        &mut sluice,
        &with_vip(MARIADB_ROWS),
        &with_vip(PG_ROWS),
        Duration::from_secs(60),
    );
    let rows = pg_rows(&services.pg, "sink", "SELECT count(*) FROM shop.orders").unwrap();
    assert_eq!(rows, ["1"]);
}

/// Runs sluice until it exits on its own (a definite error); returns its log.
fn run_until_it_stops(services: &Services, config: &Path) -> String {
    SluiceProcess::run_until_exit(
        Path::new(SLUICE),
        "run",
        config,
        &services.dir.path().join("sluice.log"),
        services.metrics_port,
        &[],
    )
}

#[test]
fn preflight_names_each_missing_setting_and_the_fix() {
    // Given a server whose binlog lacks the row metadata and full images capture needs, and a
    // table without a primary key,
    let services = Services::start(&format!(
        "{ORDERS_DDL}; CREATE TABLE shop.nokey (v int); \
         SET GLOBAL binlog_row_metadata = 'MINIMAL'; SET GLOBAL binlog_row_image = 'MINIMAL';"
    ));
    let config = services.config(&["shop.orders", "shop.nokey", "shop.missing"]);

    // then capture refuses to start and says what to change, for every problem at once.
    let log = run_until_it_stops(&services, &config);
    for expected in [
        "binlog_row_image is MINIMAL but must be FULL: SET GLOBAL binlog_row_image = 'FULL'",
        "binlog_row_metadata is MINIMAL but must be FULL: SET GLOBAL binlog_row_metadata = 'FULL'",
        "table shop.nokey has no primary key",
        "table shop.missing does not exist",
    ] {
        assert!(log.contains(expected), "missing `{expected}` in:\n{log}");
    }
}

#[test]
fn a_second_deployment_with_the_same_source_name_is_refused_instead_of_taking_the_position() {
    // Given a capture that synced and wrote its binlog position to the state topic,
    let services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 10)));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
    sluice.terminate(Duration::from_secs(30));

    // when another deployment on the same Kafka (its own topic prefix) names its source alike,
    let other = services.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let ns = services.kafka.namespace();
    let prefix = format!("topic_prefix = \"{ns}e2e\"");
    assert!(text.contains(&prefix));
    std::fs::write(
        &other,
        text.replace(&prefix, &format!("topic_prefix = \"{ns}other\""))
            .replace("e2e-router", "other-router"),
    )
    .unwrap();

    // then it stops with the reason and the fix, instead of resuming from the first's position.
    let log = run_until_it_stops(&services, &other);
    assert!(
        log.contains(&format!(
            "publishes to topic prefix `{ns}e2e.maria`, and this one publishes to `{ns}other.maria`"
        )) && log.contains("kafka.state_topic"),
        "{log}"
    );
}

#[test]
fn a_binlog_purged_past_the_checkpoint_is_a_definite_error_that_says_how_to_recover() {
    // Given a synced table and capture stopped,
    let services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 10)));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
    sluice.kill9();

    // when the binlogs it would resume from are purged,
    let last = services
        .maria
        .root_sql(&format!(
            "{}; FLUSH BINARY LOGS; FLUSH BINARY LOGS; SHOW MASTER STATUS",
            insert_orders(11, 20)
        ))
        .unwrap();
    let current = last.split('\t').next().unwrap().to_string();
    // The server keeps logs a dump thread still reads; the killed capture's goes away when
    // the server notices the dead connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        services
            .maria
            .root_sql(&format!("PURGE BINARY LOGS TO '{current}'"))
            .unwrap();
        let logs = services.maria.root_sql("SHOW BINARY LOGS").unwrap();
        if logs.lines().count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "binlogs were not purged: {logs}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // then capture stops with the reason and the way back, instead of skipping changes.
    let log = run_until_it_stops(&services, &config);
    assert!(
        log.contains("is no longer on the server") && log.contains("re-snapshot"),
        "{log}"
    );
}

#[test]
fn capture_talks_tls_to_mariadb_and_refuses_a_certificate_it_cannot_verify() {
    // Given a MariaDB with a certificate for `localhost` and a capture user that must use TLS,
    let certs = sluice_harness::TestCerts::generate(&["DNS:localhost"]).unwrap();
    let maria = MariaDb::start_with(&[
        format!("--ssl-cert={}", certs.server_cert.display()),
        format!("--ssl-key={}", certs.server_key.display()),
        format!("--ssl-ca={}", certs.ca.display()),
    ])
    .unwrap();
    maria.create_database("shop").unwrap();
    maria
        .root_sql(&format!(
            "USE shop; {ORDERS_DDL}; {}; CREATE USER 'cdc'@'%' IDENTIFIED BY 'cdc-secret' REQUIRE SSL; \
             GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'%';",
            insert_orders(1, 50)
        ))
        .unwrap();
    let pg = Postgres::shared().unwrap();
    pg.create_database("sink").unwrap();
    let services = Services {
        maria,
        pg,
        kafka: Broker::shared().unwrap(),
        dir: tempfile::tempdir().unwrap(),
        metrics_port: free_port(),
    };
    let base = std::fs::read_to_string(services.config(&["shop.orders"])).unwrap();
    let with_tls = |host: &str, tls: String| {
        let text = base.replace(
            &services.maria.url(),
            &format!("mysql://cdc:cdc-secret@{host}:{}", services.maria.port),
        );
        let path = services
            .dir
            .path()
            .join(format!("tls-{}.toml", free_port()));
        std::fs::write(&path, format!("{text}\n[sources.maria.tls]\n{tls}\n")).unwrap();
        path
    };

    // when capture trusts another CA, it stops and says why;
    let log = run_until_it_stops(
        &services,
        &with_tls(
            "localhost",
            format!(
                "mode = \"verify-full\"\nca_file = \"{}\"",
                certs.other_ca.display()
            ),
        ),
    );
    assert!(
        log.contains(
            "capture stopped error=source: TLS refused the server's certificate: invalid peer certificate: UnknownIssuer (check tls.ca_file"
        ),
        "{log}"
    );

    // and with the right CA and name, the snapshot and the binlog arrive over TLS (the user
    // cannot connect without it).
    let mut sluice = services.sluice(&with_tls(
        "localhost",
        format!(
            "mode = \"verify-full\"\nca_file = \"{}\"",
            certs.ca.display()
        ),
    ));
    services
        .maria
        .root_sql(&format!(
            "{}; UPDATE shop.orders SET qty = 5 WHERE id < 10",
            insert_orders(51, 80)
        ))
        .unwrap();
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
}

#[test]
fn the_source_server_restarting_mid_stream_loses_nothing() {
    // Given a synced pipeline,
    let mut services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 500)));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));

    // when MariaDB restarts between two batches of writes,
    services
        .maria
        .root_sql(&format!(
            "{}; UPDATE shop.orders SET qty = 42 WHERE id <= 100",
            insert_orders(501, 800)
        ))
        .unwrap();
    services.maria.restart().unwrap();
    services
        .maria
        .root_sql(&format!(
            "{}; DELETE FROM shop.orders WHERE id BETWEEN 200 AND 260",
            insert_orders(801, 1000)
        ))
        .unwrap();

    // then capture reconnects on its own and the sink matches the source row for row.
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));
    assert!(
        sluice.log().contains("capture interrupted; reconnecting"),
        "{}",
        sluice.log()
    );
}

#[test]
fn a_sysbench_workload_running_through_snapshot_and_stream_arrives_row_for_row() {
    // Given sysbench's own schema and data (2 tables of 10,000 rows),
    let services = Services::start("SELECT 1");
    let sysbench = |command: &str, extra: &[&str]| {
        services.maria.sysbench("shop", (2, 10_000), command, extra)
    };
    sysbench("prepare", &[]);
    let config = services.config(&["shop.sbtest1", "shop.sbtest2"]);

    // when its read-write workload runs for 15 s with 4 threads, through the snapshot and on,
    let mut sluice = services.sluice(&config);
    let report = sysbench("run", &["--threads=4", "--time=15", "--report-interval=0"]);
    let tps = report
        .lines()
        .find(|l| l.contains("transactions:"))
        .unwrap_or_default()
        .to_string();
    eprintln!("sysbench {}", tps.trim());

    // then both tables match row for row.
    for table in ["sbtest1", "sbtest2"] {
        let query = format!("SELECT id, k, c, pad FROM shop.{table} ORDER BY id");
        services.wait_for_match(&mut sluice, &query, &query, Duration::from_secs(120));
    }
}

#[test]
fn xa_rollbacks_savepoints_and_a_truncate_after_a_restart_reach_the_sink_as_the_source_has_them() {
    // Given a synced table,
    let s = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 20)));
    let config = s.config(&["shop.orders"]);
    let mut sluice = s.sluice(&config);
    s.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));

    // when an XA transaction is rolled back after its prepare, another commits after
    // transactions that began later, and one transaction sets savepoints along the way,
    // (Each statement list runs in a session of its own; a prepared XA transaction outlives
    // its session.)
    for sql in [
        format!(
            "XA START 'gone'; {}; UPDATE shop.orders SET qty = 99 WHERE id = 1; XA END 'gone'; XA PREPARE 'gone'",
            insert_orders(100, 110)
        ),
        format!(
            "XA START 'kept'; {}; XA END 'kept'; XA PREPARE 'kept'",
            insert_orders(200, 210)
        ),
        insert_orders(300, 305),
        "XA COMMIT 'kept'; XA ROLLBACK 'gone'".to_string(),
        "BEGIN; UPDATE shop.orders SET qty = 500 WHERE id = 2; SAVEPOINT a;
         UPDATE shop.orders SET qty = 501 WHERE id = 3; ROLLBACK TO SAVEPOINT a;
         UPDATE shop.orders SET qty = 502 WHERE id = 4; RELEASE SAVEPOINT a; COMMIT"
            .to_string(),
    ] {
        s.maria.root_sql(&format!("USE shop; {sql}")).unwrap();
    }
    // then the sink has the committed changes only,
    s.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));
    assert!(
        pg_rows(
            &s.pg,
            "sink",
            "SELECT count(*) FROM shop.orders WHERE id BETWEEN 100 AND 110"
        )
        .unwrap()
            == ["0"]
    );

    // and a TRUNCATE read right after a restart, before any table map of its table, reaches
    // it too.
    sluice.terminate(Duration::from_secs(20));
    s.maria.root_sql("TRUNCATE TABLE shop.orders").unwrap();
    let mut sluice = s.sluice(&config);
    s.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));
    s.maria
        .root_sql(&format!("USE shop; {}", insert_orders(400, 402)))
        .unwrap();
    s.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));
}

#[test]
fn a_binlog_reset_is_read_anew_after_reset_state_in_a_new_epoch() {
    // Given orders captured into the sink, with capture far into the binlog,
    let services = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 10)));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);
    services
        .maria
        .root_sql("FLUSH BINARY LOGS; FLUSH BINARY LOGS; FLUSH BINARY LOGS")
        .unwrap();
    services.maria.root_sql(&insert_orders(11, 20)).unwrap();
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
    sluice.terminate(Duration::from_secs(20));

    // when the binlog is reset (its numbering starts over, below what the sink recorded) and
    // the source changes, a row deleted among them,
    services
        .maria
        .root_sql(&format!(
            "RESET MASTER; {}; UPDATE shop.orders SET qty = 99 WHERE id <= 5; \
             DELETE FROM shop.orders WHERE id = 6",
            insert_orders(21, 30)
        ))
        .unwrap();
    // then capture stops, naming the command that reads it anew,
    let log = run_until_it_stops(&services, &config);
    assert!(
        log.contains("is no longer on the server")
            && log.contains("sluice reset-state --config <file> --source maria"),
        "{log}"
    );
    output_of(
        std::process::Command::new(SLUICE)
            .args(["reset-state", "--source", "maria", "--config"])
            .arg(&config),
    );
    // and after `sluice reset-state` the sink equals the source row for row: the snapshot's
    // positions, in a new epoch, sort above the old binlog's, and the table was cleared first.
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));
    services
        .maria
        .root_sql("UPDATE shop.orders SET qty = 7 WHERE id = 30")
        .unwrap();
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
}

/// The table ids of each table's table maps in the binlog, in binlog order, by `schema.table`.
fn binlog_table_ids(maria: &MariaDb) -> std::collections::HashMap<String, Vec<u64>> {
    let mut ids: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let files = maria.root_sql("SHOW BINARY LOGS").unwrap();
    for file in files.lines().filter_map(|l| l.split('\t').next()) {
        let events = maria
            .root_sql(&format!("SHOW BINLOG EVENTS IN '{file}'"))
            .unwrap();
        // Info reads "table_id: 33 (shop.orders)".
        for info in events.lines().filter_map(|l| l.split("table_id: ").nth(1)) {
            let Some((id, rest)) = info.split_once(" (") else {
                continue;
            };
            let (Ok(id), Some(name)) = (id.parse(), rest.strip_suffix(')')) else {
                continue;
            };
            ids.entry(name.to_string()).or_default().push(id);
        }
    }
    ids
}

#[test]
fn a_table_id_reused_after_a_server_restart_for_a_captured_table_is_not_taken_for_the_old_one() {
    // Given orders captured and a table `other` that is not,
    let mut services = Services::start(&format!(
        "{ORDERS_DDL}; CREATE TABLE shop.other (id int PRIMARY KEY); {}",
        insert_orders(1, 10)
    ));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
    sluice.terminate(Duration::from_secs(20));

    // when, while capture is down, the server restarts and `other` is written first, then it
    // restarts again and orders is written first (a restarted server numbers its tables anew,
    // so both get the same table id in the binlog capture will read next),
    services.maria.restart().unwrap();
    services
        .maria
        .root_sql("INSERT INTO shop.other VALUES (1)")
        .unwrap();
    services.maria.restart().unwrap();
    services
        .maria
        .root_sql(
            "INSERT INTO shop.orders VALUES (11, 'late', 1, 1.00, '2026-02-01 00:00:00', 'n'); \
             UPDATE shop.orders SET qty = 77 WHERE id <= 3; DELETE FROM shop.orders WHERE id = 4",
        )
        .unwrap();
    let ids = binlog_table_ids(&services.maria);
    let (other, orders) = (&ids["shop.other"], &ids["shop.orders"]);
    assert_eq!(
        other.last(),
        orders.last(),
        "the test needs both tables to share a table id: other {other:?}, orders {orders:?}"
    );

    // then capture, reading `other`'s table map and then orders' under the same id, captures
    // orders' changes: the sink matches the source row for row.
    let mut sluice = services.sluice(&config);
    services.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(60));
}

#[test]
fn xa_transactions_past_the_memory_budget_spill_to_a_file_and_reach_the_sink_in_commit_order() {
    // Given capture whose held XA changes get no memory at all (every one goes to a file),
    let s = Services::start(&format!("{ORDERS_DDL}; {}", insert_orders(1, 10)));
    let spill = s.dir.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let config = s.config_with(
        &["shop.orders"],
        &format!("spill = {{ memory_mb = 0, dir = \"{}\" }}", spill.display()),
    );
    let mut sluice = s.sluice(&config);
    s.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(90));

    // when two large XA transactions are prepared side by side, one rolled back and the other
    // committed after a plain transaction that began later,
    for sql in [
        format!(
            "XA START 'big'; {}; UPDATE shop.orders SET qty = 99 WHERE id <= 10; XA END 'big'; XA PREPARE 'big'",
            insert_orders(1000, 20999)
        ),
        format!(
            "XA START 'gone'; {}; XA END 'gone'; XA PREPARE 'gone'",
            insert_orders(30000, 34999)
        ),
        insert_orders(40000, 40009),
        "XA ROLLBACK 'gone'; XA COMMIT 'big'".to_string(),
    ] {
        s.maria.root_sql(&format!("USE shop; {sql}")).unwrap();
    }

    // then the sink has the committed changes only, row for row,
    s.wait_for_match(&mut sluice, MARIADB_ROWS, PG_ROWS, Duration::from_secs(120));
    // and they went through the spill file.
    let spilled = metric(&sluice, "sluice_capture_spilled_bytes_total");
    assert!(spilled > 1_000_000.0, "spilled {spilled} bytes");
    assert_eq!(metric(&sluice, "sluice_capture_held_bytes"), 0.0);
    assert!(
        sluice.log().contains("the rest of it goes to a file"),
        "{}",
        sluice.log()
    );
}

#[test]
fn a_capture_stopped_on_a_definite_error_stays_until_its_failure_is_scraped_then_exits_non_zero() {
    // Given a server capture refuses at preflight,
    let services = Services::start(&format!(
        "{ORDERS_DDL}; SET GLOBAL binlog_row_image = 'MINIMAL';"
    ));
    let config = services.config(&["shop.orders"]);
    let mut sluice = services.sluice(&config);

    // when capture stops on that definite error,
    sluice.wait_for_log(
        "serving the failure on /metrics until it is read",
        Duration::from_secs(60),
    );
    // then the process stays up, unready, until Prometheus could read the failure
    // (SluiceCaptureStopped alerts on it),
    std::thread::sleep(Duration::from_secs(2));
    assert!(!sluice.has_exited(), "{}", sluice.log());
    let (status, body) = sluice_harness::http_get(services.metrics_port, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("a component failed"), "{body}");
    let metrics = sluice_harness::try_http_get(services.metrics_port, "/metrics")
        .unwrap()
        .1;
    let failed = sluice_harness::metric_value(
        &metrics,
        "sluice_component_failed",
        &[("component", "capture"), ("name", "maria")],
    );
    assert_eq!(failed, Some(1.0), "{metrics}");

    // and once it was read, exits non-zero.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sluice.has_exited() {
        assert!(Instant::now() < deadline, "still running after the scrape");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = sluice.terminate(Duration::from_secs(1)).unwrap();
    assert!(!status.success(), "{status:?}");
}
