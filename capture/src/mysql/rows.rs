//! The row images of a rows event, parsed with the column types, metadata and signedness the
//! table map gave once per table.
//!
//! mysql_async's `RowsEventData::rows` rebuilds a `Column` (names copied in) and re-reads the
//! table map's optional metadata for every row, and copies every value; that was the largest
//! part of MariaDB capture's CPU (BENCHMARKS.md). Here each value is parsed by mysql_common's
//! own `BinlogValue` parser, borrowing from the event, except `TIMESTAMP` and `DECIMAL`, which
//! are read here from their binary form: mysql_common formats both as text (with `format!` and,
//! for a decimal, two more allocations), which capture then parsed back.

use std::io;

use mysql_async::binlog::events::RowsEventData;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value;
use mysql_common::io::ParseBuf;

use super::types::BinlogColumn;

/// One value of a row image.
#[derive(Debug)]
pub enum Cell<'a> {
    Binlog(BinlogValue<'a>),
    /// `TIMESTAMP(n)`: seconds since the epoch, and microseconds.
    Timestamp(i64, i64),
    /// `DECIMAL(p,s)` as its exact text, as mysql_common renders it (`-12.340`, `0.50`).
    Decimal(String),
}

impl<'a> Cell<'a> {
    /// The value as mysql_common's parser gives it.
    pub fn into_binlog(self) -> BinlogValue<'a> {
        match self {
            Cell::Binlog(v) => v,
            Cell::Timestamp(secs, 0) => BinlogValue::Value(Value::Bytes(secs.to_string().into())),
            Cell::Timestamp(secs, micros) => {
                BinlogValue::Value(Value::Bytes(format!("{secs}.{micros:06}").into()))
            }
            Cell::Decimal(text) => BinlogValue::Value(Value::Bytes(text.into())),
        }
    }
}

/// A row's (before, after) images, each a value per column of the table (`None` for NULL or a
/// column the image lacks), converted as read.
pub type RowImages<T> = io::Result<(Option<Vec<T>>, Option<Vec<T>>)>;

/// Which columns an image holds, and how many (the size of its null bitmap).
struct Present {
    columns: Vec<bool>,
    count: usize,
}

impl Present {
    fn new(bits: impl Iterator<Item = bool>) -> Present {
        let columns: Vec<bool> = bits.collect();
        let count = columns.iter().filter(|p| **p).count();
        Present { columns, count }
    }
}

/// Iterates the (before, after) images of each row, each value converted by `convert` (given
/// the column's index) as it is read.
pub struct Images<'a, F> {
    buf: ParseBuf<'a>,
    before: Option<Present>,
    after: Option<Present>,
    columns: &'a [BinlogColumn],
    convert: F,
}

impl<'a, T, F: Fn(usize, Option<Cell<'a>>) -> T> Images<'a, F> {
    /// `None` for events this parser leaves to mysql_async: MySQL 8's partial JSON updates,
    /// and an event wider than the table map's columns.
    pub fn new(
        rows: &'a RowsEventData<'a>,
        columns: &'a [BinlogColumn],
        convert: F,
    ) -> Option<Images<'a, F>> {
        if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_))
            || rows.num_columns() != columns.len() as u64
        {
            return None;
        }
        Some(Images {
            buf: ParseBuf(rows.rows_data()),
            before: rows
                .columns_before_image()
                .map(|b| Present::new(b.iter().map(|bit| *bit))),
            after: rows
                .columns_after_image()
                .map(|b| Present::new(b.iter().map(|bit| *bit))),
            columns,
            convert,
        })
    }
}

/// Reads one image: its null bitmap, then a value per present, non-null column.
fn image<'a, T>(
    buf: &mut ParseBuf<'a>,
    columns: &'a [BinlogColumn],
    present: &Present,
    convert: &impl Fn(usize, Option<Cell<'a>>) -> T,
) -> io::Result<Vec<T>> {
    let nulls: &'a [u8] = buf.parse(present.count.div_ceil(8))?;
    let mut out = Vec::with_capacity(columns.len());
    let mut k = 0;
    for (i, (c, here)) in columns.iter().zip(&present.columns).enumerate() {
        if !here {
            out.push(convert(i, None));
            continue;
        }
        let null = nulls[k / 8] >> (k % 8) & 1 == 1;
        k += 1;
        let cell = if null {
            None
        } else {
            Some(match (c.ty, &c.meta[..]) {
                (ColumnType::MYSQL_TYPE_TIMESTAMP2, [fsp, ..]) => {
                    let (secs, micros) = timestamp2(buf, *fsp)?;
                    Cell::Timestamp(secs, micros)
                }
                (ColumnType::MYSQL_TYPE_NEWDECIMAL, [precision, scale, ..]) => {
                    Cell::Decimal(decimal_text(buf, *precision, *scale)?)
                }
                _ => Cell::Binlog(buf.parse((c.ty, &c.meta[..], c.unsigned, false))?),
            })
        };
        out.push(convert(i, cell));
    }
    Ok(out)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads `n` bytes as a big-endian unsigned number.
fn be(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0, |n, b| n << 8 | u32::from(*b))
}

