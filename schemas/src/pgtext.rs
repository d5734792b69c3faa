//! PostgreSQL's text format for each [`SqlType`], both ways: capture parses what pgoutput sends,
//! the PostgreSQL sink renders values back for `text::<type>` casts. Both sides assume the
//! session settings Sluice sets: `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `bytea_output=hex`, `IntervalStyle=iso_8601`, `lc_monetary=C`.
//!
//! Calendar arithmetic is done here (proleptic Gregorian, days from civil) rather than with a
//! date library, because PostgreSQL's range (dates to year 5874897, BC years) exceeds theirs.

use crate::event::Datum;
use crate::table::SqlType;

/// `infinity` / `-infinity` for dates and timestamps map onto the extremes of the Avro type.
pub const DATE_INFINITY: i32 = i32::MAX;
pub const DATE_NEG_INFINITY: i32 = i32::MIN;
pub const TS_INFINITY: i64 = i64::MAX;
pub const TS_NEG_INFINITY: i64 = i64::MIN;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a text value could not be parsed as its column's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid {ty} value")]
pub struct ParseError {
    pub text: String,
    pub ty: String,
}

/// Parses PostgreSQL's text form of a value of type `ty`.
pub fn parse(ty: &SqlType, text: &str) -> Result<Datum, ParseError> {
    let err = || ParseError {
        text: text.chars().take(64).collect(),
        ty: ty.canonical(),
    };
    Ok(match ty {
        SqlType::Bool => match text {
            "t" | "true" => Datum::Bool(true),
            "f" | "false" => Datum::Bool(false),
            _ => return Err(err()),
        },
        SqlType::Int16 | SqlType::Int32 => Datum::Int(text.parse().map_err(|_| err())?),
        SqlType::Int64 => Datum::Long(text.parse().map_err(|_| err())?),
        SqlType::Float32 => Datum::Float(parse_float(text).ok_or_else(err)? as f32),
        SqlType::Float64 => Datum::Double(parse_float(text).ok_or_else(err)?),
        SqlType::Decimal { scale, .. } => {
            // Avro's decimal has no NaN or infinity: reject here, where the caller decides.
            crate::decimal::check(text, *scale).map_err(|_| err())?;
            Datum::Decimal(text.to_string())
        }
        // Exhaustive on purpose (a new type must be placed here): these are the types
        // `SqlType::is_text_form` names.
        SqlType::Numeric
        | SqlType::Text
        | SqlType::Json
        | SqlType::Jsonb
        | SqlType::Interval
        | SqlType::TimeTz
        | SqlType::Enum(_)
        | SqlType::Other(_) => Datum::String(text.to_string()),
        SqlType::Money => Datum::Decimal(parse_money(text).ok_or_else(err)?),
        SqlType::Array(elem) => Datum::Array(parse_array(elem, text).map_err(|e| ParseError {
            text: err().text,
            ty: format!("{} ({e})", ty.canonical()),
        })?),
        SqlType::Uuid => Datum::Uuid(text.to_string()),
        SqlType::Bytes => Datum::Bytes(parse_bytea(text).ok_or_else(err)?),
        SqlType::Date => Datum::Date(match text {
            "infinity" => DATE_INFINITY,
            "-infinity" => DATE_NEG_INFINITY,
            _ => {
                let (body, bc) = strip_bc(text);
                i32::try_from(parse_ymd(body, bc).ok_or_else(err)?).map_err(|_| err())?
            }
        }),
        SqlType::Time => Datum::TimeMicros(parse_time(text).ok_or_else(err)?),
        SqlType::TimeSpan => Datum::TimeMicros(parse_time_span(text).ok_or_else(err)?),
        SqlType::Timestamp | SqlType::TimestampTz => Datum::TimestampMicros(match text {
            "infinity" => TS_INFINITY,
            "-infinity" => TS_NEG_INFINITY,
            _ => parse_timestamp(text, *ty == SqlType::TimestampTz).ok_or_else(err)?,
        }),
    })
}

