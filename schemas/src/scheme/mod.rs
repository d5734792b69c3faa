//! Mapping schemes: how an engineer says what a source table becomes in a sink.
//!
//! A scheme is an Avro schema of the *target* record — a reader schema — with `sluice.`
//! attributes (Avro allows extra attributes, so a scheme stays a valid `.avsc`). Avro's
//! resolution rules do most of the work (see [`crate::resolve`]): a field reads the source
//! column of its name or of one of its `aliases` (renames), columns without a field are dropped,
//! a field without a column takes its `default`, and numeric widening works. The attributes
//! add the rest:
//!
//! | on | attribute | meaning |
//! |---|---|---|
//! | record | `sluice.source` | the source table, `schema.table` (required) |
//! | record | `sluice.sink` | the sink (a key of `[sinks]`) the scheme is for; default: any |
//! | record | `sluice.table` | the target table, `schema.table` or `table`; default: the source's |
//! | record | `sluice.key` | the target key, field names; default: the fields of the source's key columns |
//! | record | `sluice.filter` | a CEL condition on the row; rows that fail it are not in the target |
//! | field | `sluice.expr` | a CEL expression computing the field (see [`expr`]) |
//! | field | `sluice.mask` | `"redact"`, `"sha256"`, `"hmac-sha256"` (key in `SLUICE_SCHEMES_HMAC_KEY`), `{"keep_last": n}`, `{"keep_first": n}` |
//! | field | `sluice.column` | the target column's name, when it is not the field's name |
//! | field | `sluice.type` | the target column's SQL type (`sluice.type` names, TYPES.md) |
//!
//! [`Scheme::parse`] checks a file on its own; [`Scheme::compile`] checks it against a writer
//! schema (a version of the source table) and gives the [`Mapping`] the router applies. Every
//! error is a [`SchemeError`]: the file, the field, what is wrong and how to fix it.

mod compile;
pub mod expr;
mod mask;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value as Json};

pub use compile::Mapping;
pub use expr::Expr;
pub use mask::{Mask, HMAC_KEY_ENV};

use crate::resolve::{default_datum, AvroType};
use crate::table::{SqlType, TableId};

/// One problem with a scheme, located and with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeError {
    pub file: String,
    /// `record`, `field \`qty\``, `"sluice.filter"`, …
    pub at: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for SchemeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}\n  fix: {}",
            self.file, self.at, self.message, self.fix
        )
    }
}

impl std::error::Error for SchemeError {}

/// Every problem found in one check; displayed one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeErrors(pub Vec<SchemeError>);

impl fmt::Display for SchemeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("\n"))
    }
}

impl std::error::Error for SchemeErrors {}

/// A field of the target record.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    /// `sluice.column`: the target column's name if not the field's.
    pub column: Option<String>,
    pub ty: AvroType,
    pub aliases: Vec<String>,
    pub default: Option<Json>,
    pub expr: Option<Arc<Expr>>,
    pub mask: Option<Mask>,
    /// `sluice.type`: the target column's type, when given.
    pub sql: Option<SqlType>,
}

impl Field {
    /// The target column's name.
    pub fn column_name(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}

/// A parsed scheme file.
#[derive(Debug, Clone)]
pub struct Scheme {
    pub file: PathBuf,
    pub source: TableId,
    pub sink: Option<String>,
    /// `sluice.table` as written: `schema.table` or `table`.
    pub table: Option<String>,
    pub key: Option<Vec<String>>,
    pub filter: Option<Arc<Expr>>,
    pub fields: Vec<Field>,
}

const RECORD_ATTRIBUTES: [&str; 5] = [
    "sluice.source",
    "sluice.sink",
    "sluice.table",
    "sluice.key",
    "sluice.filter",
];
const FIELD_ATTRIBUTES: [&str; 4] = ["sluice.expr", "sluice.mask", "sluice.column", "sluice.type"];
const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The type names a type's JSON mentions (`["null", "strin"]` → null, strin).
fn type_names(json: &Json) -> Vec<String> {
    match json {
        Json::String(s) => vec![s.clone()],
        Json::Array(items) => items.iter().flat_map(type_names).collect(),
        Json::Object(o) => o.get("type").map(type_names).unwrap_or_default(),
        _ => Vec::new(),
    }
}

const AVRO_TYPES: &str = "null, boolean, int, long, float, double, bytes, string, an array, a \
    union with \"null\", or a logical type (decimal, date, time-micros, timestamp-micros, uuid)";

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `known` to `name`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Whether `name` is a valid Avro name.
fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Errors {
    file: String,
    list: Vec<SchemeError>,
}

impl Errors {
    fn push(&mut self, at: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(SchemeError {
            file: self.file.clone(),
            at: at.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }
}

fn field_at(name: &str) -> String {
    format!("field `{name}`")
}

impl Scheme {
    /// Reads and parses a scheme file.
    pub fn load(path: &Path) -> Result<Scheme, SchemeErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SchemeErrors(vec![SchemeError {
                file: path.display().to_string(),
                at: "file".into(),
                message: format!("cannot read it: {e}"),
                fix: "check the path and its permissions".into(),
            }])
        })?;
        Scheme::parse(path, &text)
    }

