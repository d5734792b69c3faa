//! TYPES.md's main table says, for every `sluice.type`, the Avro type, logical type and
//! semantic name its values travel as; this fails when the table and `SqlType::avro_type`
//! disagree, or when a type has no row.

use serde_json::Value as Json;
use sluice_schemas::SqlType;

/// The rows of the `sluice.type → Avro` table: (sluice.type, Avro, logical, connect.name).
fn rows() -> Vec<[String; 4]> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../TYPES.md");
    let text = std::fs::read_to_string(path).expect("TYPES.md at the repository root");
    let section = text
        .split("## `sluice.type` → Avro")
        .nth(1)
        .expect("TYPES.md has the `sluice.type` → Avro section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            [
                cells[0].clone(),
                cells[1].clone(),
                cells[2].clone(),
                cells[3].clone(),
            ]
        })
        .collect()
}

/// An example of the type a row stands for (`decimal(p,s)` → `decimal(12,3)`, …).
fn example(cell: &str) -> SqlType {
    let name = cell.trim_matches('`');
    let name = match name {
        "decimal(p,s)" => "decimal(12,3)",
        "enum:NAME" => "enum:public.mood",
        "array:T" => "array:int64",
        "other:NAME" => "other:tsvector",
        other => other,
    };
    SqlType::parse(name).unwrap_or_else(|| panic!("TYPES.md: `{name}` is not a sluice.type"))
}

/// What the code says, in the table's words.
fn described(t: &SqlType) -> [String; 3] {
    let json = t.avro_type();
    let obj = json.as_object();
    let get = |k: &str| obj.and_then(|o| o.get(k)).and_then(Json::as_str);
    let base = match (&json, get("type")) {
        (Json::String(s), _) => format!("`{s}`"),
        (_, Some("array")) => "`array` of `[null, T's Avro]`".to_string(),
        (_, Some(s)) => format!("`{s}`"),
        _ => panic!("unexpected Avro type {json}"),
    };
    let logical = match get("logicalType") {
        Some("decimal") if matches!(t, SqlType::Money) => "`decimal` (19, 2)".to_string(),
        Some("decimal") => "`decimal` (p, s)".to_string(),
        Some(l) => format!("`{l}`"),
        None => "—".into(),
    };
    let semantic = match (get("connect.name"), get("connect.type")) {
        (Some(n), _) => format!("`{n}`"),
        (None, Some(ct)) => format!("— (`connect.type` `{ct}`)"),
        (None, None) => "—".into(),
    };
    [base, logical, semantic]
}

#[test]
fn types_md_matches_the_code() {
    let rows = rows();
    assert!(rows.len() >= 20, "the table has {} rows", rows.len());
    for [ty, avro, logical, semantic] in &rows {
        let t = example(ty);
        assert_eq!(
            described(&t),
            [avro.clone(), logical.clone(), semantic.clone()],
            "TYPES.md row {ty}"
        );
    }
}

#[test]
fn every_sluice_type_has_a_row() {
    let documented: Vec<SqlType> = rows().iter().map(|r| example(&r[0])).collect();
    let kind = |t: &SqlType| -> String {
        match t {
            SqlType::Other(n) if n == "xml" => "other:xml".into(),
            t => t
                .canonical()
                .split([':', '('])
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    };
    let all = [
        SqlType::Bool,
        SqlType::Int16,
        SqlType::Int32,
        SqlType::Int64,
        SqlType::Float32,
        SqlType::Float64,
        SqlType::Decimal {
            precision: 1,
            scale: 0,
        },
        SqlType::Numeric,
        SqlType::Text,
        SqlType::Bytes,
        SqlType::Date,
        SqlType::Time,
        SqlType::TimeSpan,
        SqlType::Timestamp,
        SqlType::TimestampTz,
        SqlType::Uuid,
        SqlType::Json,
        SqlType::Jsonb,
        SqlType::Money,
        SqlType::Interval,
        SqlType::TimeTz,
        SqlType::Enum("e".into()),
        SqlType::Array(Box::new(SqlType::Text)),
        SqlType::Other("xml".into()),
        SqlType::Other("x".into()),
    ];
    for t in &all {
        // An exhaustive match: a new SqlType variant must be added to `all` (and TYPES.md).
        match t {
            SqlType::Bool
            | SqlType::Int16
            | SqlType::Int32
            | SqlType::Int64
            | SqlType::Float32
            | SqlType::Float64
            | SqlType::Decimal { .. }
            | SqlType::Numeric
            | SqlType::Text
            | SqlType::Bytes
            | SqlType::Date
            | SqlType::Time
            | SqlType::TimeSpan
            | SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::Uuid
            | SqlType::Json
            | SqlType::Jsonb
            | SqlType::Money
            | SqlType::Interval
            | SqlType::TimeTz
            | SqlType::Enum(_)
            | SqlType::Array(_)
            | SqlType::Other(_) => {}
        }
        assert!(
            documented.iter().any(|d| kind(d) == kind(t)),
            "TYPES.md has no row for {}",
            t.canonical()
        );
    }
}
