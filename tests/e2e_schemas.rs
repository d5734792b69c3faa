//! Schemas end to end: the Schema Registry transport (Confluent framing, TopicNameStrategy
//! subjects) against a registry that follows Confluent's documented API, the registry-less
//! schema topic, and the compatibility policy when a source table changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_harness::compare::pg_rows;
use sluice_harness::{Pipeline, SchemaRegistry, SluiceProcess};

mod common;
use common::TopicReader;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const ROWS: &str = "SELECT id, qty, note FROM public.t ORDER BY id";

/// A pipeline from `public.t` to the sink, whose source publishes under `prefix`.
struct Services {
    p: Pipeline,
    /// The source's topic prefix: `e2e` in the namespace of the test, or plain `e2e` for the one
    /// test whose Debezium reader schema names its records after it.
    prefix: String,
}

impl Services {
    fn start() -> Services {
        Services::start_with_prefix(None)
    }

    /// [`Services::start`] with the source's topic prefix `prefix` rather than one in the
    /// test's namespace.
    fn start_with_prefix(prefix: Option<&str>) -> Services {
        let p = Pipeline::postgres(SLUICE, "schemas")
            .ddl("CREATE TABLE public.t (id int PRIMARY KEY, qty int, note text)")
            .tables(&["public.t"])
            .build();
        let prefix = prefix.map_or_else(|| format!("{}e2e", p.ns()), str::to_string);
        // Debezium's topic.prefix: the Debezium reader schema names its records after it.
        p.edit_config(
            "publication = ",
            &format!("topic_prefix = \"{prefix}\"\npublication = "),
        );
        Services { p, prefix }
    }

    /// Writes the config with `schemas` (a `[schemas]` section) added, as `name`; returns its
    /// path.
    fn config(&self, name: &str, schemas: &str) -> PathBuf {
        self.p.config_with(
            name,
            "[observability]",
            &format!("{schemas}\n\n[observability]"),
        )
    }

    /// The registry subject of `public.t`'s key or value (`part`).
    fn subject(&self, part: &str) -> String {
        format!("{}.public.t-{part}", self.prefix)
    }

    /// `sluice run` with `config`, once it streams: rows written before its slot exists would
    /// reach Kafka as the snapshot's reads, not as the changes the tests count.
    fn sluice(&self, config: &Path, env: &[(&str, &str)]) -> SluiceProcess {
        let sluice = self.p.start_with("run", config, env);
        sluice.wait_for_log("starting replication", Duration::from_secs(60));
        sluice
    }

    fn run_until_exit(&self, config: &Path, env: &[(&str, &str)]) -> String {
        self.p.run_until_exit("run", config, env)
    }

    /// Waits until the sink's `public.t` equals the source's, row by row.
    fn wait_for_sink_to_match(&self, sluice: &SluiceProcess) {
        self.p
            .wait_for_query(sluice, ROWS, ROWS, Duration::from_secs(60));
    }
}

const PASSWORD_ENV: (&str, &str) = ("SLUICE_SCHEMAS_REGISTRY_PASSWORD", "s3cret");

impl std::ops::Deref for Services {
    type Target = Pipeline;
    fn deref(&self) -> &Pipeline {
        &self.p
    }
}

