//! End to end: MariaDB binlog → capture → Tansu → router → PostgreSQL sink.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{free_port, MariaDb, Postgres, SluiceProcess, Tansu, TansuStorage};

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

struct Services {
    maria: MariaDb,
    pg: Postgres,
    kafka: Tansu,
    dir: tempfile::TempDir,
    metrics_port: u16,
}

impl Services {
    fn start(setup: &str) -> Services {
        let maria = MariaDb::start().unwrap();
        maria.create_database("shop").unwrap();
        maria.root_sql(&format!("USE shop; {setup}")).unwrap();
        let pg = Postgres::start().unwrap();
        pg.create_database("sink").unwrap();
        Services {
            maria,
            pg,
            kafka: Tansu::start(TansuStorage::Memory).unwrap(),
            dir: tempfile::tempdir().unwrap(),
            metrics_port: free_port(),
        }
    }

    fn config(&self, tables: &[&str]) -> std::path::PathBuf {
        let tables = tables
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "e2e"

[sources.maria]
kind = "mysql"
url = "{source}"
tables = [{tables}]
server_id = 5401

[sinks.warehouse]
kind = "postgres"
url = "{sink}"

[router]
sink = "warehouse"
group_id = "e2e-router"

[router.batch]
max_rows = 500
max_delay_ms = 50

[observability]
listen = "127.0.0.1:{port}"
"#,
            bootstrap = self.kafka.bootstrap(),
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
}
