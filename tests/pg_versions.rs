//! PostgreSQL majors: capture refuses a server older than the oldest it is tested on, naming
//! the version and the fix, before it creates anything there. (The supported majors, 14 to 18,
//! are proven by running the PostgreSQL tests with `SLUICE_TEST_PG_MAJOR`; see the README.)

use std::path::Path;

use sluice_harness::{free_port, Broker, Postgres, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn capture_refuses_postgresql_13_with_the_version_and_the_fix_and_creates_nothing() {
    // Given a PostgreSQL 13 source with logical WAL and a table fit for capture,
    let pg = Postgres::start_major(13).unwrap();
    pg.create_database("shop").unwrap();
    pg.psql(
        "shop",
        "CREATE TABLE public.orders (id int PRIMARY KEY, qty int)",
    )
    .unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n{}[sources.old]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.orders\"]\n\
             slot = \"old\"\npublication = \"old\"\n[observability]\nlisten = \"127.0.0.1:{port}\"\n",
            kafka.kafka_toml("versions"),
            pg.url("shop"),
        ),
    )
    .unwrap();

    // when capture starts against it,
    let log = SluiceProcess::run_until_exit(
        Path::new(SLUICE),
        "capture",
        &config,
        &dir.path().join("sluice.log"),
        port,
        &[],
    );

    // then it stops with the server's version, the supported range and what to do,
    assert!(
        log.contains("the source runs PostgreSQL 13.")
            && log.contains("Sluice captures from PostgreSQL 14 to 18")
            && log.contains("upgrade the source"),
        "{log}"
    );
    // and has created no slot or publication on the server.
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)"
        )
        .unwrap()
        .trim(),
        "0"
    );
}