/// `TIMESTAMP(fsp)` (`MYSQL_TYPE_TIMESTAMP2`): four bytes of seconds, big-endian, then the
/// fraction in one byte (hundredths), two (ten-thousandths) or three (microseconds).
fn timestamp2(buf: &mut ParseBuf<'_>, fsp: u8) -> io::Result<(i64, i64)> {
    let (frac_len, unit) = match fsp {
        0 => (0, 0),
        1 | 2 => (1, 10_000),
        3 | 4 => (2, 100),
        5 | 6 => (3, 1),
        _ => return Err(invalid(format!("TIMESTAMP({fsp}) has no such precision"))),
    };
    let bytes: &[u8] = buf.parse(4 + frac_len)?;
    let micros = i64::from(be(&bytes[4..])) * unit;
    if micros >= 1_000_000 {
        return Err(invalid(format!(
            "TIMESTAMP fraction {micros} µs is a second or more"
        )));
    }
    Ok((i64::from(be(&bytes[..4])), micros))
}

/// Digits per four-byte group of MySQL's binary decimal, and the bytes a partial group takes.
const DIGITS_PER_GROUP: usize = 9;
const GROUP_BYTES: [usize; DIGITS_PER_GROUP + 1] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// `DECIMAL(precision, scale)` (`MYSQL_TYPE_NEWDECIMAL`) as text. The binary form is the integer
/// digits then the fraction's, in big-endian groups of nine digits to four bytes (a partial
/// group first in the integer part and last in the fraction), the first bit flipped, and every
/// byte inverted when negative. The text is mysql_common's: no leading zeros (a lone `0`
/// before the point), exactly `scale` fractional digits, `-` kept on a negative zero with a
/// fraction.
fn decimal_text(buf: &mut ParseBuf<'_>, precision: u8, scale: u8) -> io::Result<String> {
    let (precision, scale) = (usize::from(precision), usize::from(scale));
    if scale > precision || precision > 65 {
        return Err(invalid(format!(
            "DECIMAL({precision},{scale}) is not a decimal type"
        )));
    }
    let intg = precision - scale;
    let width =
        |digits: usize| digits / DIGITS_PER_GROUP * 4 + GROUP_BYTES[digits % DIGITS_PER_GROUP];
    let size = width(intg) + width(scale);
    let raw: &[u8] = buf.parse(size)?;
    // 65 digits take at most 30 bytes.
    let mut bytes = [0u8; 32];
    bytes[..size].copy_from_slice(raw);
    let negative = size > 0 && bytes[0] & 0x80 == 0;
    if size > 0 {
        bytes[0] ^= 0x80;
    }
    if negative {
        bytes[..size].iter_mut().for_each(|b| *b = !*b);
    }
    // Groups of (digits, bytes), in order.
    let groups = |digits: usize, partial_first: bool| {
        let partial = digits % DIGITS_PER_GROUP;
        let full = std::iter::repeat_n(DIGITS_PER_GROUP, digits / DIGITS_PER_GROUP);
        let part = (partial > 0).then_some(partial);
        let (head, tail) = if partial_first {
            (part, None)
        } else {
            (None, part)
        };
        head.into_iter().chain(full).chain(tail)
    };
    let mut out = String::with_capacity(precision + 2);
    if negative {
        out.push('-');
    }
    let mut at = 0;
    let mut read = |digits: usize| -> io::Result<u32> {
        let n = GROUP_BYTES[digits];
        let v = be(&bytes[at..at + n]);
        at += n;
        if v >= 10u32.pow(digits as u32) {
            return Err(invalid(format!(
                "DECIMAL group {v} has more than {digits} digits"
            )));
        }
        Ok(v)
    };
    let mut started = false;
    for digits in groups(intg, true) {
        let v = read(digits)?;
        if started {
            push_digits(&mut out, v, digits);
        } else if v != 0 {
            push_digits(&mut out, v, 1);
            started = true;
        }
    }
    if !started {
        if scale == 0 {
            // mysql_common drops the sign of a whole-number zero.
            out.clear();
        }
        out.push('0');
    }
    if scale > 0 {
        out.push('.');
        for digits in groups(scale, false) {
            let v = read(digits)?;
            push_digits(&mut out, v, digits);
        }
    }
    Ok(out)
}

/// Appends `v` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut String, mut v: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = start.min(digits.len() - width.min(digits.len()));
    out.extend(digits[start..].iter().map(|d| char::from(*d)));
}