/// Renders a value of type `ty` as PostgreSQL text input for a cast; `None` for SQL NULL.
/// [`Datum::Unchanged`] renders as `None` too: callers must not write such columns.
pub fn render(ty: &SqlType, datum: &Datum) -> Option<String> {
    Some(match datum {
        Datum::Null | Datum::Unchanged => return None,
        Datum::Array(items) => {
            let elem = match ty {
                SqlType::Array(elem) => elem,
                other => other,
            };
            let mut s = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(delimiter(elem));
                }
                match render(elem, item) {
                    None => s.push_str("NULL"),
                    Some(text) => {
                        // Always quoted: valid input for every element type.
                        s.push('"');
                        for c in text.chars() {
                            if c == '"' || c == '\\' {
                                s.push('\\');
                            }
                            s.push(c);
                        }
                        s.push('"');
                    }
                }
            }
            s.push('}');
            s
        }
        Datum::Bool(b) => if *b { "t" } else { "f" }.to_string(),
        Datum::Int(i) => i.to_string(),
        Datum::Long(i) => i.to_string(),
        Datum::Float(f) => render_float(f64::from(*f), format!("{f:?}")),
        Datum::Double(f) => render_float(*f, format!("{f:?}")),
        Datum::String(s) | Datum::Decimal(s) | Datum::Uuid(s) => s.clone(),
        Datum::Bytes(b) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                s.push(HEX[usize::from(byte >> 4)] as char);
                s.push(HEX[usize::from(byte & 0xF)] as char);
            }
            s
        }
        Datum::Date(d) => match *d {
            DATE_INFINITY => "infinity".into(),
            DATE_NEG_INFINITY => "-infinity".into(),
            d => {
                let (date, bc) = render_ymd(i64::from(d));
                if bc {
                    format!("{date} BC")
                } else {
                    date
                }
            }
        },
        Datum::TimeMicros(t) => render_time(*t),
        Datum::TimestampMicros(t) => match *t {
            TS_INFINITY => "infinity".into(),
            TS_NEG_INFINITY => "-infinity".into(),
            t => {
                let days = t.div_euclid(MICROS_PER_DAY);
                let (date, bc) = render_ymd(days);
                let time = render_time(t.rem_euclid(MICROS_PER_DAY));
                format!("{date} {time}{}", if bc { " BC" } else { "" })
            }
        },
    })
}

/// The array element delimiter of a type: `;` for `box` (whose values contain commas), else `,`.
fn delimiter(elem: &SqlType) -> char {
    match elem {
        SqlType::Other(name) if name == "box" => ';',
        _ => ',',
    }
}

/// Why an array's text form cannot be carried as an Avro array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ArrayError {
    Syntax,
    MultiDimensional,
    LowerBound,
    Element(String),
}

impl std::fmt::Display for ArrayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArrayError::Syntax => f.write_str("malformed array"),
            ArrayError::MultiDimensional => {
                f.write_str("a multi-dimensional array does not fit an Avro array")
            }
            ArrayError::LowerBound => {
                f.write_str("an array whose lower bound is not 1 does not fit an Avro array")
            }
            ArrayError::Element(e) => write!(f, "element: {e}"),
        }
    }
}

/// Parses a one-dimensional array's text form (`{1,NULL,"a \\"b"}`), each element as `elem`.
fn parse_array(elem: &SqlType, text: &str) -> Result<Vec<Datum>, ArrayError> {
    let body = if text.starts_with('[') {
        // Dimension decoration, only printed when a lower bound is not 1.
        let (dims, rest) = text.split_once('=').ok_or(ArrayError::Syntax)?;
        if dims.matches('[').count() > 1 {
            return Err(ArrayError::MultiDimensional);
        }
        if !dims.starts_with("[1:") {
            return Err(ArrayError::LowerBound);
        }
        rest
    } else {
        text
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or(ArrayError::Syntax)?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let delim = delimiter(elem);
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next().ok_or(ArrayError::Syntax)? {
                    '"' => break,
                    '\\' => item.push(chars.next().ok_or(ArrayError::Syntax)?),
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == delim {
                    break;
                }
                match c {
                    '{' => return Err(ArrayError::MultiDimensional),
                    '"' | '}' => return Err(ArrayError::Syntax),
                    '\\' => {
                        chars.next();
                        item.push(chars.next().ok_or(ArrayError::Syntax)?);
                        continue;
                    }
                    _ => item.push(c),
                }
                chars.next();
            }
        }
        out.push(if !quoted && item.eq_ignore_ascii_case("NULL") {
            Datum::Null
        } else {
            parse(elem, &item).map_err(|e| ArrayError::Element(e.to_string()))?
        });
        match chars.next() {
            None => return Ok(out),
            Some(c) if c == delim => {}
            Some(_) => return Err(ArrayError::Syntax),
        }
    }
}

