//! The event contract: Sluice's key and value schemas have Debezium's documented envelope, so a
//! consumer written for Debezium reads Sluice topics unchanged.
//!
//! Debezium's envelope (Debezium 2.x/3.x, `io.debezium.data.Envelope` and the connectors'
//! `SourceInfoStructMaker`s) as its documentation describes it:
//! - value: `before`, `after` (optional row records), `source` (connector-specific), `op`,
//!   `ts_ms`, `ts_us`, `ts_ns` (optional longs), `transaction` (optional `event.block`);
//! - key: a record of the primary-key columns, named `<prefix>.<schema>.<table>.Key`;
//! - source, common to every connector: `version`, `connector`, `name`, `ts_ms`, `snapshot`,
//!   `db`, `sequence`, `ts_us`, `ts_ns`; PostgreSQL adds `schema`, `table`, `txId`, `lsn`,
//!   `xmin`; MySQL adds `table`, `server_id`, `gtid`, `file`, `pos`, `row`, `thread`, `query`.

use std::sync::Arc;

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::types::Value;
use serde_json::{json, Value as Json};
use sluice_schemas::avro::{unframe, Connector, EnvelopeCodec};
use sluice_schemas::event::{BinlogSource, SourceInfo, TxInfo};
use sluice_schemas::{ChangeEvent, Column, Datum, Op, Position, SqlType, TableId, TableSchema};

fn column(name: &str, sql_type: SqlType, key: bool) -> Column {
    Column {
        name: name.into(),
        sql_type,
        key,
        missing: None,
    }
}

/// The sample table of the contract and of `schemas/avro/example.*.avsc`.
fn orders(namespace: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new(namespace, "orders"),
        columns: vec![
            column("id", SqlType::Int32, true),
            column("customer", SqlType::Text, false),
            column(
                "total",
                SqlType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                false,
            ),
            column("placed", SqlType::Date, false),
            column("created", SqlType::Timestamp, false),
            column("ref", SqlType::Uuid, false),
            column("doc", SqlType::Jsonb, false),
        ],
    })
}

