//! A scheme against one version of its source table: the plan the router applies per change.

use std::sync::Arc;

use super::expr::{from_cel, Reads, RowContext};
use super::mask::{Mask, HMAC_KEY_ENV};
use super::{did_you_mean, Errors, Expr, Scheme, SchemeError, SchemeErrors};
use crate::avro::field_names;
use crate::event::{Datum, Op, RowChange};
use crate::pgtext;
use crate::resolve::{default_datum, resolve, AvroType, Conversion};
use crate::table::{Column, SqlType, TableSchema};

/// Where a target field's value comes from.
#[derive(Debug, Clone)]
enum Input {
    /// A source column (by index), read through an Avro conversion.
    Column(usize, Conversion),
    /// The field's default: the source has no such column.
    Default(Datum),
    /// A CEL expression.
    Expr(Arc<Expr>),
}

#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    from: Input,
    mask: Option<Mask>,
    /// The type of the value before masking (its text form is what is hashed).
    value_type: SqlType,
    nullable: bool,
    /// What `redact` writes.
    redacted: Datum,
}

/// A scheme compiled against one writer schema of its source table.
#[derive(Debug)]
pub struct Mapping {
    /// The target table: its id, columns (field order) and key.
    pub target: Arc<TableSchema>,
    /// The writer schema this mapping reads.
    pub writer: Arc<TableSchema>,
    /// What is allowed but probably not meant (a field named like a column it does not read).
    pub warnings: Vec<SchemeError>,
    file: String,
    fields: Vec<FieldPlan>,
    filter: Option<Arc<Expr>>,
    hmac_key: Option<ring::hmac::Key>,
}

