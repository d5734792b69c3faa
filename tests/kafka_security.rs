//! Sluice on a Kafka that wants TLS and SASL: capture over a TLS listener, the router over a
//! SASL_SSL listener with SCRAM, and what a wrong password, an unverifiable certificate or
//! a plain client at a TLS listener say.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_harness::compare::{compare_rows, pg_rows};
use sluice_harness::{free_port, Kafka, Postgres, SluiceProcess, TestCerts};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const PASSWORD: &str = "sc-ram-Pa55word";
const ROWS: &str = "SELECT id, v FROM public.t ORDER BY id";

struct Secured {
    kafka: Kafka,
    certs: TestCerts,
    source: Postgres,
    sink: Postgres,
    dir: tempfile::TempDir,
}

impl Secured {
    fn start() -> Secured {
        let certs = TestCerts::generate(&["IP:127.0.0.1", "DNS:localhost"]).unwrap();
        let kafka = Kafka::start_secure(&certs, "sluice", PASSWORD).unwrap();
        let source = Postgres::shared().unwrap();
        source.create_database("shop").unwrap();
        source
            .psql(
                "shop",
                "CREATE TABLE public.t (id int PRIMARY KEY, v text); \
                 INSERT INTO public.t SELECT i, 'v' || i FROM generate_series(1, 100) i",
            )
            .unwrap();
        let sink = Postgres::shared().unwrap();
        sink.create_database("wh").unwrap();
        Secured {
            kafka,
            certs,
            source,
            sink,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A config in `dir/<name>/sluice.toml` reaching Kafka at `bootstrap` with `security`
    /// (TOML: `[kafka.tls]`, `[kafka.sasl]`); returns its path and metrics port.
    fn config(&self, name: &str, bootstrap: &str, security: &str) -> (PathBuf, u16) {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
partitions = 3

{security}

[sources.pg]
kind = "postgres"
url = "{source}"
tables = ["public.t"]
slot = "{slot}"
publication = "secured"

[sinks.wh]
kind = "postgres"
url = "{sink}"

[router]
sink = "wh"
group_id = "secured"

[observability]
listen = "127.0.0.1:{port}"
"#,
            source = self.source.url("shop"),
            sink = self.sink.url("wh"),
            slot = self.source.name("secured"),
        );
        let path = dir.join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        (path, port)
    }

    fn tls(&self, ca: &Path) -> String {
        format!("[kafka.tls]\nca_file = \"{}\"\n", ca.display())
    }

    fn sluice(
        &self,
        subcommand: &str,
        (config, port): (PathBuf, u16),
        password: &str,
    ) -> SluiceProcess {
        SluiceProcess::start_with_env(
            Path::new(SLUICE),
            subcommand,
            &config,
            &config.with_file_name("log"),
            port,
            &[("SLUICE_KAFKA_PASSWORD", password)],
        )
        .unwrap()
    }

    /// Waits until the sink's rows equal the source's, while none of `processes` exited.
    fn wait_for_match(&self, processes: &mut [&mut SluiceProcess], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let expected = pg_rows(&self.source, "shop", ROWS).unwrap();
            let got = pg_rows(&self.sink, "wh", ROWS).unwrap_or_default();
            let Err(e) = compare_rows(&expected, &got) else {
                return;
            };
            let exited = processes.iter_mut().any(|p| p.has_exited());
            assert!(
                Instant::now() < deadline && !exited,
                "{e} (a process exited: {exited})\n{}",
                processes
                    .iter()
                    .map(|p| p.log())
                    .collect::<Vec<_>>()
                    .join("\n--- next process ---\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn run_until_it_stops(&self, (config, port): (PathBuf, u16), password: &str) -> String {
        SluiceProcess::run_until_exit(
            Path::new(SLUICE),
            "run",
            &config,
            &config.with_file_name("log"),
            port,
            &[("SLUICE_KAFKA_PASSWORD", password)],
        )
    }
}

#[test]
fn capture_over_tls_and_a_router_over_sasl_ssl_with_scram_deliver_every_change() {
    // Given capture publishing through the broker's TLS listener, and a router reading
    // through its SASL_SSL listener as a SCRAM-SHA-512 user,
    let s = Secured::start();
    let tls = s.tls(&s.certs.ca);
    let capture = s.config("capture", &s.kafka.bootstrap_tls().unwrap(), &tls);
    let sasl =
        format!("{tls}\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"sluice\"\n");
    let router = s.config("router", &s.kafka.bootstrap_sasl().unwrap(), &sasl);
    let mut capture = s.sluice("capture", capture, "");
    let mut router = s.sluice("route", router, PASSWORD);

    // when the source changes after its snapshot,
    s.source
        .psql(
            "shop",
            "INSERT INTO public.t SELECT i, 'v' || i FROM generate_series(101, 300) i; \
             UPDATE public.t SET v = 'changed' WHERE id % 7 = 0; DELETE FROM public.t WHERE id < 20",
        )
        .unwrap();

    // then the sink equals the source row for row,
    s.wait_for_match(&mut [&mut capture, &mut router], Duration::from_secs(90));
    // and the password appears in no log.
    for log in [capture.log(), router.log()] {
        assert!(!log.contains(PASSWORD), "{log}");
    }
}

#[test]
fn a_wrong_password_an_unverifiable_certificate_and_the_wrong_protocol_each_stop_with_the_fix() {
    let s = Secured::start();
    let sasl = "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"sluice\"\n";
    let tls = s.tls(&s.certs.ca);
    let sasl_listener = s.kafka.bootstrap_sasl().unwrap();

    // A wrong password: named as refused credentials, with where the password comes from.
    let log = s.run_until_it_stops(
        s.config("password", &sasl_listener, &format!("{tls}\n{sasl}")),
        "not-the-password",
    );
    assert!(
        log.contains("the brokers refused Sluice's credentials")
            && log.contains("SLUICE_KAFKA_PASSWORD"),
        "{log}"
    );
    assert!(!log.contains("not-the-password"), "{log}");

    // A certificate signed by a CA Sluice was not told to trust.
    let log = s.run_until_it_stops(
        s.config(
            "ca",
            &s.kafka.bootstrap_tls().unwrap(),
            &s.tls(&s.certs.other_ca),
        ),
        "",
    );
    assert!(
        log.contains("certificate could not be verified") && log.contains("kafka.tls.ca_file"),
        "{log}"
    );

    // Plain text to the TLS listener: a broker that closes connections may also be going
    // down, so this is no definite error, but the warning says what to check.
    let sluice = s.sluice(
        "run",
        s.config("plain", &s.kafka.bootstrap_tls().unwrap(), ""),
        "",
    );
    sluice.wait_for_log(
        "if the listener expects TLS or SASL, add [kafka.tls] / [kafka.sasl]",
        Duration::from_secs(40),
    );
}

#[test]
fn a_workload_through_tls_and_scram_with_two_routers_a_router_kill_and_a_broker_kill_arrives_once()
{
    // Given capture and two routers of one group, all through the SASL_SSL listener (SCRAM),
    // on 3-partition topics, and an observer at the sink that logs every row version written,
    let mut s = Secured::start();
    let sasl = format!(
        "{}\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"sluice\"\n",
        s.tls(&s.certs.ca)
    );
    let bootstrap = s.kafka.bootstrap_sasl().unwrap();
    let mut capture = s.sluice("capture", s.config("capture", &bootstrap, &sasl), PASSWORD);
    let routers: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| s.config(&format!("router-{name}"), &bootstrap, &sasl))
        .collect();
    let mut a = s.sluice("route", routers[0].clone(), PASSWORD);
    let mut b = s.sluice("route", routers[1].clone(), PASSWORD);
    s.wait_for_match(&mut [&mut capture, &mut a, &mut b], Duration::from_secs(90));
    let applies = s
        .sink
        .log_applies("wh", "public.t", ("id", "int"), ("v", "text"))
        .unwrap();

    // when writes go on (each round gives the rows it touches a version of their own) while
    // router a is killed -9 and restarted, and then the broker is killed -9 and restarted,
    let writer = s
        .source
        .write_in_rounds("shop", 60, Duration::from_millis(400), |round| {
            format!(
                "UPDATE public.t SET v = 'r{round}' WHERE id % 6 = {}; \
                 INSERT INTO public.t SELECT i, 'r{round}' FROM generate_series({lo}, {hi}) i",
                round % 6,
                lo = 1000 + round * 10,
                hi = 1009 + round * 10,
            )
        });
    std::thread::sleep(Duration::from_secs(4));
    a.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let mut a = s.sluice("route", routers[0].clone(), PASSWORD);
    std::thread::sleep(Duration::from_secs(4));
    s.kafka.kill();
    std::thread::sleep(Duration::from_secs(8));
    s.kafka.restart().unwrap();
    writer.join().unwrap();

    // then the sink equals the source row for row,
    s.wait_for_match(
        &mut [&mut capture, &mut a, &mut b],
        Duration::from_secs(180),
    );
    // and no row version was written twice.
    assert_eq!(
        applies.written_twice(),
        "",
        "row versions written twice (id|v|times)"
    );
    let written = applies.written();
    assert!(written >= 60 * 10, "only {written} row versions observed");
}
