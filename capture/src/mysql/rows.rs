//! The row images of a rows event, parsed with the column types, metadata and signedness the
//! table map gave once per table.
//!
//! mysql_async's `RowsEventData::rows` rebuilds a `Column` (names copied in) and re-reads the
//! table map's optional metadata for every row, and copies every value; that was the largest
//! part of MariaDB capture's CPU (BENCHMARKS.md). Here each value is parsed by mysql_common's
//! own `BinlogValue` parser, borrowing from the event.

use std::io;

use mysql_async::binlog::events::RowsEventData;
use mysql_async::binlog::value::BinlogValue;
use mysql_common::io::ParseBuf;

use super::types::BinlogColumn;

/// One image: a value per column of the table (`None` for NULL or a column the image lacks).
pub type Image<'a> = Vec<Option<BinlogValue<'a>>>;

/// A row's (before, after) images.
pub type RowImages<'a> = io::Result<(Option<Image<'a>>, Option<Image<'a>>)>;

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

/// Iterates the (before, after) images of each row.
pub struct Images<'a> {
    buf: ParseBuf<'a>,
    before: Option<Present>,
    after: Option<Present>,
    columns: &'a [BinlogColumn],
}

impl<'a> Images<'a> {
    /// `None` for events this parser leaves to mysql_async: MySQL 8's partial JSON updates,
    /// and an event wider than the table map's columns.
    pub fn new(rows: &'a RowsEventData<'a>, columns: &'a [BinlogColumn]) -> Option<Images<'a>> {
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
        })
    }
}

/// Reads one image: its null bitmap, then a value per present, non-null column.
fn image<'a>(
    buf: &mut ParseBuf<'a>,
    columns: &'a [BinlogColumn],
    present: &Present,
) -> io::Result<Image<'a>> {
    let nulls: &'a [u8] = buf.parse(present.count.div_ceil(8))?;
    let mut out = Vec::with_capacity(columns.len());
    let mut k = 0;
    for (c, here) in columns.iter().zip(&present.columns) {
        if !here {
            out.push(None);
            continue;
        }
        let null = nulls[k / 8] >> (k % 8) & 1 == 1;
        k += 1;
        out.push(if null {
            None
        } else {
            Some(buf.parse::<BinlogValue<'a>>((c.ty, &c.meta[..], c.unsigned, false))?)
        });
    }
    Ok(out)
}

impl<'a> Iterator for Images<'a> {
    type Item = RowImages<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let mut read = |present: &Option<Present>| {
            present
                .as_ref()
                .map(|p| image(&mut self.buf, self.columns, p))
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
