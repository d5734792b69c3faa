//! Schemes against a writer schema: Avro resolution cases (alias rename, dropped field,
//! default, promotion), expressions, filters, masks, unchanged TOAST, keys, and the identity
//! scheme `sluice schemes generate` writes.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value as Json};
use sluice_schemas::scheme::{identity, Mapping, Scheme, SchemeErrors};
use sluice_schemas::{Column, Datum, Op, SqlType, TableId};

mod common;
use common::orders;

fn row(id: i64, qty: i32, status: &str) -> Vec<Datum> {
    vec![
        Datum::Long(id),
        Datum::Int(qty),
        Datum::Decimal("2.50".into()),
        Datum::String("Ada@Example.com".into()),
        Datum::String(status.into()),
        Datum::Date(19_723),
        Datum::String(r#"{"a": 1}"#.into()),
    ]
}

fn scheme(fields: Json, extra: Json) -> Scheme {
    let mut record = json!({
        "type": "record", "name": "orders", "sluice.source": "public.orders", "fields": fields
    });
    if let (Some(r), Some(e)) = (record.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    Scheme::parse(Path::new("orders.avsc"), &record.to_string()).unwrap()
}

fn compile(fields: Json, extra: Json) -> Result<Mapping, SchemeErrors> {
    scheme(fields, extra).compile(&orders(), Some(b"0123456789abcdef0123456789abcdef"))
}

fn insert(m: &Mapping, r: Vec<Datum>) -> Vec<sluice_schemas::RowChange> {
    m.apply(Op::Create, None, Some(&r), 0).unwrap()
}

#[test]
fn identity_fields_keep_the_source_types_exactly() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "status", "type": ["null", "string"], "default": null},
            {"name": "doc", "type": ["null", "string"], "default": null}
        ]),
        json!({}),
    )
    .unwrap();
    // A string read as it is keeps the source's SQL type: the sink recreates enum and jsonb.
    let types: Vec<String> = m
        .target
        .columns
        .iter()
        .map(|c| c.sql_type.canonical())
        .collect();
    assert_eq!(types, ["int64", "enum:public.status_enum", "jsonb"]);
    assert_eq!(m.target.id, TableId::new("public", "orders"));
    assert!(m.target.columns[0].key);
    assert_eq!(
        insert(&m, row(7, 3, "new"))[0].after,
        Some(vec![
            Datum::Long(7),
            Datum::String("new".into()),
            Datum::String(r#"{"a": 1}"#.into())
        ])
    );
}

#[test]
fn an_alias_renames_a_column() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "quantity", "type": ["null", "int"], "default": null, "aliases": ["qty"]}
        ]),
        json!({"sluice.table": "analytics.order_lines"}),
    )
    .unwrap();
    assert_eq!(m.target.id, TableId::new("analytics", "order_lines"));
    assert_eq!(m.target.columns[1].name, "quantity");
    assert_eq!(
        insert(&m, row(1, 5, "x"))[0].after,
        Some(vec![Datum::Long(1), Datum::Int(5)])
    );
}

#[test]
fn a_column_without_a_field_is_dropped() {
    let m = compile(json!([{"name": "id", "type": "long"}]), json!({})).unwrap();
    assert_eq!(m.target.columns.len(), 1);
    assert_eq!(
        insert(&m, row(1, 5, "x"))[0].after,
        Some(vec![Datum::Long(1)])
    );
}

#[test]
fn a_field_without_a_column_takes_its_default_and_older_rows_get_it_too() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "region", "type": "string", "default": "eu"}
        ]),
        json!({}),
    )
    .unwrap();
    assert_eq!(
        insert(&m, row(1, 5, "x"))[0].after,
        Some(vec![Datum::Long(1), Datum::String("eu".into())])
    );
    // The sink adds the column with this value for the rows it already has.
    assert_eq!(m.target.columns[1].missing.as_deref(), Some("eu"));
}

