//! CEL expressions of mapping schemes: computed fields (`sluice.expr`) and row filters
//! (`sluice.filter`).
//!
//! An expression sees four names:
//! - `row`: the row's columns by source column name (`row.qty`, `row["order date"]`): the
//!   after-image, or the before-image of a delete;
//! - `before`: the before-image (`null` unless the source sends one);
//! - `op`: `"c"`, `"u"`, `"d"` or `"r"`;
//! - `source`: `{"schema": …, "table": …, "ts_ms": …}` of the change.
//!
//! Values: integers are `int`, floating point `double`, **decimals `double`** (CEL has no
//! decimal; computing money in double can round — pass a decimal column through unchanged to
//! keep it exact), text and JSON `string`, binary `bytes`, dates and timestamps `timestamp`
//! (UTC), times of day `duration`, arrays `list`, UUIDs `string`. The standard library plus the
//! `strings` (`lowerAscii`, `trim`, `replace`, `split`, …) and `math` extensions are available.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};
use cel::{Context, Env, Program, Value};

use crate::event::{Datum, Op};
use crate::table::{SqlType, TableSchema};

/// The names an expression may use.
pub const NAMES: [&str; 4] = ["row", "before", "op", "source"];

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // Both are the library's own, declared once here: they cannot clash.
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::math);
        Arc::new(env)
    })
    .clone()
}

/// Which source columns an expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// These, by name (`row.x`, `row["x"]`, `before.x`).
    Columns(BTreeSet<String>),
    /// Any of them (`row` used as a whole).
    All,
}

/// A compiled expression.
pub struct Expr {
    pub source: String,
    program: Program,
    pub reads: Reads,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Parses `source`; the error is the parser's message or the unknown name.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let program = env().compile(source).map_err(|e| {
            let text = e.to_string().replace("<input>", "expression");
            // The parser lists every token it would have accepted: noise to a reader.
            let text = text
                .lines()
                .map(|l| l.split(" expecting {").next().unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n    ");
            text
        })?;
        let mut walk = Walk::default();
        walk.visit(program.expression(), &mut Vec::new());
        if let Some(name) = walk.unknown.into_iter().next() {
            return Err(format!(
                "unknown name `{name}`; an expression sees only row, before, op and source (write row.{name} for a column)"
            ));
        }
        let reads = if walk.whole_row {
            Reads::All
        } else {
            Reads::Columns(walk.columns)
        };
        Ok(Expr {
            source: source.to_string(),
            program,
            reads,
        })
    }

    /// The columns it reads that `table` lacks.
    pub fn unknown_columns(&self, table: &TableSchema) -> Vec<String> {
        match &self.reads {
            Reads::All => Vec::new(),
            Reads::Columns(cols) => cols
                .iter()
                .filter(|c| !table.columns.iter().any(|t| &t.name == *c))
                .cloned()
                .collect(),
        }
    }

    /// Evaluates against a row context.
    pub fn eval(&self, ctx: &RowContext) -> Result<Value, String> {
        let mut context = Context::with_env(env());
        context.add_variable_from_value("row", ctx.row.clone());
        context.add_variable_from_value("before", ctx.before.clone());
        context.add_variable_from_value("op", ctx.op);
        context.add_variable_from_value("source", ctx.source.clone());
        self.program.execute(&context).map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct Walk {
    columns: BTreeSet<String>,
    whole_row: bool,
    unknown: BTreeSet<String>,
}

impl Walk {
    fn visit(&mut self, e: &IdedExpr, bound: &mut Vec<String>) {
        match &e.expr {
            Node::Ident(name) => {
                if bound.contains(name) {
                } else if name == "row" || name == "before" {
                    self.whole_row = true;
                } else if !NAMES.contains(&name.as_str()) {
                    self.unknown.insert(name.clone());
                }
            }
            Node::Select(s) => match &s.operand.expr {
                Node::Ident(name)
                    if (name == "row" || name == "before") && !bound.contains(name) =>
                {
                    self.columns.insert(s.field.clone());
                }
                _ => self.visit(&s.operand, bound),
            },
            Node::Call(c) => {
                if c.func_name == cel::common::ast::operators::INDEX && c.args.len() == 2 {
                    if let (Node::Ident(name), Node::Literal(LiteralValue::String(col))) =
                        (&c.args[0].expr, &c.args[1].expr)
                    {
                        if (name == "row" || name == "before") && !bound.contains(name) {
                            self.columns.insert(col.inner().to_string());
                            return;
                        }
                    }
                }
                if let Some(t) = &c.target {
                    self.visit(t, bound);
                }
                for a in &c.args {
                    self.visit(a, bound);
                }
            }
            Node::Comprehension(c) => {
                self.visit(&c.iter_range, bound);
                let n = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.visit(part, bound);
                }
                bound.truncate(n);
            }
            Node::List(l) => l.elements.iter().for_each(|x| self.visit(x, bound)),
            Node::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.visit(&me.key, bound);
                        self.visit(&me.value, bound);
                    }
                }
            }
            Node::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.visit(&f.value, bound);
                    }
                }
            }
            Node::Literal(_) | Node::Unspecified => {}
        }
    }
}