fn row() -> Vec<Datum> {
    vec![
        Datum::Int(7),
        Datum::String("Ada".into()),
        Datum::Decimal("12.50".into()),
        Datum::Date(19_700),
        Datum::TimestampMicros(1_700_000_000_123_456),
        Datum::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        Datum::String(r#"{"a": 1}"#.into()),
    ]
}

fn event(table: Arc<TableSchema>, connector: Connector) -> ChangeEvent {
    ChangeEvent {
        row: sluice_schemas::RowChange {
            table,
            op: Op::Update,
            before: Some(row()),
            after: Some(row()),
        },
        source: SourceInfo {
            name: Arc::from("dbserver1"),
            db: Arc::from("shop"),
            ts_us: 1_700_000_000_654_321,
            snapshot: false,
            tx_id: Some(555),
            lsn: Some(24_023_128),
            sequence: Some(r#"["24023000","24023128"]"#.into()),
            binlog: (connector == Connector::Mysql).then(|| BinlogSource {
                server_id: 223_344,
                gtid: Some(Arc::from("0-1-42")),
                file: Arc::from("mysql-bin.000003"),
                pos: 154,
                row: 0,
            }),
        },
        transaction: Some(TxInfo {
            id: Arc::from("555:24023128"),
            total_order: 1,
            data_collection_order: 1,
        }),
        position: Position::postgres(24_023_128, 0),
    }
}

fn record(schema: &Schema) -> &RecordSchema {
    match schema {
        Schema::Record(r) => r,
        other => panic!("not a record: {other:?}"),
    }
}

/// `(name, canonical type)` of a record's fields, where optional fields read `?type`.
fn shape(r: &RecordSchema) -> Vec<(String, String)> {
    r.fields
        .iter()
        .map(|f| {
            let ty = match &f.schema {
                Schema::Union(u) if u.variants().len() == 2 && u.variants()[0] == Schema::Null => {
                    format!("?{}", kind(&u.variants()[1]))
                }
                Schema::Union(u) if u.variants().len() == 2 && u.variants()[1] == Schema::Null => {
                    format!("{}?", kind(&u.variants()[0]))
                }
                s => kind(s),
            };
            (f.name.clone(), ty)
        })
        .collect()
}

fn kind(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Ref { name } => format!("record {}", name.fullname(None)),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const COMMON_SOURCE: [(&str, &str); 9] = [
    ("version", "string"),
    ("connector", "string"),
    ("name", "string"),
    ("ts_ms", "long"),
    ("snapshot", "string?"),
    ("db", "string"),
    ("sequence", "?string"),
    ("ts_us", "?long"),
    ("ts_ns", "?long"),
];

#[test]
fn value_schema_is_debeziums_envelope() {
    for (connector, source_name, own) in [
        (
            Connector::Postgres,
            "io.debezium.connector.postgresql.Source",
            vec![
                ("schema", "string"),
                ("table", "string"),
                ("txId", "?long"),
                ("lsn", "?long"),
                ("xmin", "?long"),
            ],
        ),
        (
            Connector::Mysql,
            "io.debezium.connector.mysql.Source",
            vec![
                ("table", "?string"),
                ("server_id", "long"),
                ("gtid", "?string"),
                ("file", "string"),
                ("pos", "long"),
                ("row", "int"),
                ("thread", "?long"),
                ("query", "?string"),
            ],
        ),
    ] {
        let codec = EnvelopeCodec::new("dbserver1", "pg", connector, orders("public")).unwrap();
        let schema = Schema::parse_str(&codec.value_schema_json).unwrap();
        let envelope = record(&schema);
        assert_eq!(
            envelope.name.fullname(None),
            "dbserver1.public.orders.Envelope"
        );
        assert_eq!(
            shape(envelope),
            owned(&[
                ("before", "?record dbserver1.public.orders.Value"),
                ("after", "?record dbserver1.public.orders.Value"),
                ("source", &format!("record {source_name}")),
                ("op", "string"),
                ("ts_ms", "?long"),
                ("ts_us", "?long"),
                ("ts_ns", "?long"),
                ("transaction", "?record event.block"),
                // Sluice's one addition: readers with Debezium's schema skip it.
                ("sluice_unchanged", "array"),
            ]),
            "{connector:?}"
        );
        // Every field Debezium readers do not know has a default, and every optional field
        // defaults to null as Debezium's converter writes it.
        for f in &envelope.fields {
            if matches!(f.schema, Schema::Union(_)) || f.name == "sluice_unchanged" {
                assert!(f.default.is_some(), "{} has no default", f.name);
            }
        }
        let source = envelope.fields.iter().find(|f| f.name == "source").unwrap();
        let mut expected = owned(&COMMON_SOURCE);
        expected.extend(owned(&own));
        assert_eq!(shape(record(&source.schema)), expected, "{connector:?}");
        let tx = envelope
            .fields
            .iter()
            .find(|f| f.name == "transaction")
            .unwrap();
        let Schema::Union(u) = &tx.schema else {
            panic!()
        };
        assert_eq!(
            shape(record(&u.variants()[1])),
            owned(&[
                ("id", "string"),
                ("total_order", "long"),
                ("data_collection_order", "long")
            ])
        );
        // The row record: key columns required, others optional, Debezium's semantic names.
        let before = envelope.fields.iter().find(|f| f.name == "before").unwrap();
        let Schema::Union(u) = &before.schema else {
            panic!()
        };
        let value = record(&u.variants()[1]);
        assert_eq!(
            shape(value),
            owned(&[
                ("id", "int"),
                ("customer", "?string"),
                ("total", "?decimal"),
                ("placed", "?date"),
                ("created", "?timestampmicros"),
                ("ref", "?uuid"),
                ("doc", "?string"),
            ])
        );
        let json: Json = serde_json::from_str(&codec.value_schema_json).unwrap();
        let value_json = &json["fields"][0]["type"][1];
        let connect_name = |i: usize| value_json["fields"][i]["type"][1]["connect.name"].clone();
        assert_eq!(connect_name(2), "org.apache.kafka.connect.data.Decimal");
        assert_eq!(connect_name(3), "io.debezium.time.Date");
        assert_eq!(connect_name(4), "io.debezium.time.MicroTimestamp");
        assert_eq!(connect_name(5), "io.debezium.data.Uuid");
        assert_eq!(connect_name(6), "io.debezium.data.Json");
        assert_eq!(
            json["connect.name"], "dbserver1.public.orders.Envelope",
            "Kafka Connect's AvroConverter reads the record name from connect.name"
        );
    }
}

#[test]
fn key_schema_is_the_primary_key_record() {
    let codec =
        EnvelopeCodec::new("dbserver1", "pg", Connector::Postgres, orders("public")).unwrap();
    let schema = Schema::parse_str(&codec.key_schema_json).unwrap();
    let key = record(&schema);
    assert_eq!(key.name.fullname(None), "dbserver1.public.orders.Key");
    assert_eq!(shape(key), owned(&[("id", "int")]));
}

/// Debezium 2.x's value schema for `public.orders` as its PostgreSQL connector and Confluent's
/// AvroConverter publish it (topic prefix `dbserver1`): a consumer generated from it must
/// read Sluice's events by Avro schema resolution.
fn debezium_postgres_value_schema() -> Json {
    let optional = |ty: Json| json!(["null", ty]);
    let field = |name: &str, ty: Json| json!({"name": name, "type": ty, "default": null});
    json!({
        "type": "record", "name": "Envelope", "namespace": "dbserver1.public.orders",
        "connect.name": "dbserver1.public.orders.Envelope",
        "fields": [
            {"name": "before", "default": null, "type": ["null", {
                "type": "record", "name": "Value", "connect.name": "dbserver1.public.orders.Value",
                "fields": [
                    {"name": "id", "type": "int"},
                    field("customer", optional(json!("string"))),
                    field("total", optional(json!({"type": "bytes", "scale": 2, "precision": 10,
                        "connect.version": 1, "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
                        "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"}))),
                    field("placed", optional(json!({"type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"}))),
                    field("created", optional(json!({"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"}))),
                    field("ref", optional(json!({"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Uuid"}))),
                    field("doc", optional(json!({"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Json"})))
                ]
            }]},
            field("after", optional(json!("Value"))),
            {"name": "source", "type": {
                "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
                "connect.name": "io.debezium.connector.postgresql.Source",
                "fields": [
                    {"name": "version", "type": "string"},
                    {"name": "connector", "type": "string"},
                    {"name": "name", "type": "string"},
                    {"name": "ts_ms", "type": "long"},
                    {"name": "snapshot", "default": "false", "type": [{"type": "string", "connect.version": 1,
                        "connect.parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
                        "connect.default": "false", "connect.name": "io.debezium.data.Enum"}, "null"]},
                    {"name": "db", "type": "string"},
                    field("sequence", optional(json!("string"))),
                    field("ts_us", optional(json!("long"))),
                    field("ts_ns", optional(json!("long"))),
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    field("txId", optional(json!("long"))),
                    field("lsn", optional(json!("long"))),
                    field("xmin", optional(json!("long")))
                ]
            }},
            field("transaction", optional(json!({
                "type": "record", "name": "block", "namespace": "event", "connect.name": "event.block",
                "connect.version": 1,
                "fields": [
                    {"name": "id", "type": "string"},
                    {"name": "total_order", "type": "long"},
                    {"name": "data_collection_order", "type": "long"}
                ]
            }))),
            {"name": "op", "type": "string"},
            field("ts_ms", optional(json!("long"))),
            field("ts_us", optional(json!("long"))),
            field("ts_ns", optional(json!("long")))
        ]
    })
}

fn strip_logical_types(json: &mut Json, which: &[&str]) {
    match json {
        Json::Object(map) => {
            if map
                .get("logicalType")
                .and_then(Json::as_str)
                .is_some_and(|t| which.contains(&t))
            {
                map.remove("logicalType");
            }
            map.values_mut().for_each(|v| strip_logical_types(v, which));
        }
        Json::Array(items) => items.iter_mut().for_each(|v| strip_logical_types(v, which)),
        _ => {}
    }
}

fn get<'a>(fields: &'a [(String, Value)], name: &str) -> &'a Value {
    &fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .1
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => inner,
        v => v,
    }
}