#[test]
fn numbers_are_promoted_as_avro_says() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "qty", "type": ["null", "double"], "default": null},
            {"name": "price", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 14, "scale": 2}], "default": null}
        ]),
        json!({}),
    )
    .unwrap();
    assert_eq!(
        m.target
            .columns
            .iter()
            .map(|c| c.sql_type.canonical())
            .collect::<Vec<_>>(),
        ["int64", "float64", "decimal(10,2)"]
    );
    assert_eq!(
        insert(&m, row(1, 5, "x"))[0].after,
        Some(vec![
            Datum::Long(1),
            Datum::Double(5.0),
            Datum::Decimal("2.50".into())
        ])
    );
}

#[test]
fn expressions_compute_fields_and_filters_keep_rows_in_or_out() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "total", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}], "default": null,
             "sluice.expr": "double(row.qty) * row.price"},
            {"name": "email", "type": ["null", "string"], "default": null, "sluice.expr": "row.email.lowerAscii()"},
            {"name": "year", "type": "int", "sluice.expr": "row.placed.getFullYear()"}
        ]),
        json!({"sluice.filter": "row.status != 'test'"}),
    )
    .unwrap();
    assert_eq!(
        insert(&m, row(1, 3, "new"))[0].after,
        Some(vec![
            Datum::Long(1),
            Datum::Decimal("7.50".into()),
            Datum::String("ada@example.com".into()),
            Datum::Int(2024)
        ])
    );
    // Filtered out: an insert is skipped, an update that moves the row out deletes it.
    assert!(insert(&m, row(2, 3, "test")).is_empty());
    let moved = m
        .apply(Op::Update, None, Some(&row(2, 3, "test")), 0)
        .unwrap();
    assert_eq!(
        moved,
        [sluice_schemas::RowChange {
            table: m.target.clone(),
            op: Op::Delete,
            before: Some(vec![Datum::Long(2), Datum::Null, Datum::Null, Datum::Null]),
            after: None
        }]
    );
    // A read (snapshot, repair) of a row kept out deletes it too: the target may hold it.
    let read = m
        .apply(Op::Read, None, Some(&row(2, 3, "test")), 0)
        .unwrap();
    assert_eq!(read, moved);
    // Deletes always go through, with the key.
    let deleted = m
        .apply(Op::Delete, Some(&row(3, 1, "test")), None, 0)
        .unwrap();
    assert_eq!(deleted[0].op, Op::Delete);
    assert_eq!(deleted[0].before.as_ref().unwrap()[0], Datum::Long(3));
}

#[test]
fn masks_hide_personal_data_and_hashes_can_be_keys() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "email", "type": ["null", "string"], "default": null, "sluice.mask": "sha256"},
            {"name": "email_h", "type": ["null", "string"], "default": null, "sluice.mask": "hmac-sha256",
             "sluice.expr": "row.email"},
            {"name": "card", "type": ["null", "string"], "default": null, "sluice.mask": {"keep_last": 4},
             "sluice.expr": "'4111111111111111'"},
            {"name": "doc", "type": ["null", "string"], "default": null, "sluice.mask": "redact"}
        ]),
        json!({}),
    )
    .unwrap();
    let after = insert(&m, row(1, 1, "x"))[0].after.clone().unwrap();
    // sha256("Ada@Example.com"), as `printf 'Ada@Example.com' | sha256sum` prints it.
    assert_eq!(
        after[1],
        Datum::String("1aa1bf07b50d24a304252acef11b05379c3c93ef87e26803192386b6c65b8bfc".into())
    );
    // The keyed hash of the same text differs from the plain one.
    assert!(matches!(&after[2], Datum::String(h) if h.len() == 64) && after[2] != after[1]);
    assert_eq!(after[3], Datum::String("************1111".into()));
    assert_eq!(after[4], Datum::Null);
    // A masked column is text in the sink, whatever it was at the source.
    assert_eq!(m.target.columns[4].sql_type, SqlType::Jsonb);
    assert_eq!(m.target.columns[1].sql_type, SqlType::Text);
}