    /// Parses a scheme's text; `path` names it in errors. Reports every problem found.
    pub fn parse(path: &Path, text: &str) -> Result<Scheme, SchemeErrors> {
        let mut errors = Errors {
            file: path.display().to_string(),
            list: Vec::new(),
        };
        let json: Json = match serde_json::from_str(text) {
            Ok(j) => j,
            Err(e) => {
                let what = e.to_string();
                let what = what
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                errors.push(
                    format!("line {} column {}", e.line(), e.column()),
                    format!("not valid JSON: {what}"),
                    "a scheme is an Avro schema in JSON; fix the syntax at that place",
                );
                return Err(SchemeErrors(errors.list));
            }
        };
        let Some(record) = json.as_object() else {
            errors.push(
                "record",
                "a scheme must be a JSON object (an Avro record schema)",
                r#"start from `sluice schemes generate`, or write {"type": "record", "name": …, "fields": […]}"#,
            );
            return Err(SchemeErrors(errors.list));
        };
        let scheme = parse_record(record, path, &mut errors);
        if !errors.list.is_empty() {
            return Err(SchemeErrors(errors.list));
        }
        let scheme = scheme.expect("no errors means a scheme");
        // Last, Avro's own verdict: the scheme must be a valid Avro schema as a whole.
        if let Err(e) = apache_avro::Schema::parse_str(text) {
            errors.push(
                "record",
                format!("not a valid Avro schema: {e}"),
                "correct the schema so that Avro tools accept it",
            );
            return Err(SchemeErrors(errors.list));
        }
        Ok(scheme)
    }

    /// The file's name for messages.
    pub fn file_name(&self) -> String {
        self.file.display().to_string()
    }
}

