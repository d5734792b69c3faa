//! Mapping schemes as an engineer uses them: `sluice schemes generate` writes identity schemes
//! from the live source, the engineer edits one (rename, drop, default, computed field, mask,
//! filter, another target table), `sluice schemes check` validates it against the source and
//! the sink, the pipeline runs it, and the router reloads it when the file changes — keeping
//! the running scheme when the new one is invalid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_harness::compare::pg_rows;
use sluice_harness::{Pipeline, PipelineBuilder, SluiceProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

const CUSTOMERS: &str = "CREATE TABLE public.customers (
    id int PRIMARY KEY, name text NOT NULL, email text, status text, qty int, price numeric(10,2)
)";

/// The edited scheme: renamed, dropped, defaulted, computed, masked and filtered fields, into
/// another table.
const EDITED: &str = include_str!("schemes/customers.edited.avsc");

/// What the sink must hold for the edited scheme, computed by PostgreSQL from the source.
const EXPECTED: &str = "SELECT id, name, encode(sha256(convert_to(email, 'UTF8')), 'hex'), \
    lower(split_part(email, '@', 2)), qty, (qty * price)::numeric(14,2), 'eu' \
    FROM public.customers WHERE status IS DISTINCT FROM 'test' ORDER BY id";
const SINK: &str =
    "SELECT id, full_name, email, email_domain, qty, total, region FROM crm.customers ORDER BY id";

