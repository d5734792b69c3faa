//! `sluice verify`: a sink equal to its source passes, also while writes go on; a damaged sink
//! is found exactly (missing, extra and differing rows, by key); a table it cannot compare is
//! named with the reason.

use std::process::Command;
use std::time::Duration;

use sluice_harness::Pipeline;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// `sluice verify --config <config>` with `args`: exit code and output.
fn verify(p: &Pipeline, args: &[&str]) -> (i32, String) {
    let out = Command::new(SLUICE)
        .arg("verify")
        .arg("--config")
        .arg(&p.config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn pipeline(name: &str) -> Pipeline {
    Pipeline::postgres(SLUICE, name)
        .ddl(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), at timestamptz);
             INSERT INTO public.items SELECT i, 'item ' || i, i % 7, i * 1.5, '2026-01-01'::timestamptz + i * interval '1 minute'
               FROM generate_series(1, 20000) i;
             CREATE TABLE public.pairs (a int, b text, v int, PRIMARY KEY (a, b));
             INSERT INTO public.pairs SELECT i % 100, 'k' || (i / 100), i FROM generate_series(1, 3000) i;",
        )
        .tables(&["public.items", "public.pairs"])
        .build()
}

#[test]
fn an_equal_sink_passes_and_a_damaged_one_is_found_row_for_row() {
    // Given a pipeline whose sink has caught up,
    let p = pipeline("verify_damage");
    let mut sluice = p.run();
    p.wait_for_match(
        &sluice,
        &["public.items", "public.pairs"],
        Duration::from_secs(120),
    );
    sluice.terminate(Duration::from_secs(20));

    // then verify finds both tables equal, exit 0;
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("table=public.items sink_table=public.items status=equal source_rows=20000 sink_rows=20000 missing=0 extra=0 differing=0"),
        "{out}"
    );
    assert!(
        out.contains("table=public.pairs") && out.contains("source_rows=3000"),
        "{out}"
    );

    // when the sink is damaged — rows deleted, changed (one only in a column's fraction, one
    // in a composite-key table), and added —
    p.pg.psql(
        "sink",
        "DELETE FROM public.items WHERE id IN (7, 9000, 19999);
         UPDATE public.items SET price = price + 0.01 WHERE id = 12345;
         UPDATE public.items SET name = NULL WHERE id = 42;
         UPDATE public.pairs SET v = -1 WHERE a = 5 AND b = 'k3';
         INSERT INTO public.items VALUES (30000, 'only at the sink', 1, 1, now());",
    )
    .unwrap();
    let out_file = p.dir.path().join("differences.jsonl");

    // then verify reports each one by its key, exit 1, and writes them all as JSON lines.
    let (code, out) = verify(
        &p,
        &["--out", out_file.to_str().unwrap(), "--settle-ms", "0"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("table=public.items sink_table=public.items status=different source_rows=20000 sink_rows=19998 missing=3 extra=1 differing=2"),
        "{out}"
    );
    assert!(
        out.contains("table=public.pairs") && out.contains("differing=1"),
        "{out}"
    );
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|l| {
        (
            l["table"].to_string(),
            l["kind"].to_string(),
            l["key"].to_string(),
        )
    });
    let seen: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("differing", "(12345)"),
            ("differing", "(42)"),
            ("extra", "(30000)"),
            ("missing", "(19999)"),
            ("missing", "(7)"),
            ("missing", "(9000)"),
            ("differing", "(5,k3)"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
        "{lines:?}"
    );
    // and --table limits it to one table;
    let (code, out) = verify(&p, &["--table", "public.pairs", "--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("public.items"), "{out}");

    // a table that cannot be compared is named with why, and the others are still compared.
    p.pg.psql("sink", "DROP TABLE public.pairs").unwrap();
    let (code, out) = verify(&p, &["--settle-ms", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("table=public.pairs status=not_compared")
            && out.contains("the sink has no table public.pairs"),
        "{out}"
    );
    assert!(
        out.contains("table=public.items sink_table=public.items status=different"),
        "{out}"
    );
}

#[test]
fn writes_in_flight_are_not_differences() {
    // Given a running pipeline and a writer that keeps changing the source,
    let p = pipeline("verify_moving");
    let sluice = p.run();
    p.wait_for_match(&sluice, &["public.items"], Duration::from_secs(120));
    let writer =
        p.pg.write_in_rounds("source", 40, Duration::from_millis(100), |round| {
            format!(
                "UPDATE public.items SET qty = qty + 1 WHERE id % 50 = {}; \
             INSERT INTO public.items VALUES ({}, 'new', 0, 0, now())",
                round % 50,
                100_000 + round
            )
        });

    // when verify runs meanwhile, with time for what is in flight to land,
    let (code, out) = verify(&p, &["--table", "public.items", "--settle-ms", "20000"]);
    writer.join().unwrap();

    // then it reports the table equal (rows read while moving settle, and are counted so).
    assert_eq!(code, 0, "{out}\n--- sluice log ---\n{}", sluice.log());
    assert!(out.contains("status=equal"), "{out}");
}