#[test]
fn a_consumer_built_on_debeziums_schema_reads_sluice_events() {
    let codec =
        EnvelopeCodec::new("dbserver1", "pg", Connector::Postgres, orders("public")).unwrap();
    let bytes = codec
        .encode_value(
            &event(orders("public"), Connector::Postgres),
            1_700_000_001_000_000,
            &codec.single_object_headers().1,
        )
        .unwrap();
    let (_, mut datum) = unframe(&bytes).unwrap();
    // A logical type annotates its underlying type and does not change the encoding, so Avro
    // readers resolve by the underlying type (Java's does). apache-avro 0.21 refuses to resolve
    // `date` against plain `int`, and rejects any bytes decimal shorter than its precision
    // could need, so it is given both schemas without those annotations: the bytes read are
    // still the bytes Sluice wrote, and the decimal's are checked below.
    let mut writer_json: Json = serde_json::from_str(&codec.value_schema_json).unwrap();
    strip_logical_types(
        &mut writer_json,
        &["date", "timestamp-micros", "uuid", "decimal"],
    );
    let writer = Schema::parse_str(&writer_json.to_string()).unwrap();
    let mut reader_json = debezium_postgres_value_schema();
    strip_logical_types(&mut reader_json, &["decimal"]);
    let reader = Schema::parse_str(&reader_json.to_string()).unwrap();
    let value = apache_avro::from_avro_datum(&writer, &mut datum, Some(&reader))
        .expect("Debezium's reader schema resolves Sluice's writer schema");
    let Value::Record(fields) = value else {
        panic!("{value:?}")
    };
    assert_eq!(
        fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "before",
            "after",
            "source",
            "transaction",
            "op",
            "ts_ms",
            "ts_us",
            "ts_ns"
        ],
        "the reader sees exactly Debezium's fields"
    );
    assert_eq!(get(&fields, "op"), &Value::String("u".into()));
    assert_eq!(
        unwrap_union(get(&fields, "ts_ms")),
        &Value::Long(1_700_000_001_000)
    );
    let Value::Record(after) = unwrap_union(get(&fields, "after")) else {
        panic!()
    };
    assert_eq!(get(after, "id"), &Value::Int(7));
    assert_eq!(
        unwrap_union(get(after, "customer")),
        &Value::String("Ada".into())
    );
    // Debezium's own Date and MicroTimestamp are plain int/long with a connect.name: the
    // values read are the same numbers Debezium would have written.
    // 12.50 at scale 2: the unscaled 1250 as big-endian two's complement.
    assert_eq!(
        unwrap_union(get(after, "total")),
        &Value::Bytes(vec![0x04, 0xE2])
    );
    assert_eq!(unwrap_union(get(after, "placed")), &Value::Int(19_700));
    assert_eq!(
        unwrap_union(get(after, "created")),
        &Value::Long(1_700_000_000_123_456)
    );
    assert_eq!(
        unwrap_union(get(after, "ref")),
        &Value::String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
    );
    let Value::Record(source) = get(&fields, "source") else {
        panic!()
    };
    assert_eq!(
        get(source, "connector"),
        &Value::String("postgresql".into())
    );
    assert_eq!(get(source, "ts_ms"), &Value::Long(1_700_000_000_654));
    assert_eq!(
        unwrap_union(get(source, "ts_us")),
        &Value::Long(1_700_000_000_654_321)
    );
    assert_eq!(unwrap_union(get(source, "lsn")), &Value::Long(24_023_128));
    assert_eq!(get(source, "table"), &Value::String("orders".into()));
}