fn sluice(args: &[&str], config: &Path) -> (i32, String) {
    let out = Command::new(SLUICE)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A pipeline whose router reads `schemes/` (checked every 500 ms) and whose topics have
/// three partitions; the schemes directory's path.
fn with_schemes(pipeline: PipelineBuilder) -> (Pipeline, PathBuf) {
    let p = pipeline
        .kafka("partitions = 3")
        .router("schemes = \"schemes\"\nschemes_reload_ms = 500")
        .build();
    let schemes = p.dir.path().join("schemes");
    std::fs::create_dir(&schemes).unwrap();
    (p, schemes)
}

/// Waits until `sink_query` at the sink reads what `source_query` reads at the source.
fn wait_for(p: &Pipeline, source_query: &str, sink_query: &str, sluice: &SluiceProcess) {
    p.wait_for_query(sluice, source_query, sink_query, Duration::from_secs(60));
}

/// Waits up to 30 s until the metric's value satisfies `done`.
fn wait_for_metric(
    sluice: &SluiceProcess,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) {
    sluice.wait_for_metric(name, labels, Duration::from_secs(30), "as expected", done);
}

#[test]
fn generate_edit_check_run_and_reload_a_scheme() {
    // Given a source table, an empty sink and a config whose router reads schemes/,
    let (p, schemes) = with_schemes(
        Pipeline::postgres(SLUICE, "schemes")
            .ddl(CUSTOMERS)
            .tables(&["public.customers"]),
    );
    let (pg, config) = (&p.pg, p.config.clone());

    // when the engineer generates the identity schemes,
    let (code, out) = sluice(&["schemes", "generate"], &config);
    assert_eq!(code, 0, "{out}");
    let file = schemes.join("public.customers.avsc");
    assert!(
        out.contains(&format!(
            "wrote {} (public.customers from source pg_main: 6 columns)",
            file.display()
        )),
        "{out}"
    );
    let generated: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(generated["sluice.source"], "public.customers");
    assert_eq!(
        generated["fields"][0],
        serde_json::json!({"name": "id", "type": "int"})
    );
    // (Sluice's schemas do not carry NOT NULL: every non-key column may be null.)
    assert_eq!(
        generated["fields"][1],
        serde_json::json!({"name": "name", "type": ["null", "string"], "default": null})
    );
    // (running it again keeps the file the engineer may have edited)
    let (_, out) = sluice(&["schemes", "generate"], &config);
    assert!(out.contains("kept"), "{out}");
    let (code, out) = sluice(&["schemes", "check"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: public.customers → public.customers in sink warehouse (6 columns, key id; 0 schema versions in Kafka)"),
        "{out}"
    );

    // and edits it; check accepts the edit,
    std::fs::write(&file, EDITED).unwrap();
    let (code, out) = sluice(&["schemes", "check"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: public.customers → crm.customers in sink warehouse (7 columns, key id; 0 schema versions in Kafka)"),
        "{out}"
    );

    // while a broken edit is refused with the file, the field and the fix, exit 1,
    let broken_dir = p.dir.path().join("broken");
    std::fs::create_dir(&broken_dir).unwrap();
    let broken = broken_dir.join("customers.avsc");
    std::fs::write(
        &broken,
        EDITED.replace(
            r#"{"name": "qty", "type": ["null", "long"], "default": null}"#,
            r#"{"name": "qty", "type": ["null", "string"], "default": null}"#,
        ),
    )
    .unwrap();
    let (code, out) = sluice(
        &["schemes", "check", "--dir", broken_dir.to_str().unwrap()],
        &config,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: field `qty`: reads column `qty` (int32): int cannot be read as string (Avro converts no value to text)\n  \
             fix: make the field's type \"int\", or compute it with \"sluice.expr\": \"string(row.qty)\"",
            broken.display()
        )),
        "{out}"
    );
    // and a misspelt alias, which Avro allows (the field then always takes its default), is
    // warned about;
    std::fs::write(
        &broken,
        EDITED.replace(r#""aliases": ["name"]"#, r#""aliases": ["nmae"]"#),
    )
    .unwrap();
    let (code, out) = sluice(
        &["schemes", "check", "--dir", broken_dir.to_str().unwrap()],
        &config,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: ")
            && out.contains("did you mean \"name\" instead of the alias \"nmae\"?"),
        "{out}"
    );
    // and a sink table that cannot take the rows is found before anything runs.
    pg.psql(
        "sink",
        "CREATE SCHEMA legacy; CREATE TABLE legacy.customers (id int PRIMARY KEY, full_name varchar(20), audit text NOT NULL)",
    )
    .unwrap();
    std::fs::write(&broken, EDITED.replace("crm.customers", "legacy.customers")).unwrap();
    let (code, out) = sluice(
        &["schemes", "check", "--dir", broken_dir.to_str().unwrap()],
        &config,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("sink warehouse, column `full_name`: the sink column is character varying(20), and the scheme writes text (text) values into it"),
        "{out}"
    );
    assert!(
        out.contains("sink warehouse, column `audit`: legacy.customers.audit is NOT NULL without a default, and no field of the scheme writes it"),
        "{out}"
    );

    // Then the pipeline writes rows as the scheme says, leaving out filtered rows,
    pg.psql(
        "source",
        "INSERT INTO public.customers SELECT i, 'name ' || i, 'user' || i || '@Example.COM', \
         CASE WHEN i % 10 = 0 THEN 'test' ELSE 'live' END, i, 1.25 FROM generate_series(1, 100) i;
         INSERT INTO public.customers (id, name) VALUES (101, 'no email')",
    )
    .unwrap();
    let sluice_run = p.run();
    wait_for(&p, EXPECTED, SINK, &sluice_run);
    // and an update that moves a row out of the filter deletes it in the target.
    pg.psql(
        "source",
        "UPDATE public.customers SET status = 'test' WHERE id IN (1, 2); UPDATE public.customers SET qty = 7 WHERE id = 3",
    )
    .unwrap();
    wait_for(&p, EXPECTED, SINK, &sluice_run);

    // When the file is changed into something invalid, the running scheme is kept,
    std::fs::write(&file, EDITED.replace("\"int\"", "\"itn\"")).unwrap();
    wait_for_metric(
        &sluice_run,
        "sluice_router_scheme_reloads_total",
        &[("result", "rejected")],
        |v| v >= 1.0,
    );
    assert!(sluice_run
        .log()
        .contains("a changed mapping scheme is invalid; the running one is kept"));
    assert!(
        sluice_run.log().contains("did you mean \\\"int\\\"?")
            || sluice_run.log().contains("did you mean \"int\"?"),
        "{}",
        sluice_run.log()
    );
    pg.psql(
        "source",
        "INSERT INTO public.customers VALUES (200, 'after a bad edit', 'x@y.org', 'live', 2, 3.00)",
    )
    .unwrap();
    wait_for(&p, EXPECTED, SINK, &sluice_run);

    // and when it is changed into something valid, new changes follow the new scheme.
    std::fs::write(
        &file,
        EDITED.replace(
            r#"{"name": "region", "type": "string", "default": "eu"}"#,
            r#"{"name": "region", "type": "string", "default": "eu"},
               {"name": "double_qty", "type": ["null", "long"], "default": null, "sluice.expr": "row.qty * 2"}"#,
        ),
    )
    .unwrap();
    wait_for_metric(
        &sluice_run,
        "sluice_router_scheme_reloads_total",
        &[("result", "applied")],
        |v| v >= 1.0,
    );
    pg.psql(
        "source",
        "UPDATE public.customers SET qty = qty + 1 WHERE id BETWEEN 3 AND 9",
    )
    .unwrap();
    wait_for(
        &p,
        "SELECT id, qty * 2 FROM public.customers WHERE id BETWEEN 3 AND 9 ORDER BY id",
        "SELECT id, double_qty FROM crm.customers WHERE id BETWEEN 3 AND 9 ORDER BY id",
        &sluice_run,
    );
    wait_for(&p, EXPECTED, SINK, &sluice_run);
    assert_eq!(sluice_run.metric("sluice_router_dlq_total", &[]), 0.0);

    // When the source renames a column, a scheme that reads only the new name fits the table
    // as it is now, but reads nothing from the version whose events are still in Kafka: check
    // warns,
    pg.psql(
        "source",
        "ALTER TABLE public.customers RENAME COLUMN name TO display_name",
    )
    .unwrap();
    let check_broken = || {
        sluice(
            &["schemes", "check", "--dir", broken_dir.to_str().unwrap()],
            &config,
        )
    };
    std::fs::write(
        &broken,
        EDITED.replace(r#""aliases": ["name"]"#, r#""aliases": ["display_name"]"#),
    )
    .unwrap();
    let (code, out) = check_broken();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "warning: ${FILE}: field `full_name` (against version 1 of public.customers, whose \
             events may still be in Kafka): that version has no column for the field, so its \
             events write the field's default\n  fix: if the column had another name then, add \
             it to \"aliases\" (columns only that version has: name)"
                .replace("${FILE}", &broken.display().to_string())
                .as_str()
        ),
        "{out}"
    );
    // errs when the field cannot do without the column,
    std::fs::write(
        &broken,
        EDITED.replace(
            r#"{"name": "full_name", "type": ["null", "string"], "default": null, "aliases": ["name"]}"#,
            r#"{"name": "full_name", "type": ["null", "string"], "aliases": ["display_name"]}"#,
        ),
    )
    .unwrap();
    let (code, out) = check_broken();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "field `full_name` (against version 1 of public.customers, whose events may still be \
             in Kafka): no column of public.customers is called `full_name` and the field has no default"
        ),
        "{out}"
    );
    // and is content once the field has both names.
    std::fs::write(
        &broken,
        EDITED.replace(
            r#""aliases": ["name"]"#,
            r#""aliases": ["display_name", "name"]"#,
        ),
    )
    .unwrap();
    let (code, out) = check_broken();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("(7 columns, key id; 1 schema version in Kafka)"),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
}

