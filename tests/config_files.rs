//! Every config shipped in the repo parses and validates, and a bad one gets a message with
//! the file, the field and the fix, and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::config::Config;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn shipped_configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            shipped_configs(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_in_the_repo_parses_and_validates() {
    let mut files = Vec::new();
    shipped_configs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &mut files,
    );
    // The example, docker-compose's and the Kubernetes base's.
    for shipped in [
        "sluice.example.toml",
        "compose/sluice.toml",
        "kubernetes/base/sluice.toml",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(shipped)),
            "deploy/{shipped} is missing"
        );
    }
    for file in files {
        Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(SLUICE)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[sources.pg]
kind = "postgres"
url = "postgresql://u@h/db"
tables = ["public.t"]
slot = "s"
publication = "p"
[sinks.w]
kind = "postgres"
url = "postgresql://u@h/db2"
[router]
sink = "w"
"#;

#[test]
fn a_good_config_checks_ok() {
    let (code, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_misspelled_key_is_reported_with_file_path_and_line() {
    let (code, stderr) = check(&GOOD.replace("[router]\nsink", "[router]\nbatch_size = 5\nsink"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bad.toml: router.batch_size: unknown field `batch_size`"),
        "{stderr}"
    );
    assert!(stderr.contains("expected one of"), "{stderr}");
    assert!(stderr.contains("line"), "{stderr}");
}

#[test]
fn an_invalid_value_names_the_field_and_the_fix() {
    let (code, stderr) = check(&GOOD.replace("tables = [\"public.t\"]", "tables = [\"t\"]"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("sources.pg.tables: `t` is not of the form schema.table"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_reported() {
    let out = Command::new(SLUICE)
        .args(["check-config", "--config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sluice.toml: cannot read"));
}

#[test]
fn check_config_reads_every_scheme_in_router_schemes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemes")).unwrap();
    std::fs::write(
        dir.path().join("schemes/orders.avsc"),
        r#"{"type": "record", "name": "orders", "sluice.source": "public.orders", "sluice.fliter": "true",
            "fields": [{"name": "id", "type": "long"}]}"#,
    )
    .unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        GOOD.replace(
            "[router]\nsink = \"w\"",
            "[router]\nsink = \"w\"\nschemes = \"schemes\"",
        ),
    )
    .unwrap();
    let out = Command::new(SLUICE)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: record: unknown attribute \"sluice.fliter\"\n  fix: did you mean \"sluice.filter\"?",
            dir.path().join("schemes/orders.avsc").display()
        )),
        "{stderr}"
    );
    // A missing directory is named with the fix.
    std::fs::write(
        &path,
        GOOD.replace(
            "[router]\nsink = \"w\"",
            "[router]\nsink = \"w\"\nschemes = \"nowhere\"",
        ),
    )
    .unwrap();
    let out = Command::new(SLUICE)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("router.schemes = \"nowhere\" is not a directory"),
        "{stderr}"
    );
}