#[test]
fn unchanged_toast_passes_through_or_is_taken_from_the_before_image() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "doc", "type": ["null", "string"], "default": null},
            {"name": "size", "type": ["null", "long"], "default": null, "sluice.expr": "size(row.doc)"}
        ]),
        json!({}),
    )
    .unwrap();
    let mut after = row(1, 1, "x");
    after[6] = Datum::Unchanged;
    // Without a before-image, the expression cannot read the column: the change is refused
    // with the reason (the router dead-letters it).
    let e = m.apply(Op::Update, None, Some(&after), 0).unwrap_err();
    assert!(
        e.contains("reads `doc`, whose value PostgreSQL did not resend"),
        "{e}"
    );
    assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
    // With one (REPLICA IDENTITY FULL), the old value stands in.
    let before = row(1, 1, "x");
    let out = m.apply(Op::Update, Some(&before), Some(&after), 0).unwrap();
    assert_eq!(out[0].after.as_ref().unwrap()[2], Datum::Long(8));
    // A field that only passes the column through stays unchanged: the sink leaves it.
    let m = compile(
        json!([{"name": "id", "type": "long"}, {"name": "doc", "type": ["null", "string"], "default": null}]),
        json!({}),
    )
    .unwrap();
    let out = m.apply(Op::Update, None, Some(&after), 0).unwrap();
    assert_eq!(out[0].after.as_ref().unwrap()[1], Datum::Unchanged);
}

#[test]
fn an_expression_result_of_the_wrong_kind_is_refused_per_change_with_the_field() {
    let m = compile(
        json!([
            {"name": "id", "type": "long"},
            {"name": "label", "type": ["null", "string"], "default": null, "sluice.expr": "row.qty * 2"}
        ]),
        json!({}),
    )
    .unwrap();
    assert_eq!(
        m.apply(Op::Create, None, Some(&row(1, 1, "x")), 0).unwrap_err(),
        "orders.avsc: field `label`: the expression gave int, which a text column cannot hold; wrap it in string(…)"
    );
}

#[test]
fn a_named_key_replaces_the_source_key() {
    let m = compile(
        json!([
            {"name": "email", "type": "string", "sluice.mask": "hmac-sha256"},
            {"name": "qty", "type": ["null", "int"], "default": null}
        ]),
        json!({"sluice.key": ["email"]}),
    )
    .unwrap_err();
    // email is nullable at the source: a non-null field cannot read it.
    assert!(
        m.0[0].message.contains("reads column `email` (text)"),
        "{m}"
    );
    let m = compile(
        json!([
            {"name": "email", "type": "string", "sluice.mask": "hmac-sha256", "sluice.expr": "row.email == null ? '' : row.email"},
            {"name": "qty", "type": ["null", "int"], "default": null}
        ]),
        json!({"sluice.key": ["email"]}),
    )
    .unwrap();
    assert!(m.target.columns[0].key && !m.target.columns[1].key);
}

#[test]
fn the_generated_identity_scheme_maps_every_column_as_it_is() {
    let mut table = (*orders()).clone();
    table.columns.push(Column {
        name: "order date".into(),
        sql_type: SqlType::Array(Box::new(SqlType::Interval)),
        key: false,
        missing: Some("{}".into()),
    });
    let table = Arc::new(table);
    let json = identity(&table, "pg_main", Some("warehouse"));
    let text = serde_json::to_string_pretty(&json).unwrap();
    let scheme = Scheme::parse(Path::new("public.orders.avsc"), &text).unwrap();
    let m = scheme.compile(&table, None).unwrap();
    assert!(m.warnings.is_empty());
    // Same table, same columns, same types, same key, same fill for older rows.
    assert_eq!(*m.target, *table);
    let mut r = row(1, 2, "x");
    r.push(Datum::Array(vec![Datum::String("P1D".into())]));
    assert_eq!(insert(&m, r.clone())[0].after, Some(r));
}
