//! The harness starts each real service with the settings CDC needs.

use sluice_harness::{pg_major, MariaDb, Postgres, Tansu, TansuStorage};

#[test]
fn postgres_starts_with_logical_wal_and_one_database_per_test() {
    let pg = Postgres::start().unwrap();
    pg.create_database("harness_a").unwrap();
    pg.create_database("harness_b").unwrap();
    assert_eq!(
        pg.psql("harness_a", "SHOW wal_level").unwrap().trim(),
        "logical"
    );
    let dbs = pg
        .psql("postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'harness_%'")
        .unwrap();
    assert_eq!(dbs.trim(), "harness_a,harness_b");
    // The server is of the major the run asks for (SLUICE_TEST_PG_MAJOR; 15 unless set).
    let version = pg
        .psql("postgres", "SHOW server_version_num")
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    assert_eq!(version / 10000, pg_major(), "server_version_num {version}");
}

#[test]
fn mariadb_starts_with_row_binlog_full_image_and_metadata() {
    let db = MariaDb::start().unwrap();
    db.create_database("harness").unwrap();
    let vars = db
        .root_sql(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id",
        )
        .unwrap();
    assert_eq!(vars.trim(), "1\tROW\tFULL\tFULL\t1");
    let dbs = db.root_sql("SHOW DATABASES LIKE 'harness'").unwrap();
    assert_eq!(dbs.trim(), "harness");
}

#[test]
fn tansu_accepts_kafka_connections_and_survives_restart_with_sqlite() {
    let mut broker = Tansu::start(TansuStorage::Sqlite).unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_ok());
    broker.restart().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_ok());
}

#[test]
fn services_stop_when_their_guard_drops() {
    let pg = Postgres::start().unwrap();
    let port = pg.port;
    drop(pg);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