/// A scheme computing a field from `qty`.
const DOUBLING: &str = r#"{
  "type": "record",
  "name": "customers",
  "sluice.source": "public.customers",
  "fields": [
    {"name": "id", "type": "int"},
    {"name": "name", "type": ["null", "string"], "default": null},
    {"name": "double_qty", "type": ["null", "long"], "default": null,
     "sluice.expr": "row.qty == null ? null : row.qty * 2"}
  ]
}"#;

#[test]
fn a_source_change_the_scheme_does_not_fit_holds_its_table_until_the_scheme_is_fixed() {
    // Given a scheme that computes a field from a column, and a table without a scheme,
    let (p, schemes) = with_schemes(
        Pipeline::postgres(SLUICE, "held")
            .ddl(&format!(
                "{CUSTOMERS}; CREATE TABLE public.notes (id int PRIMARY KEY, body text); \
                 INSERT INTO public.customers (id, name, qty) \
                 SELECT i, 'c' || i, i FROM generate_series(1, 20) i"
            ))
            .tables(&["public.customers", "public.notes"]),
    );
    let pg = &p.pg;
    let file = schemes.join("public.customers.avsc");
    std::fs::write(&file, DOUBLING).unwrap();
    let sluice_run = p.run();
    let customers = "SELECT id, name, double_qty FROM public.customers ORDER BY id";
    wait_for(
        &p,
        "SELECT id, name, qty * 2 FROM public.customers ORDER BY id",
        customers,
        &sluice_run,
    );

    // when the source drops the column the scheme computes from and rows keep changing,
    pg.psql(
        "source",
        "ALTER TABLE public.customers DROP COLUMN qty; \
         INSERT INTO public.customers (id, name) SELECT i, 'c' || i FROM generate_series(21, 30) i; \
         UPDATE public.customers SET name = 'renamed' WHERE id = 1",
    )
    .unwrap();
    pg.psql(
        "source",
        "INSERT INTO public.notes SELECT i, 'note ' || i FROM generate_series(1, 5) i",
    )
    .unwrap();

    // then the other table goes on, while that table's changes wait, nothing dead-lettered,
    wait_for(
        &p,
        "SELECT id, body FROM public.notes ORDER BY id",
        "SELECT id, body FROM public.notes ORDER BY id",
        &sluice_run,
    );
    wait_for_metric(
        &sluice_run,
        "sluice_router_table_blocked",
        &[("table", "public.customers")],
        |v| v == 1.0,
    );
    assert!(
        sluice_run
            .log()
            .contains("a mapping scheme does not fit this change of its table; the partition waits until the scheme is fixed"),
        "{}",
        sluice_run.log()
    );
    assert!(
        sluice_run.log().contains("qty"),
        "the log names the missing column: {}",
        sluice_run.log()
    );
    assert_eq!(
        pg_rows(
            pg,
            "sink",
            "SELECT count(*) FROM public.customers WHERE id > 20 OR name = 'renamed'"
        )
        .unwrap(),
        ["0"]
    );
    assert_eq!(sluice_run.metric("sluice_router_dlq_total", &[]), 0.0);

    // and once the engineer fixes the scheme, every held change arrives, in order (the rows
    // changed since the drop have no quantity to double).
    std::fs::write(
        &file,
        DOUBLING.replace(
            r#""sluice.expr": "row.qty == null ? null : row.qty * 2""#,
            r#""sluice.expr": "null""#,
        ),
    )
    .unwrap();
    wait_for(
        &p,
        "SELECT id, name, CASE WHEN id > 20 OR id = 1 THEN NULL ELSE id * 2 END FROM public.customers ORDER BY id",
        customers,
        &sluice_run,
    );
    wait_for_metric(
        &sluice_run,
        "sluice_router_table_blocked",
        &[("table", "public.customers")],
        |v| v == 0.0,
    );
    assert_eq!(sluice_run.metric("sluice_router_dlq_total", &[]), 0.0);
}