/// `money` as printed under `lc_monetary = C` (`-$1,234.56`) → decimal text (`-1234.56`).
fn parse_money(text: &str) -> Option<String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => match text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
            Some(rest) => (true, rest),
            None => (false, text),
        },
    };
    let mut out = String::with_capacity(body.len() + 1);
    if negative {
        out.push('-');
    }
    out.extend(body.chars().filter(|c| *c != '$' && *c != ','));
    crate::decimal::check(&out, 2).ok()?;
    Some(out)
}

fn render_float(f: f64, shortest: String) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "Infinity".into()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        shortest
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year: 1 BC is year 0).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (astronomical year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// `YYYY-MM-DD` (year one or more digits), `bc` for PostgreSQL's ` BC` suffix → days since epoch.
fn parse_ymd(text: &str, bc: bool) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.is_empty() || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = y.parse().ok()?;
    let month: u32 = m.parse().ok()?;
    let day: u32 = d.parse().ok()?;
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Days since epoch → (`YYYY-MM-DD`, is BC).
fn render_ymd(days: i64) -> (String, bool) {
    let (year, month, day) = civil_from_days(days);
    if year <= 0 {
        (format!("{:04}-{month:02}-{day:02}", 1 - year), true)
    } else {
        (format!("{year:04}-{month:02}-{day:02}"), false)
    }
}

/// `HH:MM:SS[.ffffff]` → microseconds since midnight (24:00:00 allowed, as in PostgreSQL).
fn parse_time(text: &str) -> Option<i64> {
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = hms.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || h > 24 || m > 59 || s > 59 || frac.len() > 6 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + micros;
    (total <= MICROS_PER_DAY).then_some(total)
}

/// `[-]H+:MM:SS[.ffffff]`, MySQL's `TIME` (hours past 24, negative) → signed microseconds.
fn parse_time_span(text: &str) -> Option<i64> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (h, rest) = body.split_once(':')?;
    let hours: i64 = h.parse().ok()?;
    if h.starts_with('+') || hours > 838 {
        return None;
    }
    let within_day = parse_time(&format!("00:{rest}"))?;
    let total = hours * 3_600_000_000 + within_day;
    Some(if negative { -total } else { total })
}