fn column_list(table: &TableSchema) -> String {
    table
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Scheme {
    /// Checks the scheme against `writer` (a version of its source table) and plans it. The
    /// HMAC key is needed when a field is masked with `hmac-sha256`. Reports every problem.
    pub fn compile(
        &self,
        writer: &Arc<TableSchema>,
        hmac_key: Option<&[u8]>,
    ) -> Result<Mapping, SchemeErrors> {
        let mut errors = Errors {
            file: self.file_name(),
            list: Vec::new(),
        };
        let avro_names = field_names(&writer.columns);
        let find = |name: &str| avro_names.iter().position(|n| n == name);
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut columns = Vec::with_capacity(self.fields.len());
        let mut warnings = Vec::new();
        for f in &self.fields {
            let at = format!("field `{}`", f.name);
            let (from, value_type, missing) = if let Some(expr) = &f.expr {
                for c in expr.unknown_columns(writer) {
                    let fix = match did_you_mean(&c, writer.columns.iter().map(|c| c.name.as_str()))
                    {
                        Some(k) => format!("did you mean row.{k}?"),
                        None => format!("{} has: {}", writer.id, column_list(writer)),
                    };
                    errors.push(
                        at.clone(),
                        format!(
                            "\"sluice.expr\" reads `{c}`, which {} does not have",
                            writer.id
                        ),
                        fix,
                    );
                }
                let Some(sql) = f.sql.clone().or_else(|| f.ty.sql_type()) else {
                    errors.push(
                        at.clone(),
                        format!("{} has no column type", f.ty),
                        "give the field a scalar type, or name the column type with \"sluice.type\"",
                    );
                    continue;
                };
                (Input::Expr(expr.clone()), sql, None)
            } else {
                let index = find(&f.name).or_else(|| f.aliases.iter().find_map(|a| find(a)));
                match (index, &f.default) {
                    (Some(i), _) => {
                        let col = &writer.columns[i];
                        let w_type = AvroType::of_column(&col.sql_type, col.key);
                        match resolve(&w_type, &f.ty) {
                            Ok(r) => {
                                let sql = match (&f.sql, &r.conversion) {
                                    (Some(sql), _) => sql.clone(),
                                    (None, Conversion::Same) => col.sql_type.clone(),
                                    (None, _) => match r.reader.sql_type() {
                                        Some(sql) => sql,
                                        None => {
                                            errors.push(
                                                at.clone(),
                                                format!("{} has no column type", r.reader),
                                                "use a scalar type",
                                            );
                                            continue;
                                        }
                                    },
                                };
                                let missing = match r.conversion {
                                    Conversion::Same | Conversion::Promote(_) => {
                                        col.missing.clone()
                                    }
                                    _ => None,
                                };
                                (Input::Column(i, r.conversion), sql, missing)
                            }
                            Err(e) => {
                                let fix = if w_type.accepts_null() && !f.ty.accepts_null() {
                                    format!(
                                        "make the type [\"null\", {}] with \"default\": null",
                                        quoted(&f.ty)
                                    )
                                } else {
                                    format!(
                                        "make the field's type {}, or compute it with \"sluice.expr\": \"{}\"",
                                        quoted(&AvroType::of_sql(&col.sql_type)),
                                        expr_hint(&f.ty, &col.name)
                                    )
                                };
                                errors.push(
                                    at.clone(),
                                    format!(
                                        "reads column `{}` ({}): {e}",
                                        col.name,
                                        col.sql_type.canonical()
                                    ),
                                    fix,
                                );
                                continue;
                            }
                        }
                    }
                    (None, Some(default)) => {
                        let columns = || writer.columns.iter().map(|c| c.name.as_str());
                        let alias_typo = f
                            .aliases
                            .iter()
                            .find_map(|a| did_you_mean(a, columns()).map(|k| (a, k)));
                        if let Some((alias, k)) = alias_typo {
                            warnings.push(SchemeError {
                                file: self.file_name(),
                                at: at.clone(),
                                message: format!(
                                    "no column of {} is called `{}` or any of its aliases, so every row gets the default {default}",
                                    writer.id, f.name
                                ),
                                fix: format!("did you mean \"{k}\" instead of the alias \"{alias}\"?"),
                            });
                        } else if let Some(k) = did_you_mean(&f.name, columns()) {
                            warnings.push(SchemeError {
                                file: self.file_name(),
                                at: at.clone(),
                                message: format!(
                                    "no column of {} is called `{}`, so every row gets the default {default}",
                                    writer.id, f.name
                                ),
                                fix: format!(
                                    "did you mean \"{k}\"? To rename `{k}`, keep \"name\": \"{}\" and add \"aliases\": [\"{k}\"]",
                                    f.name
                                ),
                            });
                        }
                        let Some(sql) = f.sql.clone().or_else(|| f.ty.sql_type()) else {
                            errors.push(
                                at.clone(),
                                format!("{} has no column type", f.ty),
                                "use a scalar type",
                            );
                            continue;
                        };
                        let Ok(d) = default_datum(default, &f.ty) else {
                            continue;
                        };
                        let missing = pgtext::render(&sql, &d);
                        (Input::Default(d), sql, missing)
                    }
                    (None, None) => {
                        let fix = match did_you_mean(&f.name, writer.columns.iter().map(|c| c.name.as_str())) {
                            Some(k) => format!(
                                "did you mean \"{k}\"? To rename `{k}`, keep \"name\": \"{}\" and add \"aliases\": [\"{k}\"]",
                                f.name
                            ),
                            None => format!(
                                "name a column of {} ({}) or add it to \"aliases\", give the field a \"default\", or compute it with \"sluice.expr\"",
                                writer.id,
                                column_list(writer)
                            ),
                        };
                        errors.push(
                            at.clone(),
                            format!(
                                "no column of {} is called `{}` and the field has no default",
                                writer.id, f.name
                            ),
                            fix,
                        );
                        continue;
                    }
                }
            };
            let masked_type = match &f.mask {
                Some(Mask::Redact) | None => value_type.clone(),
                Some(_) => SqlType::Text,
            };
            if matches!(f.mask, Some(Mask::HmacSha256)) && hmac_key.is_none() {
                errors.push(
                    at.clone(),
                    format!("\"hmac-sha256\" needs a secret key, and {HMAC_KEY_ENV} is not set"),
                    format!(
                        "set {HMAC_KEY_ENV} (at least 32 random bytes) in the router's environment"
                    ),
                );
            }
            let redacted = f
                .default
                .as_ref()
                .and_then(|d| default_datum(d, &f.ty).ok())
                .unwrap_or(Datum::Null);
            columns.push(Column {
                name: f.column_name().to_string(),
                sql_type: f.sql.clone().unwrap_or(masked_type),
                key: false,
                missing: if f.mask.is_some() { None } else { missing },
            });
            fields.push(FieldPlan {
                name: f.name.clone(),
                from,
                mask: f.mask.clone(),
                value_type,
                nullable: f.ty.accepts_null(),
                redacted,
            });
        }
        if let Some(filter) = &self.filter {
            for c in filter.unknown_columns(writer) {
                let fix = match did_you_mean(&c, writer.columns.iter().map(|c| c.name.as_str())) {
                    Some(k) => format!("did you mean row.{k}?"),
                    None => format!("{} has: {}", writer.id, column_list(writer)),
                };
                errors.push(
                    "\"sluice.filter\"",
                    format!("the filter reads `{c}`, which {} does not have", writer.id),
                    fix,
                );
            }
        }
        // The key: named, or the fields that read the source's key columns.
        let key_fields: Vec<usize> = match &self.key {
            Some(names) => names
                .iter()
                .filter_map(|n| self.fields.iter().position(|f| &f.name == n))
                .filter_map(|i| fields.iter().position(|p| p.name == self.fields[i].name))
                .collect(),
            None => {
                let source_key = writer.key_indices();
                if source_key.is_empty() {
                    errors.push(
                        "record",
                        format!(
                            "{} has no primary key at the source, so the target's key is unknown",
                            writer.id
                        ),
                        "name the target's key with \"sluice.key\"",
                    );
                }
                let mut key = Vec::new();
                for i in source_key {
                    match fields.iter().position(|p| matches!(p.from, Input::Column(c, _) if c == i)) {
                        Some(p) => key.push(p),
                        None => errors.push(
                            "record",
                            format!(
                                "the scheme drops `{}`, which is part of the primary key of {}, so rows could not be updated or deleted",
                                writer.columns[i].name, writer.id
                            ),
                            format!(
                                "keep a field for `{}`, or name another key with \"sluice.key\"",
                                writer.columns[i].name
                            ),
                        ),
                    }
                }
                key
            }
        };
        for &k in &key_fields {
            if let Some(mask) = &fields[k].mask {
                if !mask.deterministic() {
                    errors.push(
                        format!("field `{}`", fields[k].name),
                        format!("the field is part of the key, and \"{}\" maps different values to the same text", mask.name()),
                        "mask a key field only with \"sha256\" or \"hmac-sha256\", or take it out of the key",
                    );
                }
            }
            columns[k].key = true;
        }
        if !errors.list.is_empty() {
            return Err(SchemeErrors(errors.list));
        }
        let target_id = self.target_of(&writer.id);
        Ok(Mapping {
            target: Arc::new(TableSchema {
                id: target_id,
                columns,
            }),
            writer: writer.clone(),
            warnings,
            file: self.file_name(),
            fields,
            filter: self.filter.clone(),
            hmac_key: hmac_key.map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)),
        })
    }
}

