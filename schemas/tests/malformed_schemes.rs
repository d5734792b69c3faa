//! Every scheme in `tests/malformed/` is refused — or, for a mistake Avro allows, warned
//! about — with exactly the message in its `.txt`: the file, the field, what is wrong and how
//! to fix it. See `tests/malformed/README.md`.

use std::path::Path;

use sluice_schemas::scheme::Scheme;

mod common;
use common::orders;

/// What a user sees for a scheme: the parse errors, else the errors against the table (no
/// HMAC key set), else its warnings, else "ok".
fn message(name: &str, text: &str) -> String {
    match Scheme::parse(Path::new(name), text) {
        Err(e) => e.to_string(),
        Ok(scheme) => match scheme.compile(&orders(), None) {
            Err(e) => e.to_string(),
            Ok(m) if !m.warnings.is_empty() => m
                .warnings
                .iter()
                .map(|w| format!("warning: {w}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(_) => "ok".into(),
        },
    }
}

#[test]
fn every_malformed_scheme_gets_its_exact_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "only {} malformed schemes", files.len());
    let mut failures = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let got = message(&name, &std::fs::read_to_string(&path).unwrap());
        assert_ne!(got, "ok", "{name} is accepted");
        let expected_path = path.with_extension("txt");
        if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, format!("{got}\n")).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != got {
            failures.push(format!(
                "{name}:\n--- expected ---\n{expected}--- got ---\n{got}\n"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
