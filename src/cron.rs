//! Cron expressions for `[verify] schedule`: the five classic fields — minute, hour, day of
//! month, month, day of week — in UTC, each `*`, a number, a range `a-b`, a step `*/n` or
//! `a-b/n`, or a comma-separated list of those; months and days may be named (`JAN`, `MON`);
//! day of week 0 or 7 is Sunday. As in cron, when both the day of month and the day of week
//! are restricted, a day matching either runs.

use sluice_schemas::pgtext::civil_from_days;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether the day of month and the day of week were each restricted (not `*`).
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Parses `text`; the error names the field and what it accepts.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "`{text}` has {} fields; a schedule has five: minute hour day-of-month month \
                 day-of-week (UTC), e.g. \"30 2 * * *\" for 02:30 every day",
                fields.len()
            ));
        }
        let weekdays = field(fields[4], "day of week", 0, 7, &WEEKDAYS, 0)?;
        // 7 is Sunday too.
        let weekdays = if weekdays & (1 << 7) != 0 {
            (weekdays | 1) & !(1 << 7)
        } else {
            weekdays
        };
        Ok(Cron {
            minutes: field(fields[0], "minute", 0, 59, &[], 0)?,
            hours: field(fields[1], "hour", 0, 23, &[], 0)?,
            days: field(fields[2], "day of month", 1, 31, &[], 0)?,
            months: field(fields[3], "month", 1, 12, &MONTHS, 1)?,
            weekdays,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    /// The first minute strictly after `unix_s` (seconds since the epoch, UTC) the expression
    /// matches, as seconds since the epoch; `None` if none comes within eight years (a day that
    /// never exists, such as 31 February).
    pub fn next_after(&self, unix_s: i64) -> Option<i64> {
        let mut minute = unix_s.div_euclid(60) + 1;
        let limit = minute + 8 * 366 * 24 * 60;
        while minute < limit {
            let days = minute.div_euclid(24 * 60);
            let (_, month, day) = civil_from_days(days);
            // 1970-01-01 was a Thursday.
            let weekday = (days + 4).rem_euclid(7) as u32;
            let day_ok = match (self.days_restricted, self.weekdays_restricted) {
                (true, true) => has(self.days, day) || has(self.weekdays, weekday),
                _ => has(self.days, day) && has(self.weekdays, weekday),
            };
            if !has(self.months, month) || !day_ok {
                minute = (days + 1) * 24 * 60;
                continue;
            }
            let of_day = minute.rem_euclid(24 * 60);
            let (hour, min) = ((of_day / 60) as u32, (of_day % 60) as u32);
            if !has(self.hours, hour) {
                minute = days * 24 * 60 + (i64::from(hour) + 1) * 60;
                continue;
            }
            if !has(self.minutes, min) {
                minute += 1;
                continue;
            }
            return Some(minute * 60);
        }
        None
    }
}

fn has(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

/// One field as a bit set of the values it matches, within `lo..=hi`; `names` (lower case)
/// stand for `name_base`, `name_base + 1`, ….
fn field(
    text: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(name_base + i as u32);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("`{s}` in the {what} field is not a number from {lo} to {hi}"))?;
        if !(lo..=hi).contains(&n) {
            return Err(format!("{n} in the {what} field is outside {lo}–{hi}"));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("`{s}` in the {what} field is not a step (a number above 0)")
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `a/n` runs from a to the end, as in cron.
                None if step > 1 => (value(r)?, hi),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(format!("`{range}` in the {what} field runs backwards"));
        }
        let mut v = from;
        while v <= to {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        let days = sluice_schemas::pgtext::days_from_civil(y, mo, d);
        days * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn the_next_run_is_the_first_matching_minute_after_now() {
        let daily = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(at(2026, 12, 4, 1, 0)),
            Some(at(2026, 12, 4, 2, 30))
        );
        // Strictly after: at 02:30 itself the next is tomorrow's.
        assert_eq!(
            daily.next_after(at(2026, 12, 4, 2, 30)),
            Some(at(2026, 12, 5, 2, 30))
        );
        let quarter = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            quarter.next_after(at(2026, 12, 31, 23, 50)),
            Some(at(2027, 1, 1, 0, 0))
        );
        // Mondays to Fridays at 06:00 and 18:00: from Friday evening, Monday morning
        // (2026-12-04 is a Friday).
        let weekdays = Cron::parse("0 6,18 * * MON-FRI").unwrap();
        assert_eq!(
            weekdays.next_after(at(2026, 12, 4, 19, 0)),
            Some(at(2026, 12, 7, 6, 0))
        );
        // Day of month and day of week both restricted: either day runs.
        let either = Cron::parse("0 0 1 * sun").unwrap();
        assert_eq!(
            either.next_after(at(2026, 12, 1, 12, 0)),
            Some(at(2026, 12, 6, 0, 0))
        );
        // 7 is Sunday too; February 29 comes in a leap year.
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, 1);
        assert_eq!(
            Cron::parse("0 12 29 feb *")
                .unwrap()
                .next_after(at(2026, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 12, 0))
        );
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(0), None);
    }

    #[test]
    fn a_bad_expression_names_the_field() {
        for (text, says) in [
            ("* * * *", "five"),
            ("60 * * * *", "minute field is outside 0–59"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