/// An expression that converts a column into a field of type `ty`.
fn expr_hint(ty: &AvroType, column: &str) -> String {
    let function = match ty.non_null().first() {
        Some(AvroType::String) => "string",
        Some(AvroType::Int | AvroType::Long) => "int",
        Some(AvroType::Float | AvroType::Double) => "double",
        _ => "",
    };
    if function.is_empty() {
        format!("row.{column}")
    } else {
        format!("{function}(row.{column})")
    }
}

fn quoted(t: &AvroType) -> String {
    t.to_json().to_string()
}

impl Mapping {
    /// The source column (its index in the writer schema) that target column `target` copies,
    /// when it is a plain copy.
    pub fn source_column(&self, target: usize) -> Option<usize> {
        match self.fields.get(target) {
            Some(FieldPlan {
                from: Input::Column(i, _),
                mask: None,
                ..
            }) => Some(*i),
            _ => None,
        }
    }

    /// The fields that take their default because the writer schema has no column for them.
    pub fn defaulted_fields(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|f| matches!(f.from, Input::Default(_)))
            .map(|f| f.name.as_str())
            .collect()
    }

    /// Applies the mapping to one change of the source table (written with this mapping's
    /// writer schema). Returns the target changes: none when the filter keeps the row out, a
    /// delete when an update moves it out. The error says which field failed and why; the
    /// router dead-letters that change. A target change is a [`RowChange`] of
    /// [`Mapping::target`]: a delete's before-image holds the target key values in key columns
    /// (others null), an insert's or update's after-image the target row.
    pub fn apply(
        &self,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        ts_ms: i64,
    ) -> Result<Vec<RowChange>, String> {
        match op {
            Op::Truncate => Ok(vec![RowChange {
                table: self.target.clone(),
                op,
                before: None,
                after: None,
            }]),
            Op::Delete => {
                let Some(before) = before else {
                    return Err("a delete without its before-image".into());
                };
                let key = self.key_row(op, before, None, ts_ms)?;
                Ok(vec![RowChange {
                    table: self.target.clone(),
                    op,
                    before: Some(key),
                    after: None,
                }])
            }
            Op::Create | Op::Update | Op::Read => {
                let Some(after) = after else {
                    return Err(format!("a {} without its after-image", op.code()));
                };
                // A column the source did not resend still has its value in a full before-image.
                let filled: Vec<Datum>;
                let after = match before {
                    Some(b) if after.contains(&Datum::Unchanged) => {
                        filled = after
                            .iter()
                            .zip(b)
                            .map(|(a, b)| {
                                if *a == Datum::Unchanged {
                                    b.clone()
                                } else {
                                    a.clone()
                                }
                            })
                            .collect();
                        &filled[..]
                    }
                    _ => after,
                };
                if let Some(filter) = &self.filter {
                    let ctx = RowContext::new(&self.writer, op, after, before, ts_ms);
                    let keep = self.eval(filter, &ctx, after, "\"sluice.filter\"")?;
                    match keep {
                        cel::Value::Bool(true) => {}
                        cel::Value::Bool(false) if matches!(op, Op::Update | Op::Read) => {
                            // The row no longer belongs in the target (a read, from a
                            // snapshot or a repair, may meet a row the target holds from
                            // before the filter kept it out).
                            let key = self.key_row(Op::Delete, after, before, ts_ms)?;
                            return Ok(vec![RowChange {
                                table: self.target.clone(),
                                op: Op::Delete,
                                before: Some(key),
                                after: None,
                            }]);
                        }
                        cel::Value::Bool(false) => return Ok(Vec::new()),
                        other => {
                            return Err(format!(
                                "{}: \"sluice.filter\" gave {other:?}, not true or false",
                                self.file
                            ))
                        }
                    }
                }
                let row = self.row(op, after, before, ts_ms, false)?;
                Ok(vec![RowChange {
                    table: self.target.clone(),
                    op,
                    before: None,
                    after: Some(row),
                }])
            }
        }
    }

    fn eval(
        &self,
        e: &Expr,
        ctx: &RowContext,
        image: &[Datum],
        at: &str,
    ) -> Result<cel::Value, String> {
        if image.contains(&Datum::Unchanged) {
            let unsent: Vec<&str> = self
                .writer
                .columns
                .iter()
                .zip(image)
                .filter(|(c, d)| {
                    **d == Datum::Unchanged
                        && match &e.reads {
                            Reads::All => true,
                            Reads::Columns(cols) => cols.contains(&c.name),
                        }
                })
                .map(|(c, _)| c.name.as_str())
                .collect();
            if !unsent.is_empty() {
                return Err(format!(
                    "{}: {at} reads `{}`, whose value PostgreSQL did not resend (an unchanged TOASTed value); \
                     set REPLICA IDENTITY FULL on {} so its old value comes with the change",
                    self.file,
                    unsent.join("`, `"),
                    self.writer.id
                ));
            }
        }
        e.eval(ctx)
            .map_err(|err| format!("{}: {at}: {err}", self.file))
    }

    /// The target key of a row (other columns null).
    fn key_row(
        &self,
        op: Op,
        image: &[Datum],
        before: Option<&[Datum]>,
        ts_ms: i64,
    ) -> Result<Vec<Datum>, String> {
        self.row(op, image, before, ts_ms, true)
    }

    fn row(
        &self,
        op: Op,
        image: &[Datum],
        before: Option<&[Datum]>,
        ts_ms: i64,
        key_only: bool,
    ) -> Result<Vec<Datum>, String> {
        let mut ctx = None;
        let mut out = Vec::with_capacity(self.fields.len());
        for (f, column) in self.fields.iter().zip(&self.target.columns) {
            if key_only && !column.key {
                out.push(Datum::Null);
                continue;
            }
            let at = || format!("field `{}`", f.name);
            let value = match &f.from {
                Input::Column(i, conversion) => conversion
                    .apply(image[*i].clone())
                    .map_err(|e| format!("{}: {}: {e}", self.file, at()))?,
                Input::Default(d) => d.clone(),
                Input::Expr(e) => {
                    let ctx = ctx.get_or_insert_with(|| {
                        RowContext::new(&self.writer, op, image, before, ts_ms)
                    });
                    let v = self.eval(e, ctx, image, &format!("{}'s \"sluice.expr\"", at()))?;
                    from_cel(v, &f.value_type)
                        .map_err(|e| format!("{}: {}: {e}", self.file, at()))?
                }
            };
            if value == Datum::Null && !f.nullable {
                return Err(format!(
                    "{}: {}: the value is null and the field cannot be",
                    self.file,
                    at()
                ));
            }
            let value = match (&f.mask, &value) {
                (Some(mask), v) if *v != Datum::Null && *v != Datum::Unchanged => {
                    let text = pgtext::render(&f.value_type, v).unwrap_or_default();
                    mask.apply(&text, self.hmac_key.as_ref(), &f.redacted)
                }
                _ => value,
            };
            out.push(value);
        }
        Ok(out)
    }
}