#[test]
fn with_a_schema_registry_events_carry_confluent_ids_and_every_version_is_a_subject_version() {
    // Given a registry that requires basic auth, and sluice configured to use it,
    let s = Services::start_with_prefix(Some("e2e"));
    let registry = SchemaRegistry::start(Some("sluice:s3cret")).unwrap();
    let config = s.config(
        "registry.toml",
        &format!(
            "[schemas.registry]\nurl = \"{}\"\nusername = \"sluice\"",
            registry.url()
        ),
    );
    let sluice = s.sluice(&config, &[PASSWORD_ENV]);

    // when rows change, and the table gains a column and widens another between changes,
    s.pg.psql(
        "source",
        "INSERT INTO public.t SELECT i, i, 'n' || i FROM generate_series(1, 200) i;
         UPDATE public.t SET qty = qty * 2 WHERE id % 3 = 0;
         DELETE FROM public.t WHERE id % 10 = 0",
    )
    .unwrap();
    s.wait_for_sink_to_match(&sluice);
    s.pg.psql(
        "source",
        "ALTER TABLE public.t ADD COLUMN region text;
         INSERT INTO public.t VALUES (1000, 1, 'after add', 'eu');
         ALTER TABLE public.t ALTER COLUMN qty TYPE bigint;
         UPDATE public.t SET qty = 123456 WHERE id = 1000",
    )
    .unwrap();

    // then the sink follows,
    s.wait_for_sink_to_match(&sluice);
    assert_eq!(
        pg_rows(
            &s.pg,
            "sink",
            "SELECT qty, region FROM public.t WHERE id = 1000"
        )
        .unwrap(),
        ["123456|eu"]
    );
    // each table version is a version of the value subject and the key has one,
    let value_versions = registry.subject(&s.subject("value"));
    assert_eq!(value_versions.len(), 3, "{value_versions:?}");
    assert_eq!(registry.subject(&s.subject("key")).len(), 1);
    // and every message is framed with the id of a registered schema (magic byte 0), which a
    // reader resolves through the registry alone.
    let reader_registry = s_registry_client(&registry.url());
    let mut reader = TopicReader::with_registry(
        &s.kafka().bootstrap(),
        s.kafka().namespace(),
        "e2e.public.t",
        Some(reader_registry),
    );
    let mut seen = 0;
    while let Some(e) = reader.next(Duration::from_secs(5)) {
        seen += 1;
        assert!(
            e.framing_id.is_some(),
            "message {seen} is not Confluent-framed"
        );
        let id = e.framing_id.unwrap();
        assert!(
            value_versions.iter().any(|(v, _)| *v == id),
            "id {id} is not a version of e2e.public.t-value"
        );
    }
    // 200 inserts, 66 updates, 20 deletes (their tombstones are not events), 2 after the
    // changes.
    assert_eq!(seen, 200 + 66 + 20 + 2);

    // A consumer built for Debezium (confluent-kafka's AvroDeserializer with Debezium's value
    // schema for the final table as its reader schema) reads every message, across the three
    // versions, into the source's rows.
    let consumed = debezium_style_consumer(
        &s.kafka().bootstrap(),
        &registry.url(),
        "e2e.public.t",
        288 + 20,
        Some("debezium.e2e.public.t-value.avsc"),
    );
    let mut rows = std::collections::BTreeMap::new();
    for m in &consumed {
        let value = &m["value"];
        if value.is_null() {
            continue; // a tombstone
        }
        assert_eq!(value["source"]["connector"], "postgresql", "{m}");
        assert_eq!(value["source"]["table"], "t", "{m}");
        let id = m["key"]["id"].as_i64().unwrap();
        match value["op"].as_str().unwrap() {
            "d" => {
                assert_eq!(value["before"]["id"], id, "{m}");
                rows.remove(&id);
            }
            "c" | "u" | "r" => {
                let after = &value["after"];
                rows.insert(
                    id,
                    format!("{id}|{}|{}", after["qty"], after["note"].as_str().unwrap()),
                );
            }
            op => panic!("unexpected op {op}: {m}"),
        }
    }
    assert_eq!(
        rows.into_values().collect::<Vec<_>>(),
        pg_rows(&s.pg, "source", ROWS).unwrap()
    );
}

