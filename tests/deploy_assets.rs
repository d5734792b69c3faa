//! The Grafana dashboard and the Prometheus alert rules in `deploy/` name only metrics Sluice
//! defines, and a running pipeline (a PostgreSQL and a MariaDB source into a PostgreSQL sink)
//! exports them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_harness::{MariaDb, Pipeline};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ASSETS: &[&str] = &[
    "deploy/grafana/sluice-dashboard.json",
    "deploy/prometheus/alerts.yml",
];

/// Metric names the code defines (the `pub const` names of each crate's metrics module).
fn defined() -> BTreeSet<String> {
    [
        "capture/src/metrics.rs",
        "router/src/metrics.rs",
        "sinks/src/metrics.rs",
        "src/telemetry.rs",
    ]
    .iter()
    .flat_map(|file| {
        std::fs::read_to_string(format!("{ROOT}/{file}"))
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const"))
            .filter_map(|l| l.split('"').nth(1).map(str::to_string))
            .collect::<Vec<_>>()
    })
    .collect()
}

/// The `sluice_*` metric names an asset mentions, histogram suffixes removed.
fn named_in(asset: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{ROOT}/{asset}")).unwrap();
    let defined = defined();
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("sluice_") {
        // A name, not the tail of one (`_sluice_dead_letter` is a topic).
        if text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| defined.contains(*b)))
            .map_or(name.clone(), str::to_string);
        names.insert(base);
    }
    names
}

#[test]
fn dashboard_and_alerts_name_only_metrics_sluice_defines() {
    let defined = defined();
    for asset in ASSETS {
        let named = named_in(asset);
        assert!(named.len() >= 5, "{asset} names only {named:?}");
        let unknown: Vec<_> = named.difference(&defined).collect();
        assert!(
            unknown.is_empty(),
            "{asset} names metrics Sluice does not define: {unknown:?}"
        );
    }
}

/// Metrics that appear with their first occurrence (a dead-lettered event, a router error);
/// the test above still checks that they are defined.
const ON_FIRST_OCCURRENCE: &[&str] = &[
    "sluice_router_dlq_total",
    "sluice_router_errors_total",
    "sluice_router_scheme_reloads_total",
    "sluice_capture_schema_incompatible_total",
    "sluice_router_messages_skipped_total",
    "sluice_router_table_blocked",
    "sluice_router_fetch_stalls_total",
    "sluice_router_offset_gaps_total",
    "sluice_sink_events_skipped_total",
    "sluice_router_barrier_waits_total",
    "sluice_router_missing_row_waits_total",
    "sluice_sink_older_key_changes_total",
    "sluice_component_failed",
];

#[test]
fn a_running_pipeline_exports_every_metric_the_dashboard_and_alerts_use() {
    // Given a PostgreSQL and a MariaDB source flowing into a PostgreSQL sink, verified every
    // second,
    let maria = MariaDb::shared().unwrap();
    maria.create_database("shop").unwrap();
    let shop = maria.db("shop");
    maria
        .root_sql(&format!(
            "CREATE TABLE {shop}.m (id int PRIMARY KEY, d date)"
        ))
        .unwrap();
    let p = Pipeline::postgres(env!("CARGO_BIN_EXE_sluice"), "assets")
        .ddl("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
        .tables(&["public.t"])
        .sections(&format!(
            "[sources.maria]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"{shop}.m\"]\n\
             server_id = {}\n\n[verify]\ninterval_s = 1\nfirst_after_s = 0\nsettle_ms = 100",
            maria.url(),
            MariaDb::next_server_id()
        ))
        .build();
    let (pg, sluice) = (&p.pg, p.run());

    // when rows flow (and one MariaDB zero date makes a conversion error),
    pg.psql(
        "source",
        "INSERT INTO public.t SELECT i, 'v' FROM generate_series(1, 100) i",
    )
    .unwrap();
    maria
        .root_sql(&format!(
            "INSERT INTO {shop}.m SELECT seq, '2026-01-01' FROM {shop}.seq_1_to_100; \
             SET SESSION sql_mode = ''; INSERT INTO {shop}.m VALUES (101, '0000-00-00')"
        ))
        .unwrap();

    // then every metric the dashboard and the alerts use is exported.
    let wanted: BTreeSet<String> = ASSETS
        .iter()
        .flat_map(|a| named_in(a))
        .filter(|n| !ON_FIRST_OCCURRENCE.contains(&n.as_str()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = sluice.metrics().unwrap_or_default();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !text.lines().any(|l| l.starts_with(n.as_str())))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not exported: {missing:?}\n--- /metrics ---\n{text}\n--- log ---\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