/// Signed microseconds as `[-]HH:MM:SS.ffffff`: a time of day for PostgreSQL's `time`, and
/// for MySQL's `TIME` (negative, past 24 h) the same text `interval` and `TIME` both read.
fn render_time(t: i64) -> String {
    let sign = if t < 0 { "-" } else { "" };
    let a = t.unsigned_abs();
    let secs = a / 1_000_000;
    let micros = a % 1_000_000;
    format!(
        "{sign}{:02}:{:02}:{:02}.{micros:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since epoch (UTC).
fn parse_timestamp(text: &str, with_zone: bool) -> Option<i64> {
    let (body, bc) = strip_bc(text);
    let (date, rest) = body.split_once(' ')?;
    let (time, offset_secs) = if with_zone {
        let pos = rest.rfind(['+', '-'])?;
        let (time, offset) = rest.split_at(pos);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, part) in offset[1..].split(':').enumerate() {
            let v: i64 = part.parse().ok()?;
            secs += v * [3600, 60, 1].get(i)?;
        }
        (time, sign * secs)
    } else {
        (rest, 0)
    };
    let days = parse_ymd(date, bc)?;
    let micros = parse_time(time)?;
    days.checked_mul(MICROS_PER_DAY)?
        .checked_add(micros)?
        .checked_sub(offset_secs.checked_mul(1_000_000)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(ty: SqlType, text: &str) {
        let datum = parse(&ty, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(render(&ty, &datum).as_deref(), Some(text), "{ty:?}");
    }

    #[test]
    fn values_round_trip_through_their_text_form() {
        round_trip(SqlType::Bool, "t");
        round_trip(SqlType::Int16, "-32768");
        round_trip(SqlType::Int32, "2147483647");
        round_trip(SqlType::Int64, "-9223372036854775808");
        round_trip(SqlType::Float64, "0.1");
        round_trip(SqlType::Float64, "1e300");
        round_trip(SqlType::Float64, "-2.5e-300");
        round_trip(SqlType::Float64, "NaN");
        round_trip(SqlType::Float64, "-Infinity");
        round_trip(SqlType::Float32, "3.4028235e38");
        round_trip(
            SqlType::Decimal {
                precision: 40,
                scale: 5,
            },
            "-123456789012345678901234567890.12345",
        );
        round_trip(SqlType::Bytes, "\\x00ff10");
        round_trip(SqlType::Date, "2026-11-23");
        round_trip(SqlType::Date, "infinity");
        round_trip(SqlType::Date, "0044-03-15 BC");
        round_trip(SqlType::Date, "5874897-12-31");
        round_trip(SqlType::Date, "4714-11-24 BC");
        round_trip(SqlType::Timestamp, "294246-12-31 23:59:59.999999");
        // PostgreSQL goes to 294276 AD, past what i64 microseconds from 1970 can hold.
        assert!(parse(&SqlType::Timestamp, "294276-12-31 23:59:59.999999").is_err());
        round_trip(SqlType::Date, "2000-02-29");
        round_trip(SqlType::Time, "23:59:59.999999");
        round_trip(SqlType::TimeSpan, "-838:59:59.000000");
        round_trip(SqlType::TimeSpan, "838:59:59.999999");
        round_trip(SqlType::TimeSpan, "-00:00:00.500000");
        round_trip(SqlType::TimeSpan, "100:00:00.000000");
        round_trip(SqlType::Timestamp, "2026-11-23 05:36:19.123456");
        round_trip(SqlType::Timestamp, "-infinity");
        round_trip(SqlType::Timestamp, "4713-01-01 00:00:00.000000 BC");
        round_trip(SqlType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    fn array(elem: SqlType) -> SqlType {
        SqlType::Array(Box::new(elem))
    }

    #[test]
    fn arrays_parse_elements_by_type_and_render_back_quoted() {
        let ints = parse(&array(SqlType::Int32), "{1,NULL,-3}").unwrap();
        assert_eq!(
            ints,
            Datum::Array(vec![Datum::Int(1), Datum::Null, Datum::Int(-3)])
        );
        assert_eq!(
            render(&array(SqlType::Int32), &ints).unwrap(),
            r#"{"1",NULL,"-3"}"#
        );
        let texts = parse(
            &array(SqlType::Text),
            r#"{"a b",NULL,"q\"x","NULL","",plain,"back\\slash"}"#,
        )
        .unwrap();
        assert_eq!(
            texts,
            Datum::Array(vec![
                Datum::String("a b".into()),
                Datum::Null,
                Datum::String("q\"x".into()),
                Datum::String("NULL".into()),
                Datum::String(String::new()),
                Datum::String("plain".into()),
                Datum::String("back\\slash".into()),
            ])
        );
        let rendered = render(&array(SqlType::Text), &texts).unwrap();
        assert_eq!(parse(&array(SqlType::Text), &rendered).unwrap(), texts);
        assert_eq!(
            parse(&array(SqlType::Date), "{}").unwrap(),
            Datum::Array(vec![])
        );
        let ts = parse(
            &array(SqlType::Timestamp),
            r#"{"2026-11-23 05:36:19.5",infinity}"#,
        )
        .unwrap();
        assert_eq!(
            render(&array(SqlType::Timestamp), &ts).unwrap(),
            r#"{"2026-11-23 05:36:19.500000","infinity"}"#
        );
        let boxes = array(SqlType::Other("box".into()));
        let b = parse(&boxes, "{(1,1),(0,0);(3,3),(2,2)}").unwrap();
        assert_eq!(
            b,
            Datum::Array(vec![
                Datum::String("(1,1),(0,0)".into()),
                Datum::String("(3,3),(2,2)".into())
            ])
        );
        assert_eq!(
            render(&boxes, &b).unwrap(),
            r#"{"(1,1),(0,0)";"(3,3),(2,2)"}"#
        );
        assert_eq!(
            parse(&array(SqlType::Int32), "[1:2]={7,8}").unwrap(),
            Datum::Array(vec![Datum::Int(7), Datum::Int(8)])
        );
    }

    #[test]
    fn arrays_avro_cannot_carry_are_errors_that_say_why() {
        let e = parse(&array(SqlType::Int32), "{{1,2},{3,4}}").unwrap_err();
        assert!(e.ty.contains("multi-dimensional"), "{e}");
        let e = parse(&array(SqlType::Int32), "[0:1]={1,2}").unwrap_err();
        assert!(e.ty.contains("lower bound"), "{e}");
        let e = parse(&array(SqlType::Int32), "{1,x}").unwrap_err();
        assert!(e.ty.contains("element"), "{e}");
        assert!(parse(&array(SqlType::Int32), "{1,2").is_err());
        assert!(parse(&array(SqlType::Text), r#"{"open}"#).is_err());
    }

    #[test]
    fn money_under_the_c_locale_becomes_an_exact_decimal() {
        for (text, decimal) in [
            ("$0.00", "0.00"),
            ("-$1,234,567.89", "-1234567.89"),
            ("$92,233,720,368,547,758.07", "92233720368547758.07"),
            ("-$92,233,720,368,547,758.08", "-92233720368547758.08"),
        ] {
            let d = parse(&SqlType::Money, text).unwrap();
            assert_eq!(d, Datum::Decimal(decimal.into()));
            assert_eq!(render(&SqlType::Money, &d).unwrap(), decimal);
        }
        assert!(parse(&SqlType::Money, "$1.234").is_err());
    }

    #[test]
    fn text_form_types_travel_verbatim() {
        round_trip(SqlType::Interval, "P1Y2M-3DT4H5M6.789S");
        round_trip(SqlType::TimeTz, "12:34:56.5+05:30");
        round_trip(SqlType::Enum("mood".into()), "happy");
        round_trip(SqlType::Other("int4range".into()), "[1,10)");
    }

    #[test]
    fn timestamptz_is_read_as_an_instant() {
        let utc = parse(&SqlType::TimestampTz, "2026-11-23 05:36:19.5+00").unwrap();
        let ist = parse(&SqlType::TimestampTz, "2026-11-23 11:06:19.5+05:30").unwrap();
        assert_eq!(utc, ist);
        assert_eq!(
            render(&SqlType::TimestampTz, &utc).unwrap(),
            "2026-11-23 05:36:19.500000"
        );
    }

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        assert!(parse(&SqlType::Int32, "12x").is_err());
        assert!(parse(
            &SqlType::Decimal {
                precision: 10,
                scale: 2
            },
            "NaN"
        )
        .is_err());
        assert!(parse(
            &SqlType::Decimal {
                precision: 10,
                scale: 2
            },
            "1.234"
        )
        .is_err());
        assert!(parse(&SqlType::Bool, "yes").is_err());
        assert!(parse(&SqlType::Bytes, "\\x0").is_err());
        assert!(parse(&SqlType::Date, "2026-13-01").is_err());
        assert!(parse(&SqlType::Date, "2026-02-29").is_err());
        assert!(parse(&SqlType::Time, "12:00:00.1234567").is_err());
    }
}
