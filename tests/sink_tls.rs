//! TLS to the sinks: a sink database that refuses plain connections is written over TLS with
//! its certificate verified, and a certificate Sluice cannot verify stops it with the setting
//! to check — for PostgreSQL and MariaDB sinks alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_harness::compare::pg_rows;
use sluice_harness::{free_port, Broker, MariaDb, Postgres, SluiceProcess, TestCerts};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A PostgreSQL source with a table of 30 rows, and a broker.
struct Source {
    pg: Postgres,
    kafka: Broker,
    dir: tempfile::TempDir,
}

impl Source {
    /// On the binary's shared cluster, or with `own_cluster` on one of the test's own (for a
    /// test that turns TLS on in it).
    fn start(own_cluster: bool) -> Source {
        let pg = if own_cluster {
            Postgres::start()
        } else {
            Postgres::shared()
        }
        .unwrap();
        pg.create_database("source").unwrap();
        pg.psql(
            "source",
            "CREATE TABLE public.items (id int PRIMARY KEY, label text); \
             INSERT INTO public.items SELECT i, 'item ' || i FROM generate_series(1, 30) i",
        )
        .unwrap();
        Source {
            pg,
            kafka: Broker::shared().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A config writing `public.items` into the sink `wh` (`sink` is its `[sinks.wh]` body).
    fn config(&self, slot: &str, sink: &str) -> (PathBuf, u16) {
        let path = self.dir.path().join(format!("{slot}.toml"));
        let port = free_port();
        std::fs::write(
            &path,
            format!(
                "[kafka]\n{}[sources.pg]\nkind = \"postgres\"\nurl = \"{}\"\n\
                 tables = [\"public.items\"]\nslot = \"{}\"\npublication = \"{slot}\"\n\
                 [sinks.wh]\n{sink}\n[router]\nsink = \"wh\"\ngroup_id = \"{ns}{slot}\"\n\
                 [router.batch]\nmax_delay_ms = 50\n[observability]\nlisten = \"127.0.0.1:{port}\"\n",
                self.kafka.kafka_toml("sluice"),
                self.pg.url("source"),
                self.pg.name(slot),
                ns = self.kafka.namespace(),
            ),
        )
        .unwrap();
        (path, port)
    }

    fn run_until_it_stops(&self, (config, port): (PathBuf, u16)) -> String {
        SluiceProcess::run_until_exit(
            Path::new(SLUICE),
            "run",
            &config,
            &config.with_extension("log"),
            port,
            &[],
        )
    }

    fn run(&self, (config, port): (PathBuf, u16)) -> SluiceProcess {
        SluiceProcess::start(
            Path::new(SLUICE),
            "run",
            &config,
            &config.with_extension("log"),
            port,
        )
        .unwrap()
    }

    /// Waits until `sink_rows()` equals the source's `id|label` rows.
    fn wait_for_sink(&self, sluice: &SluiceProcess, sink_rows: impl Fn() -> Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let want = pg_rows(
                &self.pg,
                "source",
                "SELECT id, label FROM public.items ORDER BY id",
            )
            .unwrap();
            let got = sink_rows();
            if got == want {
                assert_eq!(want.len(), 31);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "want {} rows, got {}\n--- log ---\n{}",
                want.len(),
                got.len(),
                sluice.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn a_postgres_sink_is_written_over_verified_tls() {
    // Given a sink database that refuses connections without TLS, with a certificate for
    // `localhost` signed by our CA,
    let source = Source::start(true);
    let pg = &source.pg;
    pg.create_database("sink").unwrap();
    let certs = TestCerts::generate(&["DNS:localhost"]).unwrap();
    pg.enable_tls(&certs.server_cert, &certs.server_key, &["sink"])
        .unwrap();
    let sink_url = pg.url("sink").replace("127.0.0.1", "localhost");
    let sink = |ca: &Path| {
        format!(
            "kind = \"postgres\"\nurl = \"{sink_url}\"\n[sinks.wh.tls]\nmode = \"verify-full\"\nca_file = \"{}\"",
            ca.display()
        )
    };

    // when the router trusts another CA, it stops and says which setting to check;
    let log = source.run_until_it_stops(source.config("pg_wrong_ca", &sink(&certs.other_ca)));
    assert!(
        log.contains("sinks.wh: TLS refused the sink's certificate: invalid peer certificate: UnknownIssuer (check sinks.wh.tls.ca_file"),
        "{log}"
    );

    // and with the right CA the rows arrive, over TLS.
    let sluice = source.run(source.config("pg_right_ca", &sink(&certs.ca)));
    pg.psql("source", "INSERT INTO public.items VALUES (31, 'late')")
        .unwrap();
    source.wait_for_sink(&sluice, || {
        pg_rows(pg, "sink", "SELECT id, label FROM public.items ORDER BY id").unwrap_or_default()
    });
    let encrypted = pg
        .psql(
            "postgres",
            "SELECT count(*) > 0 AND bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'sluice-sink-wh'",
        )
        .unwrap();
    assert_eq!(encrypted.trim(), "t");
}

#[test]
fn a_mariadb_sink_is_written_over_verified_tls() {
    // Given a MariaDB sink whose user must use TLS, with a certificate for `localhost`,
    let source = Source::start(false);
    let certs = TestCerts::generate(&["DNS:localhost"]).unwrap();
    let maria = MariaDb::start_with(&[
        format!("--ssl-cert={}", certs.server_cert.display()),
        format!("--ssl-key={}", certs.server_key.display()),
        format!("--ssl-ca={}", certs.ca.display()),
    ])
    .unwrap();
    maria.create_database("wh").unwrap();
    maria
        .root_sql(
            "CREATE USER 'writer'@'%' IDENTIFIED BY 'writer-secret' REQUIRE SSL; \
             GRANT ALL ON *.* TO 'writer'@'%';",
        )
        .unwrap();
    let sink = |ca: &Path| {
        format!(
            "kind = \"mysql\"\nurl = \"mysql://writer:writer-secret@localhost:{}/wh\"\ndatabase = \"wh\"\n\
             [sinks.wh.tls]\nmode = \"verify-full\"\nca_file = \"{}\"",
            maria.port,
            ca.display()
        )
    };

    // when the router trusts another CA, it stops and says which setting to check;
    let log = source.run_until_it_stops(source.config("maria_wrong_ca", &sink(&certs.other_ca)));
    assert!(
        log.contains("sinks.wh: TLS refused the sink's certificate: invalid peer certificate: UnknownIssuer (check sinks.wh.tls.ca_file"),
        "{log}"
    );

    // and with the right CA the rows arrive (the user cannot connect without TLS).
    let sluice = source.run(source.config("maria_right_ca", &sink(&certs.ca)));
    source
        .pg
        .psql("source", "INSERT INTO public.items VALUES (31, 'late')")
        .unwrap();
    source.wait_for_sink(&sluice, || {
        maria
            .root_sql("SELECT id, label FROM wh.items ORDER BY id")
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace('\t', "|"))
            .collect()
    });
}
