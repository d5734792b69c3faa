//! Tables the schemas crate's integration tests map.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;

use sluice_schemas::{Column, SqlType, TableId, TableSchema};

/// A table whose first column is its key.
pub fn table(ns: &str, name: &str, cols: &[(&str, SqlType)]) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new(ns, name),
        columns: cols
            .iter()
            .enumerate()
            .map(|(i, (n, t))| Column {
                name: n.to_string(),
                sql_type: t.clone(),
                key: i == 0,
                missing: None,
            })
            .collect(),
    })
}

/// `public.orders(id bigint primary key, qty int, price numeric(10,2), email text,
/// status status_enum, placed date, doc jsonb)`, as `tests/malformed/README.md` declares it.
pub fn orders() -> Arc<TableSchema> {
    table(
        "public",
        "orders",
        &[
            ("id", SqlType::Int64),
            ("qty", SqlType::Int32),
            (
                "price",
                SqlType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            ("email", SqlType::Text),
            ("status", SqlType::Enum("public.status_enum".into())),
            ("placed", SqlType::Date),
            ("doc", SqlType::Jsonb),
        ],
    )
}