fn string_attr(
    obj: &Map<String, Json>,
    key: &str,
    at: &str,
    errors: &mut Errors,
) -> Option<String> {
    match obj.get(key) {
        None => None,
        Some(Json::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(other) => {
            errors.push(
                at,
                format!("\"{key}\" must be a non-empty string, not {other}"),
                format!("write \"{key}\": \"…\""),
            );
            None
        }
    }
}

fn parse_record(record: &Map<String, Json>, path: &Path, errors: &mut Errors) -> Option<Scheme> {
    if record.get("type") != Some(&Json::String("record".into())) {
        errors.push(
            "record",
            format!(
                "the top-level \"type\" is {}, not \"record\"",
                record
                    .get("type")
                    .map_or("missing".to_string(), ToString::to_string)
            ),
            "a scheme describes the target row: make it {\"type\": \"record\", …}",
        );
    }
    match record.get("name") {
        Some(Json::String(n)) if is_avro_name(n) => {}
        Some(other) => errors.push(
            "record",
            format!("the record name {other} is not a valid Avro name"),
            "use letters, digits and '_', not starting with a digit (e.g. \"orders\")",
        ),
        None => errors.push(
            "record",
            "the record has no \"name\"",
            "add \"name\": \"<target table>\" (any valid Avro name)",
        ),
    }
    for key in record.keys().filter(|k| k.starts_with("sluice")) {
        if RECORD_ATTRIBUTES.contains(&key.as_str()) {
            continue;
        }
        if FIELD_ATTRIBUTES.contains(&key.as_str()) {
            errors.push(
                "record",
                format!("\"{key}\" belongs on a field, not on the record"),
                format!("move \"{key}\" into the field it is for"),
            );
        } else {
            let fix = match did_you_mean(key, RECORD_ATTRIBUTES) {
                Some(k) => format!("did you mean \"{k}\"?"),
                None => format!(
                    "remove it; the record's attributes are {}",
                    RECORD_ATTRIBUTES.join(", ")
                ),
            };
            errors.push("record", format!("unknown attribute \"{key}\""), fix);
        }
    }
    let source = match string_attr(record, "sluice.source", "record", errors) {
        None if !record.contains_key("sluice.source") => {
            errors.push(
                "record",
                "\"sluice.source\" is missing: a scheme must say which source table it maps",
                "add \"sluice.source\": \"<schema>.<table>\" (e.g. \"public.orders\")",
            );
            None
        }
        None => None,
        Some(s) => match TableId::parse(&s) {
            Some(t) => Some(t),
            None => {
                errors.push(
                    "\"sluice.source\"",
                    format!("\"{s}\" is not a table name of the form schema.table"),
                    "write the source table as \"<schema>.<table>\" (MySQL: \"<database>.<table>\")",
                );
                None
            }
        },
    };
    let sink = string_attr(record, "sluice.sink", "\"sluice.sink\"", errors);
    let table = string_attr(record, "sluice.table", "\"sluice.table\"", errors);
    if let Some(t) = &table {
        if t.split('.').count() > 2 || t.split('.').any(str::is_empty) {
            errors.push(
                "\"sluice.table\"",
                format!("\"{t}\" is not a table name"),
                "write \"<schema>.<table>\" or just \"<table>\" (then the source's schema is used)",
            );
        }
    }
    let filter = string_attr(record, "sluice.filter", "\"sluice.filter\"", errors).and_then(|f| {
        match Expr::compile(&f) {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                errors.push(
                    "\"sluice.filter\"",
                    format!("the filter does not compile: {e}"),
                    "write a CEL condition over the row, e.g. \"row.status != 'test'\"",
                );
                None
            }
        }
    });
    let fields = match record.get("fields") {
        Some(Json::Array(fields)) if !fields.is_empty() => fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| parse_field(i, f, errors))
            .collect::<Vec<_>>(),
        Some(Json::Array(_)) => {
            errors.push(
                "record",
                "\"fields\" is empty: the target table would have no columns",
                "list the target's columns as fields",
            );
            Vec::new()
        }
        _ => {
            errors.push(
                "record",
                "\"fields\" is missing or not an array",
                "add \"fields\": [{\"name\": …, \"type\": …}, …]",
            );
            Vec::new()
        }
    };
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name == f.name) {
            errors.push(
                field_at(&f.name),
                "the name is used by an earlier field too",
                "give every field its own name",
            );
        } else if fields[..i]
            .iter()
            .any(|g| g.column_name() == f.column_name())
        {
            errors.push(
                field_at(&f.name),
                format!(
                    "its column `{}` is written by an earlier field too",
                    f.column_name()
                ),
                "give every field its own target column (\"sluice.column\")",
            );
        }
    }
    let key = match record.get("sluice.key") {
        None => None,
        Some(Json::Array(names)) if !names.is_empty() && names.iter().all(Json::is_string) => {
            let names: Vec<String> = names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            for n in &names {
                match fields.iter().find(|f| &f.name == n) {
                    None => {
                        let fix = match did_you_mean(n, fields.iter().map(|f| f.name.as_str())) {
                            Some(k) => format!("did you mean \"{k}\"?"),
                            None => format!(
                                "name fields of this scheme: {}",
                                fields
                                    .iter()
                                    .map(|f| f.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        errors.push(
                            "\"sluice.key\"",
                            format!("`{n}` is not a field of the scheme"),
                            fix,
                        );
                    }
                    Some(f) if f.ty.accepts_null() => errors.push(
                        "\"sluice.key\"",
                        format!(
                            "key field `{n}` may be null ({}), and a key cannot be",
                            f.ty
                        ),
                        format!("make `{n}`'s type non-null, or choose another key"),
                    ),
                    Some(_) => {}
                }
            }
            Some(names)
        }
        Some(other) => {
            errors.push(
                "\"sluice.key\"",
                format!("must be a non-empty array of field names, not {other}"),
                "write \"sluice.key\": [\"id\"]",
            );
            None
        }
    };
    Some(Scheme {
        file: path.to_path_buf(),
        source: source?,
        sink,
        table,
        key,
        filter,
        fields,
    })
}

fn parse_field(index: usize, json: &Json, errors: &mut Errors) -> Option<Field> {
    let Some(obj) = json.as_object() else {
        errors.push(
            format!("field #{}", index + 1),
            format!("a field must be an object, not {json}"),
            "write {\"name\": …, \"type\": …}",
        );
        return None;
    };
    let name = match obj.get("name") {
        Some(Json::String(n)) if is_avro_name(n) => n.clone(),
        Some(Json::String(n)) => {
            errors.push(
                field_at(n),
                "the name is not a valid Avro name",
                format!(
                    "use letters, digits and '_' (e.g. \"{}\"), and put the exact column name in \"sluice.column\"",
                    crate::table::avro_name(n)
                ),
            );
            return None;
        }
        _ => {
            errors.push(
                format!("field #{}", index + 1),
                "the field has no \"name\"",
                "add \"name\": \"<column>\"",
            );
            return None;
        }
    };
    let at = field_at(&name);
    for key in obj.keys().filter(|k| k.starts_with("sluice")) {
        if FIELD_ATTRIBUTES.contains(&key.as_str()) {
            continue;
        }
        if RECORD_ATTRIBUTES.contains(&key.as_str()) {
            errors.push(
                at.clone(),
                format!("\"{key}\" belongs on the record, not on a field"),
                format!("move \"{key}\" to the top level of the scheme"),
            );
        } else {
            let fix = match did_you_mean(key, FIELD_ATTRIBUTES) {
                Some(k) => format!("did you mean \"{k}\"?"),
                None => format!(
                    "remove it; a field's attributes are {}",
                    FIELD_ATTRIBUTES.join(", ")
                ),
            };
            errors.push(at.clone(), format!("unknown attribute \"{key}\""), fix);
        }
    }
    let ty = match obj.get("type") {
        None => {
            errors.push(
                at.clone(),
                "the field has no \"type\"",
                format!("add \"type\": one of {AVRO_TYPES}"),
            );
            return None;
        }
        Some(t) => match AvroType::from_json(t) {
            Ok(AvroType::Unsupported(kind)) => {
                errors.push(
                    at.clone(),
                    format!("a {kind} type has no column to go into"),
                    "a scheme's fields are the target's columns: use a scalar, array or logical type, and compute nested values with \"sluice.expr\"",
                );
                return None;
            }
            Ok(t) => t,
            Err(e) => {
                let fix = match type_names(obj.get("type").unwrap_or(&Json::Null))
                    .into_iter()
                    .find_map(|s| did_you_mean(&s, PRIMITIVES).filter(|k| *k != s))
                {
                    Some(k) => format!("did you mean \"{k}\"?"),
                    None => format!("use {AVRO_TYPES}"),
                };
                errors.push(at.clone(), format!("invalid type: {e}"), fix);
                return None;
            }
        },
    };
    if let AvroType::Union(branches) = &ty {
        if branches
            .iter()
            .any(|b| matches!(b, AvroType::Unsupported(_)))
        {
            errors.push(
                at.clone(),
                "a union branch has no column type",
                "use [\"null\", <scalar type>]",
            );
        }
    }
    let default = obj.get("default").cloned();
    if let Some(d) = &default {
        if let Err(e) = default_datum(d, &ty) {
            if matches!(&ty, AvroType::Union(b) if b.len() > 1 && b[0] == AvroType::Null)
                && !d.is_null()
            {
                errors.push(
                    at.clone(),
                    format!("the default {d} is not a value of the union's first type, null"),
                    "a union's default must be a value of its first type: put that type first \
                     (e.g. [\"string\", \"null\"]) or make the default null",
                );
            } else {
                errors.push(
                    at.clone(),
                    format!("invalid default: {e}"),
                    format!("give a default that is a {ty}"),
                );
            }
        }
    }
    let aliases = match obj.get("aliases") {
        None => Vec::new(),
        Some(Json::Array(a)) if a.iter().all(Json::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            errors.push(
                at.clone(),
                format!("\"aliases\" must be an array of names, not {other}"),
                "write \"aliases\": [\"old_name\"]",
            );
            Vec::new()
        }
    };
    let expr =
        string_attr(obj, "sluice.expr", &at, errors).and_then(|src| match Expr::compile(&src) {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                errors.push(
                    at.clone(),
                    format!("\"sluice.expr\" does not compile: {e}"),
                    "write a CEL expression over the row, e.g. \"row.qty * 2\"",
                );
                None
            }
        });
    if expr.is_some() && !aliases.is_empty() {
        errors.push(
            at.clone(),
            "the field is computed by \"sluice.expr\" and also reads a column through \"aliases\"",
            "keep one: the expression (it can read any column as row.<name>) or the aliases",
        );
    }
    let mask = obj.get("sluice.mask").and_then(|m| match Mask::parse(m) {
        Ok(mask) => Some(mask),
        Err(e) => {
            errors.push(
                at.clone(),
                format!("invalid \"sluice.mask\": {e}"),
                Mask::CHOICES,
            );
            None
        }
    });
    if let Some(mask) = &mask {
        if let Err((message, fix)) = mask.fits(&ty, default.as_ref()) {
            errors.push(at.clone(), message, fix);
        }
    }
    let column = string_attr(obj, "sluice.column", &at, errors);
    let sql = string_attr(obj, "sluice.type", &at, errors).and_then(|t| match SqlType::parse(&t) {
        Some(sql) => {
            let carried = AvroType::of_sql(&sql);
            let fits = ty.non_null().iter().any(|b| {
                **b == carried
                    || (matches!(b, AvroType::String) && sql.is_text_form())
            });
            if fits {
                Some(sql)
            } else {
                errors.push(
                    at.clone(),
                    format!("\"sluice.type\": \"{t}\" holds {carried} values, and the field's type is {ty}"),
                    format!(
                        "make the field's type \"{carried}\" (or [\"null\", \"{carried}\"]), or choose a sluice.type for its values"
                    ),
                );
                None
            }
        }
        None => {
            errors.push(
                at.clone(),
                format!("\"sluice.type\": \"{t}\" is not a Sluice SQL type"),
                "use a sluice.type name from TYPES.md: int32, int64, text, decimal(12,2), timestamptz, jsonb, …",
            );
            None
        }
    });
    Some(Field {
        name,
        column,
        ty,
        aliases,
        default,
        expr,
        mask,
        sql,
    })
}

/// The identity scheme of a table: every column, as it is, into a table of the same name — the
/// starting point `sluice schemes generate` writes for engineers to edit.
pub fn identity(table: &crate::table::TableSchema, source_name: &str, sink: Option<&str>) -> Json {
    use serde_json::json;
    let names = crate::avro::field_names(&table.columns);
    let fields: Vec<Json> = table
        .columns
        .iter()
        .zip(&names)
        .map(|(c, name)| {
            let mut field = Map::new();
            field.insert("name".into(), json!(name));
            field.insert(
                "type".into(),
                AvroType::of_column(&c.sql_type, c.key).to_json(),
            );
            if !c.key {
                field.insert("default".into(), Json::Null);
            }
            if *name != c.name {
                field.insert("sluice.column".into(), json!(c.name));
            }
            Json::Object(field)
        })
        .collect();
    let mut record = Map::new();
    record.insert("type".into(), json!("record"));
    record.insert(
        "name".into(),
        json!(crate::table::avro_name(&table.id.name)),
    );
    record.insert(
        "doc".into(),
        json!(format!(
            "{} from source {source_name}, as it is. Rename a field (keeping the column's name in \
             \"aliases\"), drop one, add one with a \"default\", compute one with \"sluice.expr\", mask one \
             with \"sluice.mask\", keep rows with \"sluice.filter\"; then run `sluice schemes check`.",
            table.id
        )),
    );
    record.insert("sluice.source".into(), json!(table.id.to_string()));
    if let Some(sink) = sink {
        record.insert("sluice.sink".into(), json!(sink));
    }
    record.insert("sluice.table".into(), json!(table.id.to_string()));
    record.insert("fields".into(), Json::Array(fields));
    Json::Object(record)
}

/// The `.avsc` files of a scheme directory, sorted by name.
pub fn scheme_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the scheme directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "avsc") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