#[test]
fn a_mysql_table_maps_into_postgres_with_the_example_scheme() {
    // Given a MariaDB table whose column names are not Avro names, and the example scheme for it,
    let maria = sluice_harness::MariaDb::start().unwrap();
    maria.create_database("shop").unwrap();
    maria
        .root_sql(
            "CREATE TABLE shop.items (sku varchar(32) PRIMARY KEY, `Display Name` varchar(200), \
             stock int unsigned, attrs json)",
        )
        .unwrap();
    let (p, schemes) = with_schemes(Pipeline::postgres(SLUICE, "shop").source_section(&format!(
        "[sources.shop]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"shop.items\"]\nserver_id = 5402",
        maria.url()
    )));
    let (pg, config) = (&p.pg, p.config.clone());

    // generate reads the table from MariaDB's catalog (the exact column name kept aside),
    let (code, out) = sluice(&["schemes", "generate"], &config);
    assert_eq!(code, 0, "{out}");
    let generated: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schemes.join("shop.items.avsc")).unwrap())
            .unwrap();
    assert_eq!(
        generated["fields"][1],
        serde_json::json!({"name": "Display_Name", "type": ["null", "string"], "default": null,
                           "sluice.column": "Display Name"})
    );
    // the example scheme checks against it,
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/shop.items.avsc"),
        schemes.join("shop.items.avsc"),
    )
    .unwrap();
    let (code, out) = sluice(&["schemes", "check"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: shop.items → shop.items in sink warehouse (5 columns, key sku; 0 schema versions in Kafka)"),
        "{out}"
    );

    // and rows arrive in PostgreSQL as it says.
    maria
        .root_sql(
            "INSERT INTO shop.items VALUES ('A-1', 'Lamp', 0, '{\"w\": 1}'), ('B-2', 'Desk', 4294967295, NULL); \
             UPDATE shop.items SET stock = 3 WHERE sku = 'A-1'",
        )
        .unwrap();
    let sluice_run = p.run();
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = "SELECT sku, \"Display Name\", stock, in_stock, attrs->>'w', pg_typeof(attrs) FROM shop.items ORDER BY sku";
    let expected = ["A-1|Lamp|3|t|1|jsonb", "B-2|Desk|4294967295|t||jsonb"];
    loop {
        match pg_rows(pg, "sink", query) {
            Ok(rows) if rows == expected => break,
            other => assert!(
                Instant::now() < deadline,
                "{other:?}\n--- log ---\n{}",
                sluice_run.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_edited_scheme_maps_the_same_in_local_mode() {
    // Given a local-mode pipeline (no broker) whose router reads the edited scheme,
    let p = Pipeline::postgres(SLUICE, "schemes_local")
        .local()
        .ddl(CUSTOMERS)
        .tables(&["public.customers"])
        .router("schemes = \"schemes\"")
        .build();
    let schemes = p.dir.path().join("schemes");
    std::fs::create_dir(&schemes).unwrap();
    std::fs::write(schemes.join("public.customers.avsc"), EDITED).unwrap();

    // when rows are written (some filtered out, one without an email) and one moves out of
    // the filter,
    p.source(
        "INSERT INTO public.customers SELECT i, 'name ' || i, 'user' || i || '@Example.COM', \
         CASE WHEN i % 10 = 0 THEN 'test' ELSE 'live' END, i, 1.25 FROM generate_series(1, 100) i;
         INSERT INTO public.customers (id, name) VALUES (101, 'no email')",
    );
    let sluice = p.run();
    p.source("UPDATE public.customers SET status = 'test' WHERE id = 7");

    // then the sink holds what the scheme says, as through Kafka.
    wait_for(&p, EXPECTED, SINK, &sluice);
}