/// What expressions see of one change.
pub struct RowContext {
    row: Value,
    before: Value,
    op: &'static str,
    source: Value,
}

impl RowContext {
    /// `row` is the image expressions read (after, or before for deletes). Columns the
    /// source did not resend (unchanged TOAST) are absent from `row`: reading one is an error
    /// that names it.
    pub fn new(
        table: &TableSchema,
        op: Op,
        row: &[Datum],
        before: Option<&[Datum]>,
        ts_ms: i64,
    ) -> RowContext {
        RowContext {
            row: image(table, row),
            before: before.map_or(Value::Null, |b| image(table, b)),
            op: op.code(),
            source: Value::from(HashMap::from([
                (
                    "schema".to_string(),
                    Value::from(table.id.namespace.clone()),
                ),
                ("table".to_string(), Value::from(table.id.name.clone())),
                ("ts_ms".to_string(), Value::Int(ts_ms)),
            ])),
        }
    }
}

fn image(table: &TableSchema, row: &[Datum]) -> Value {
    let map: HashMap<String, Value> = table
        .columns
        .iter()
        .zip(row)
        .filter(|(_, d)| **d != Datum::Unchanged)
        .map(|(c, d)| (c.name.clone(), to_cel(d)))
        .collect();
    Value::from(map)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

fn timestamp(micros: i64) -> Value {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => Value::Timestamp(t.fixed_offset()),
        // Beyond chrono's range (PostgreSQL's ±infinity and year 294276): no timestamp.
        None => Value::Null,
    }
}

/// A value as expressions see it (see the module docs).
pub fn to_cel(d: &Datum) -> Value {
    match d {
        Datum::Null | Datum::Unchanged => Value::Null,
        Datum::Bool(b) => Value::Bool(*b),
        Datum::Int(i) => Value::Int(i64::from(*i)),
        Datum::Long(i) => Value::Int(*i),
        Datum::Float(f) => Value::Float(f64::from(*f)),
        Datum::Double(f) => Value::Float(*f),
        Datum::String(s) | Datum::Uuid(s) => Value::from(s.clone()),
        Datum::Bytes(b) => Value::Bytes(Arc::new(b.clone())),
        Datum::Decimal(text) => text.parse::<f64>().map_or(Value::Null, Value::Float),
        Datum::Date(days) => timestamp(i64::from(*days).saturating_mul(MICROS_PER_DAY)),
        Datum::TimeMicros(us) => Value::Duration(chrono::Duration::microseconds(*us)),
        Datum::TimestampMicros(us) => timestamp(*us),
        Datum::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "bool",
        Value::Duration(_) => "duration",
        Value::Timestamp(_) => "timestamp",
        Value::Null => "null",
        _ => "a value of another kind",
    }
}