impl Scheme {
    /// The target table this scheme writes for a source table `source` (its `sluice.table`,
    /// else the source's own name).
    pub fn target_of(&self, source: &TableId) -> TableId {
        match self.table.as_deref().map(|t| t.split_once('.')) {
            None => source.clone(),
            Some(Some((ns, name))) => TableId::new(ns, name),
            Some(None) => TableId::new(
                source.namespace.clone(),
                self.table.clone().unwrap_or_default(),
            ),
        }
    }

    /// Whether the scheme is meant for `sink`.
    pub fn is_for(&self, sink: &str) -> bool {
        self.sink.as_deref().is_none_or(|s| s == sink)
    }

    /// Checks that `self` and the schemes already accepted do not write one target table from
    /// one source for one sink twice.
    pub fn conflicts_with(&self, accepted: &[Arc<Scheme>]) -> Option<SchemeError> {
        let target = self.target_of(&self.source);
        accepted
            .iter()
            .find(|other| {
                other.file != self.file
                    && other.source == self.source
                    && other.target_of(&other.source) == target
                    && (other.sink.is_none() || self.sink.is_none() || other.sink == self.sink)
            })
            .map(|other| SchemeError {
                file: self.file_name(),
                at: "record".into(),
                message: format!(
                    "{} already maps {} into {target}",
                    other.file_name(),
                    self.source
                ),
                fix: "keep one scheme per source and target table (fan a table out into several targets with different \"sluice.table\")".into(),
            })
    }
}