impl<'a, T, F: Fn(usize, Option<Cell<'a>>) -> T> Iterator for Images<'a, F> {
    type Item = RowImages<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let mut read = |present: &Option<Present>| {
            present
                .as_ref()
                .map(|p| image(&mut self.buf, self.columns, p, &self.convert))
                .transpose()
        };
        let result = read(&self.before).and_then(|b| Ok((b, read(&self.after)?)));
        if result.is_err() {
            // Nothing after a bad row can be trusted.
            self.buf = ParseBuf(&[]);
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use mysql_common::binlog::decimal::Decimal;

    use super::*;

    /// A decimal's binary form from its sign and digits (`intg` integer digits, then the
    /// fraction's), as the server writes it.
    fn decimal_bin(negative: bool, digits: &[u8], intg: usize) -> Vec<u8> {
        let (int_digits, frac_digits) = digits.split_at(intg);
        let number = |d: &[u8]| d.iter().fold(0u32, |n, d| n * 10 + u32::from(*d));
        let mut out = Vec::new();
        let mut put = |d: &[u8]| {
            let n = GROUP_BYTES[d.len()];
            out.extend_from_slice(&number(d).to_be_bytes()[4 - n..]);
        };
        let partial = int_digits.len() % DIGITS_PER_GROUP;
        put(&int_digits[..partial]);
        int_digits[partial..]
            .chunks(DIGITS_PER_GROUP)
            .for_each(&mut put);
        frac_digits.chunks(DIGITS_PER_GROUP).for_each(&mut put);
        if negative {
            out.iter_mut().for_each(|b| *b = !*b);
        }
        if let Some(b) = out.first_mut() {
            *b ^= 0x80;
        }
        out
    }

    #[test]
    fn decimals_read_as_mysql_common_renders_them() {
        // A small deterministic generator: the same cases every run.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut checked = 0;
        for precision in 1..=65u8 {
            for scale in 0..=precision.min(30) {
                for _ in 0..20 {
                    let digits: Vec<u8> = (0..precision)
                        .map(|_| match next(4) {
                            // Runs of zeros, so whole groups and leading digits are zero.
                            0 => 0,
                            _ => next(10) as u8,
                        })
                        .collect();
                    let negative = next(2) == 0;
                    let intg = usize::from(precision - scale);
                    let bin = decimal_bin(negative, &digits, intg);
                    let ours = decimal_text(&mut ParseBuf(&bin), precision, scale).unwrap();
                    let theirs = Decimal::read_bin(&bin[..], precision.into(), scale.into(), false)
                        .unwrap()
                        .to_string();
                    assert_eq!(
                        ours, theirs,
                        "DECIMAL({precision},{scale}) digits {digits:?}"
                    );
                    sluice_schemas::decimal::check(&ours, scale.into()).unwrap();
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000);
        // And by hand, the cases a reader would think of.
        let text = |negative, digits: &[u8], p: u8, s: u8| {
            let bin = decimal_bin(negative, digits, usize::from(p - s));
            decimal_text(&mut ParseBuf(&bin), p, s).unwrap()
        };
        assert_eq!(text(true, &[0, 0, 1, 2, 3, 4, 5, 0], 8, 2), "-1234.50");
        assert_eq!(text(false, &[0, 0, 0, 0, 5], 5, 2), "0.05");
        assert_eq!(text(true, &[0, 0, 0], 3, 0), "0");
        assert_eq!(text(true, &[0, 0, 0], 3, 1), "-0.0");
    }

    #[test]
    fn a_decimal_with_a_group_out_of_range_is_refused() {
        // DECIMAL(2,0) holds 0..=99 in one byte; 0xff ^ 0x80 is 127.
        let e = decimal_text(&mut ParseBuf(&[0xff]), 2, 0).unwrap_err();
        assert!(e.to_string().contains("more than 2 digits"), "{e}");
        let e = decimal_text(&mut ParseBuf(&[]), 2, 3).unwrap_err();
        assert!(e.to_string().contains("DECIMAL(2,3)"), "{e}");
    }

    #[test]
    fn timestamps_read_as_mysql_common_reads_them() {
        let cases: [(u8, &[u8]); 5] = [
            (0, &[0x65, 0x53, 0xf1, 0x00]),
            (2, &[0x65, 0x53, 0xf1, 0x00, 99]),
            (3, &[0x65, 0x53, 0xf1, 0x00, 0x03, 0xe7]),
            (6, &[0x65, 0x53, 0xf1, 0x00, 0x0f, 0x42, 0x3f]),
            (6, &[0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x07]),
        ];
        for (fsp, bin) in cases {
            let (secs, micros) = timestamp2(&mut ParseBuf(bin), fsp).unwrap();
            let ours = Cell::Timestamp(secs, micros).into_binlog();
            let meta = [fsp];
            let theirs: BinlogValue<'_> = ParseBuf(bin)
                .parse((ColumnType::MYSQL_TYPE_TIMESTAMP2, &meta[..], false, false))
                .unwrap();
            assert_eq!(
                format!("{ours:?}"),
                format!("{theirs:?}"),
                "fsp {fsp} {bin:?}"
            );
        }
        assert_eq!(
            timestamp2(
                &mut ParseBuf(&[0x65, 0x53, 0xf1, 0x00, 0x0f, 0x42, 0x3f]),
                6
            )
            .unwrap(),
            (1_700_000_000, 999_999)
        );
        // A fraction of a second or more is not a timestamp.
        let e = timestamp2(&mut ParseBuf(&[0, 0, 0, 1, 0x0f, 0x42, 0x40]), 6).unwrap_err();
        assert!(e.to_string().contains("a second or more"), "{e}");
    }
}