/// An expression's result as a value of a column of type `ty`; the error says what it was
/// and how to convert it.
pub fn from_cel(v: Value, ty: &SqlType) -> Result<Datum, String> {
    let mismatch = |v: &Value, hint: &str| {
        format!(
            "the expression gave {}, which a {} column cannot hold{hint}",
            kind(v),
            ty.canonical()
        )
    };
    Ok(match (ty, v) {
        (_, Value::Null) => Datum::Null,
        (SqlType::Bool, Value::Bool(b)) => Datum::Bool(b),
        (SqlType::Int16 | SqlType::Int32, Value::Int(i)) => {
            let limit = if *ty == SqlType::Int16 {
                i64::from(i16::MAX)
            } else {
                i64::from(i32::MAX)
            };
            if i.abs() > limit && i != -limit - 1 {
                return Err(format!("{i} is out of range for {}", ty.canonical()));
            }
            Datum::Int(i as i32)
        }
        (SqlType::Int64, Value::Int(i)) => Datum::Long(i),
        (SqlType::Int64, Value::UInt(u)) => {
            Datum::Long(i64::try_from(u).map_err(|_| format!("{u} is out of range for int64"))?)
        }
        (SqlType::Float32, Value::Float(f)) => Datum::Float(f as f32),
        (SqlType::Float32, Value::Int(i)) => Datum::Float(i as f32),
        (SqlType::Float64, Value::Float(f)) => Datum::Double(f),
        (SqlType::Float64, Value::Int(i)) => Datum::Double(i as f64),
        (SqlType::Decimal { precision, scale }, v @ (Value::Int(_) | Value::Float(_))) => {
            let text = match v {
                Value::Int(i) => format!("{i}.{}", "0".repeat(*scale as usize)),
                Value::Float(f) if f.is_finite() => format!("{f:.*}", *scale as usize),
                _ => return Err("a decimal column cannot hold NaN or infinity".into()),
            };
            let text = text.trim_end_matches('.').to_string();
            let int_part = text.trim_start_matches('-').split('.').next().unwrap_or("");
            if int_part.trim_start_matches('0').len() > (*precision - *scale) as usize {
                return Err(format!("{text} does not fit decimal({precision},{scale})"));
            }
            Datum::Decimal(text)
        }
        (SqlType::Uuid, Value::String(s)) => {
            let ok = s.len() == 36
                && s.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if !ok {
                return Err(format!("\"{s}\" is not a UUID"));
            }
            Datum::Uuid(s.to_ascii_lowercase())
        }
        (t, Value::String(s)) if t.is_text_form() => Datum::String(s.to_string()),
        (SqlType::Bytes, Value::Bytes(b)) => Datum::Bytes(b.to_vec()),
        (SqlType::Timestamp | SqlType::TimestampTz, Value::Timestamp(t)) => {
            Datum::TimestampMicros(t.timestamp_micros())
        }
        (SqlType::Date, Value::Timestamp(t)) => Datum::Date(
            i32::try_from(t.timestamp_micros().div_euclid(MICROS_PER_DAY))
                .map_err(|_| "the date is out of range".to_string())?,
        ),
        (SqlType::Time | SqlType::TimeSpan, Value::Duration(d)) => {
            Datum::TimeMicros(d.num_microseconds().ok_or("the duration is out of range")?)
        }
        (SqlType::Array(elem), Value::List(items)) => Datum::Array(
            items
                .iter()
                .map(|v| from_cel(v.clone(), elem))
                .collect::<Result<_, _>>()?,
        ),
        (t, v) => {
            let hint = match (t, &v) {
                (t, _) if t.is_text_form() => "; wrap it in string(…)",
                (SqlType::Int16 | SqlType::Int32 | SqlType::Int64, Value::Float(_)) => {
                    "; wrap it in int(…)"
                }
                (SqlType::Int16 | SqlType::Int32 | SqlType::Int64, Value::String(_)) => {
                    "; wrap it in int(…)"
                }
                (
                    SqlType::Float32 | SqlType::Float64 | SqlType::Decimal { .. },
                    Value::String(_),
                ) => "; wrap it in double(…)",
                _ => "",
            };
            return Err(mismatch(&v, hint));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Column, TableId};

    fn table() -> TableSchema {
        let col = |name: &str, sql_type| Column {
            name: name.into(),
            sql_type,
            key: name == "id",
            missing: None,
        };
        TableSchema {
            id: TableId::new("public", "orders"),
            columns: vec![
                col("id", SqlType::Int64),
                col("qty", SqlType::Int32),
                col(
                    "price",
                    SqlType::Decimal {
                        precision: 10,
                        scale: 2,
                    },
                ),
                col("email", SqlType::Text),
                col("order date", SqlType::Date),
            ],
        }
    }

    fn row() -> Vec<Datum> {
        vec![
            Datum::Long(7),
            Datum::Int(3),
            Datum::Decimal("2.50".into()),
            Datum::String("Ada@Example.com".into()),
            Datum::Date(19_723), // 2024-01-01
        ]
    }

    fn eval(src: &str, ty: SqlType) -> Result<Datum, String> {
        let e = Expr::compile(src)?;
        let t = table();
        let ctx = RowContext::new(&t, Op::Update, &row(), None, 1_700_000_000_000);
        from_cel(e.eval(&ctx)?, &ty)
    }

    #[test]
    fn expressions_compute_from_the_row() {
        assert_eq!(
            eval(
                "double(row.qty) * row.price",
                SqlType::Decimal {
                    precision: 12,
                    scale: 2
                }
            ),
            Ok(Datum::Decimal("7.50".into()))
        );
        assert_eq!(
            eval("row.email.lowerAscii()", SqlType::Text),
            Ok(Datum::String("ada@example.com".into()))
        );
        assert_eq!(
            eval("row['order date'].getFullYear()", SqlType::Int32),
            Ok(Datum::Int(2024))
        );
        assert_eq!(
            eval("op == 'u' && source.table == 'orders'", SqlType::Bool),
            Ok(Datum::Bool(true))
        );
        assert_eq!(
            eval("row.qty > 10 ? 'big' : 'small'", SqlType::Text),
            Ok(Datum::String("small".into()))
        );
        assert_eq!(
            eval("row['order date'] + duration('24h')", SqlType::Date),
            Ok(Datum::Date(19_724))
        );
    }

    #[test]
    fn results_of_the_wrong_kind_say_how_to_convert() {
        assert_eq!(
            eval("row.qty * 2", SqlType::Text),
            Err(
                "the expression gave int, which a text column cannot hold; wrap it in string(…)"
                    .into()
            )
        );
        assert_eq!(
            eval("row.price * 1.5", SqlType::Int64),
            Err(
                "the expression gave double, which a int64 column cannot hold; wrap it in int(…)"
                    .into()
            )
        );
        assert!(eval("row.id * 100000", SqlType::Int16)
            .unwrap_err()
            .contains("out of range for int16"));
    }

    #[test]
    fn compilation_reports_syntax_errors_unknown_names_and_the_columns_read() {
        let e = Expr::compile("row.qty *").unwrap_err();
        assert!(e.starts_with("ERROR: expression:1:"), "{e}");
        assert_eq!(
            Expr::compile("qty * 2").unwrap_err(),
            "unknown name `qty`; an expression sees only row, before, op and source (write row.qty for a column)"
        );
        let e = Expr::compile(
            "row.qty + row['order date'].getDate() + size(row.tags.filter(t, t == 'x'))",
        )
        .unwrap();
        assert_eq!(
            e.reads,
            Reads::Columns(["order date", "qty", "tags"].map(String::from).into())
        );
        assert_eq!(e.unknown_columns(&table()), ["tags"]);
        assert_eq!(Expr::compile("size(row) > 2").unwrap().reads, Reads::All);
    }

    #[test]
    fn a_column_the_source_did_not_resend_cannot_be_read() {
        let e = Expr::compile("size(row.email)").unwrap();
        let mut r = row();
        r[3] = Datum::Unchanged;
        let t = table();
        let err = e
            .eval(&RowContext::new(&t, Op::Update, &r, None, 0))
            .unwrap_err();
        assert!(err.contains("email"), "{err}");
    }
}
