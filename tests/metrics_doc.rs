//! METRICS.md lists exactly the metrics the code defines.

use std::collections::BTreeSet;

fn defined() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut names = BTreeSet::new();
    for file in [
        "capture/src/metrics.rs",
        "router/src/metrics.rs",
        "sinks/src/metrics.rs",
        "src/telemetry.rs",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const"))
        {
            if let Some(name) = line.split('"').nth(1) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/METRICS.md")).unwrap();
    text.split('`')
        .filter(|t| t.starts_with("sluice_") && !t.contains(' ') && !t.contains('<'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_in_the_code_is_documented_and_every_documented_metric_exists() {
    let (code, doc) = (defined(), documented());
    assert!(code.len() >= 15, "found only {code:?}");
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from METRICS.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "METRICS.md lists metrics the code does not define: {stale:?}"
    );
}