/// Runs `tests/consumers/confluent_avro_consumer.py` (in the venv `deploy/local/prereqs.sh`
/// makes) and returns the messages it printed.
fn debezium_style_consumer(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    count: usize,
    reader_schema: Option<&str>,
) -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/consumers");
    let venv = std::env::var("SLUICE_PY_VENV").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice/py"),
        PathBuf::from,
    );
    let mut cmd = std::process::Command::new(venv.join("bin/python"));
    cmd.arg(dir.join("confluent_avro_consumer.py"))
        .args([bootstrap, registry, topic, &count.to_string()])
        .env("SR_USER_INFO", "sluice:s3cret");
    if let Some(schema) = reader_schema {
        cmd.arg(dir.join(schema));
    }
    let out = cmd
        .output()
        .expect("python with confluent-kafka (run deploy/local/prereqs.sh)");
    assert!(
        out.status.success(),
        "the consumer failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn s_registry_client(url: &str) -> std::sync::Arc<sluice_connect::registry::Registry> {
    std::sync::Arc::new(
        sluice_connect::registry::Registry::new(&sluice_connect::registry::RegistrySettings {
            url: url.into(),
            username: Some("sluice".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        })
        .unwrap(),
    )
}

#[test]
fn an_incompatible_change_stops_capture_with_what_changed_until_the_table_is_allowed_it() {
    // Given a pipeline without a registry (schemas in the schema topic) at the default policy,
    let s = Services::start();
    let config = s.config("default.toml", "");
    let sluice = s.sluice(&config, &[]);
    s.pg.psql(
        "source",
        "INSERT INTO public.t SELECT i, i, 'n' || i FROM generate_series(1, 50) i",
    )
    .unwrap();
    s.wait_for_sink_to_match(&sluice);
    drop(sluice);

    // when a column is retyped in a way Avro cannot read (int → text) and rows follow,
    s.pg.psql(
        "source",
        "ALTER TABLE public.t ALTER COLUMN qty TYPE text;
         INSERT INTO public.t VALUES (51, '51', 'after retype')",
    )
    .unwrap();

    // then capture stops before publishing it, saying what changed, which policy it breaks and
    // what to do,
    let log = s.run_until_exit(&config, &[]);
    assert!(
        log.contains(
            "the new schema of public.t is not BACKWARD compatible with its version 1: consumers \
             of the new schema cannot read older events: column `qty` changed type: int cannot \
             be read as string (Avro converts no value to text). Capture stopped before \
             publishing the change, so nothing after it is lost."
        ),
        "{log}"
    );
    assert!(
        log.contains(r#"schemas.compatibility_overrides."public.t" = "none""#),
        "{log}"
    );
    assert_eq!(
        pg_rows(&s.pg, "sink", "SELECT count(*) FROM public.t").unwrap(),
        ["50"]
    );

    // and once the table is allowed the change, it flows with nothing lost.
    let config = s.config(
        "override.toml",
        "[schemas.compatibility_overrides]\n\"public.t\" = \"none\"",
    );
    let sluice = s.sluice(&config, &[]);
    s.pg.psql("source", "INSERT INTO public.t VALUES (52, '52', 'later')")
        .unwrap();
    s.wait_for_sink_to_match(&sluice);
}

#[test]
fn a_change_sluice_allows_but_the_registry_refuses_is_explained_and_waits_for_the_registry() {
    // Given a registry at its default level (BACKWARD) and sluice allowing anything for the
    // table,
    let s = Services::start();
    let registry = SchemaRegistry::start(None).unwrap();
    let config = s.config(
        "lenient.toml",
        &format!(
            "[schemas]\ncompatibility = \"none\"\n[schemas.registry]\nurl = \"{}\"",
            registry.url()
        ),
    );
    let sluice = s.sluice(&config, &[]);
    s.pg.psql("source", "INSERT INTO public.t VALUES (1, 1, 'one')")
        .unwrap();
    s.wait_for_sink_to_match(&sluice);
    drop(sluice);

    // when the table changes in a way the registry's level refuses,
    s.pg.psql(
        "source",
        "ALTER TABLE public.t ALTER COLUMN qty TYPE text;
         INSERT INTO public.t VALUES (2, '2', 'after retype')",
    )
    .unwrap();

    // then capture stops with the registry's 409 and what to align,
    let log = s.run_until_exit(&config, &[]);
    assert!(
        log.contains(&format!(
            "schema registry refused the new schema of subject {} as incompatible (HTTP 409)",
            s.subject("value")
        )) && log.contains("Sluice's own policy (NONE) allowed the change"),
        "{log}"
    );
    // and once the subject's level allows it, the change flows.
    let put = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(r#"{"compatibility": "NONE"}"#)
        .arg(format!("{}/config/{}", registry.url(), s.subject("value")))
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    let sluice = s.sluice(&config, &[]);
    s.wait_for_sink_to_match(&sluice);
    assert_eq!(registry.subject(&s.subject("value")).len(), 2);
}

#[test]
fn a_router_waiting_out_a_registry_outage_says_so_and_stops_at_once_on_sigterm() {
    // Given capture and router in processes of their own, on a registry, in sync,
    let s = Services::start();
    let registry = SchemaRegistry::start(None).unwrap();
    let registry_section = format!(
        "[schemas.registry]\nurl = \"{}\"\n\n[observability]",
        registry.url()
    );
    let edits = [("[observability]", registry_section.as_str())];
    let capture = s.start_other("capture", "capture", &edits);
    let route = || s.start_other("route", "router", &edits);
    let mut router = route();
    s.pg.psql("source", "INSERT INTO public.t VALUES (1, 1, 'one')")
        .unwrap();
    s.wait_for_sink_to_match(&router);
    router.terminate(Duration::from_secs(20));

    // when the table gains a column (a schema version the router has not read) and the
    // registry fails every request from then on,
    s.pg.psql(
        "source",
        "ALTER TABLE public.t ADD COLUMN region text; INSERT INTO public.t VALUES (2, 2, 'two', 'eu')",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.subject(&s.subject("value")).len() < 2 {
        assert!(Instant::now() < deadline, "{}", capture.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    registry.fail_next(1_000_000);
    let mut router = route();

    // then the router says what it waits for (in the log and in /readyz),
    router.wait_for_log(
        "registry unavailable while reading a writer schema; retrying",
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) =
            sluice_harness::http_get(router.metrics_port, "/readyz").unwrap_or_default();
        if code == 503 && body.contains("registry") {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz: {code} {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // and SIGTERM stops it at once and cleanly (the change it waited on is read again later),
    let asked = Instant::now();
    let status = router.terminate(Duration::from_secs(20)).unwrap();
    assert!(
        status.success() && asked.elapsed() < Duration::from_secs(10),
        "{status:?} after {:?}\n{}",
        asked.elapsed(),
        router.log()
    );
    // and once the registry answers again, the change arrives.
    registry.fail_next(0);
    let router = route();
    s.wait_for_sink_to_match(&router);
    let region = pg_rows(&s.pg, "sink", "SELECT region FROM public.t WHERE id = 2").unwrap();
    assert_eq!(region, ["eu"]);
}
