//! The example schemes in `schemas/examples/` compile against the tables their `doc` describes
//! and map a row as they say.

use std::path::Path;

use sluice_schemas::scheme::Scheme;
use sluice_schemas::{Datum, Op, SqlType};

mod common;
use common::table;

fn example(file: &str) -> Scheme {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    Scheme::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn s(v: &str) -> Datum {
    Datum::String(v.into())
}

#[test]
fn orders_are_renamed_computed_and_filtered() {
    let orders = table(
        "public",
        "orders",
        &[
            ("id", SqlType::Int64),
            ("customer_id", SqlType::Int64),
            ("qty", SqlType::Int32),
            (
                "price",
                SqlType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            ("status", SqlType::Text),
            ("note", SqlType::Text),
            ("placed_at", SqlType::TimestampTz),
        ],
    );
    let m = example("public.orders.avsc")
        .compile(&orders, None)
        .unwrap();
    assert_eq!(m.target.id.to_string(), "analytics.orders");
    let row = |status: &str| {
        vec![
            Datum::Long(1),
            Datum::Long(42),
            Datum::Int(3),
            Datum::Decimal("2.50".into()),
            s(status),
            s("n"),
            Datum::TimestampMicros(1_700_000_000_000_000), // 2023-11-14
        ]
    };
    let out = m.apply(Op::Create, None, Some(&row("paid")), 0).unwrap();
    assert_eq!(
        out[0].after.as_deref().unwrap(),
        [
            Datum::Long(1),
            Datum::Long(42),
            Datum::Long(3),
            Datum::Decimal("2.50".into()),
            Datum::Decimal("7.50".into()),
            Datum::TimestampMicros(1_700_000_000_000_000),
            Datum::Int(2023),
            s("web"),
        ]
    );
    assert!(m
        .apply(Op::Create, None, Some(&row("test")), 0)
        .unwrap()
        .is_empty());
}

#[test]
fn customers_keep_no_personal_data_in_clear() {
    let customers = table(
        "public",
        "customers",
        &[
            ("id", SqlType::Int32),
            ("name", SqlType::Text),
            ("email", SqlType::Text),
            ("phone", SqlType::Text),
            ("address", SqlType::Text),
            ("created_at", SqlType::TimestampTz),
        ],
    );
    let scheme = example("public.customers.avsc");
    assert_eq!(scheme.sink.as_deref(), Some("warehouse"));
    // The keyed hash needs its key.
    assert!(scheme.compile(&customers, None).is_err());
    let m = scheme
        .compile(&customers, Some(b"an example key of 32 bytes, or more"))
        .unwrap();
    let after = vec![
        Datum::Int(5),
        s("Ada"),
        s("ada@Example.org"),
        s("+44 20 7946 0958"),
        s("1 Main St"),
        Datum::Null,
    ];
    let out = m.apply(Op::Read, None, Some(&after), 0).unwrap();
    let row = out[0].after.as_deref().unwrap();
    assert!(matches!(&row[2], Datum::String(h) if h.len() == 64 && !h.contains('@')));
    assert_eq!(row[3], s("example.org"));
    assert_eq!(row[4], s("************0958"));
    assert_eq!(m.target.columns.len(), 6, "address is dropped");
}

#[test]
fn mysql_items_keep_their_exact_column_names() {
    let items = table(
        "shop",
        "items",
        &[
            ("sku", SqlType::Text),
            ("Display Name", SqlType::Text),
            ("stock", SqlType::Int64),
            ("attrs", SqlType::Json),
        ],
    );
    let m = example("shop.items.avsc").compile(&items, None).unwrap();
    let names: Vec<&str> = m.target.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["sku", "Display Name", "stock", "in_stock", "attrs"]);
    assert_eq!(m.target.columns[4].sql_type, SqlType::Jsonb);
    let out = m
        .apply(
            Op::Create,
            None,
            Some(&[s("A-1"), s("Lamp"), Datum::Long(0), s("{}")]),
            0,
        )
        .unwrap();
    assert_eq!(out[0].after.as_deref().unwrap()[3], Datum::Bool(false));
}