/// `schemas/avro/example.*.avsc` show the whole envelope of the sample table as Sluice
/// generates it; they must stay what the code generates. `SLUICE_UPDATE_GOLDEN=1` rewrites them.
#[test]
fn example_avsc_files_are_what_the_code_generates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    for (connector, ns) in [(Connector::Postgres, "public"), (Connector::Mysql, "shop")] {
        let codec = EnvelopeCodec::new("sluice", "src", connector, orders(ns)).unwrap();
        for (suffix, generated) in [
            ("key", &codec.key_schema_json),
            ("value", &codec.value_schema_json),
        ] {
            let path = dir.join(format!(
                "example.{}.sluice.{ns}.orders-{suffix}.avsc",
                connector.name()
            ));
            let generated: Json = serde_json::from_str(generated).unwrap();
            if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
                std::fs::write(
                    &path,
                    serde_json::to_string_pretty(&generated).unwrap() + "\n",
                )
                .unwrap();
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let on_disk: Json = serde_json::from_str(&text).unwrap();
            assert_eq!(
                on_disk,
                generated,
                "{} differs from the generated schema; rerun with SLUICE_UPDATE_GOLDEN=1 if the change is intended",
                path.display()
            );
        }
    }
}

#[test]
fn mysql_events_fill_debeziums_binlog_fields() {
    let table = orders("shop");
    let codec = EnvelopeCodec::new("sluice", "maria", Connector::Mysql, table.clone()).unwrap();
    let bytes = codec
        .encode_value(
            &event(table, Connector::Mysql),
            1_700_000_001_000_000,
            &codec.single_object_headers().1,
        )
        .unwrap();
    let (_, mut datum) = unframe(&bytes).unwrap();
    let writer = Schema::parse_str(&codec.value_schema_json).unwrap();
    let Value::Record(fields) = apache_avro::from_avro_datum(&writer, &mut datum, None).unwrap()
    else {
        panic!()
    };
    let Value::Record(source) = get(&fields, "source") else {
        panic!()
    };
    assert_eq!(get(source, "connector"), &Value::String("mysql".into()));
    assert_eq!(get(source, "server_id"), &Value::Long(223_344));
    assert_eq!(
        get(source, "file"),
        &Value::String("mysql-bin.000003".into())
    );
    assert_eq!(get(source, "pos"), &Value::Long(154));
    assert_eq!(
        unwrap_union(get(source, "gtid")),
        &Value::String("0-1-42".into())
    );
    assert_eq!(
        unwrap_union(get(source, "table")),
        &Value::String("orders".into())
    );
}
