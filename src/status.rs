//! `sluice status`: what running Sluice processes are doing, read from their `/metrics` and
//! `/readyz`.
//!
//! Every figure comes from the metrics the processes export (METRICS.md), so `status` needs no
//! access to the sources, the broker or the sinks: only the processes' HTTP endpoints. A
//! deployment that runs capture and router apart is read by naming each endpoint.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Parses Prometheus' text exposition format; comments and malformed lines are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        escaped => value.push(escaped),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &rest[end + 1..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// What one endpoint answered.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    /// `Err` when the process could not be reached.
    pub readiness: Result<(bool, String), String>,
}

/// A table of one source.
#[derive(Debug, Clone, Default)]
pub struct TableStatus {
    pub captured: f64,
    pub snapshot_rows: Option<f64>,
    pub snapshot_expected: Option<f64>,
    pub snapshot_done: Option<bool>,
    pub applied: Option<f64>,
    pub consumer_lag: Option<f64>,
}

/// One capture source.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub confirmed_lsn: Option<f64>,
    pub slot_lag_bytes: Option<f64>,
    pub binlog_file: Option<f64>,
    pub binlog_position: Option<f64>,
    pub binlog_lag_seconds: Option<f64>,
    pub snapshot_tables_remaining: Option<f64>,
    pub inflight: Option<f64>,
    pub errors: f64,
    pub tables: BTreeMap<String, TableStatus>,
}

/// One router's sink.
#[derive(Debug, Clone, Default)]
pub struct SinkStatus {
    pub batches: f64,
    pub last_source_ts: Option<f64>,
    pub errors: f64,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub endpoints: Vec<Endpoint>,
    pub sources: BTreeMap<String, SourceStatus>,
    pub sinks: BTreeMap<String, SinkStatus>,
    pub dead_letters: f64,
}

impl Status {
    /// Combines the samples of every endpoint.
    pub fn from_samples(endpoints: Vec<Endpoint>, samples: &[Sample]) -> Status {
        let mut status = Status {
            endpoints,
            ..Status::default()
        };
        // Sink-side figures are keyed by the source table; they are attached to the source
        // tables afterwards.
        let mut applied: BTreeMap<String, f64> = BTreeMap::new();
        let mut lag_by_topic: BTreeMap<String, f64> = BTreeMap::new();
        for s in samples {
            let name = s.name.as_str();
            if let Some(short) = name.strip_prefix("sluice_capture_") {
                let source = status
                    .sources
                    .entry(s.label("source").to_string())
                    .or_default();
                let table = || s.label("table").to_string();
                match short {
                    "events_total" => source.tables.entry(table()).or_default().captured += s.value,
                    "snapshot_rows_total" => {
                        *source
                            .tables
                            .entry(table())
                            .or_default()
                            .snapshot_rows
                            .get_or_insert(0.0) += s.value;
                    }
                    "snapshot_rows_expected" => {
                        source.tables.entry(table()).or_default().snapshot_expected = Some(s.value);
                    }
                    "snapshot_table_done" => {
                        source.tables.entry(table()).or_default().snapshot_done =
                            Some(s.value >= 1.0);
                    }
                    "confirmed_lsn" => source.confirmed_lsn = Some(s.value),
                    "slot_lag_bytes" => source.slot_lag_bytes = Some(s.value),
                    "binlog_confirmed_file" => source.binlog_file = Some(s.value),
                    "binlog_confirmed_position" => source.binlog_position = Some(s.value),
                    "binlog_lag_seconds" => source.binlog_lag_seconds = Some(s.value),
                    "snapshot_tables_remaining" => source.snapshot_tables_remaining = Some(s.value),
                    "inflight_events" => source.inflight = Some(s.value),
                    "errors_total" if s.label("kind") != "value" => source.errors += s.value,
                    _ => {}
                }
            } else if name == "sluice_sink_events_applied_total" {
                *applied.entry(s.label("table").to_string()).or_default() += s.value;
            } else if name == "sluice_router_consumer_lag_messages" {
                *lag_by_topic
                    .entry(s.label("topic").to_string())
                    .or_default() += s.value;
            } else if name == "sluice_router_dlq_total" {
                status.dead_letters += s.value;
            } else if let Some(short) = name.strip_prefix("sluice_router_") {
                let sink = status.sinks.entry(s.label("sink").to_string()).or_default();
                match short {
                    "batches_total" => sink.batches += s.value,
                    "last_applied_source_timestamp_seconds" => {
                        sink.last_source_ts = Some(sink.last_source_ts.unwrap_or(0.0).max(s.value));
                    }
                    "errors_total" => sink.errors += s.value,
                    _ => {}
                }
            }
        }
        status.sources.retain(|name, _| !name.is_empty());
        status.sinks.retain(|name, _| !name.is_empty());
        for source in status.sources.values_mut() {
            source.tables.retain(|name, _| !name.is_empty());
            for (name, table) in &mut source.tables {
                table.applied = applied.get(name).copied();
                let suffix = format!(".{name}");
                let lags: Vec<f64> = lag_by_topic
                    .iter()
                    .filter(|(topic, _)| topic.ends_with(&suffix))
                    .map(|(_, lag)| *lag)
                    .collect();
                if !lags.is_empty() {
                    table.consumer_lag = Some(lags.iter().sum());
                }
            }
        }
        status
    }

    /// Every endpoint answered and is ready.
    pub fn all_ready(&self) -> bool {
        self.endpoints
            .iter()
            .all(|e| matches!(e.readiness, Ok((true, _))))
    }
}

/// Reads `/readyz` and `/metrics` of each endpoint.
pub fn collect(endpoints: &[String]) -> Status {
    let mut answered = Vec::new();
    let mut samples = Vec::new();
    for url in endpoints {
        let readiness = http_get(url, "/readyz").map(|(code, body)| (code == 200, body));
        if readiness.is_ok() {
            if let Ok((200, body)) = http_get(url, "/metrics") {
                samples.extend(parse_metrics(&body));
            }
        }
        answered.push(Endpoint {
            url: url.clone(),
            readiness,
        });
    }
    Status::from_samples(answered, &samples)
}

/// A minimal HTTP/1.1 GET: our endpoints answer with a Content-Length and close.
fn http_get(endpoint: &str, path: &str) -> Result<(u16, String), String> {
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let timeout = Duration::from_secs(5);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{host}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{host}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{host}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{host}: not an HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{host}: not an HTTP response"))?;
    Ok((code, body.to_string()))
}

/// `1234567` → `1,234,567`.
pub(crate) fn count(v: f64) -> String {
    let digits = format!("{}", v.max(0.0).round() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(v: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

fn lsn(v: f64) -> String {
    let v = v as u64;
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "█".repeat(filled), "░".repeat(width - filled))
}

impl TableStatus {
    /// The snapshot column: `done`, `41% (4,100/10,000)`, `12,000 rows` without an estimate,
    /// or `-` when this process ran no snapshot of the table.
    fn snapshot(&self, bars: bool) -> String {
        match (
            self.snapshot_done,
            self.snapshot_rows,
            self.snapshot_expected,
        ) {
            (Some(true), rows, _) => format!("done {}", count(rows.unwrap_or(0.0))),
            (_, rows, Some(expected)) if expected > 0.0 => {
                let rows = rows.unwrap_or(0.0);
                let fraction = (rows / expected).min(1.0);
                let text = format!(
                    "{:>3.0}% ({}/~{})",
                    fraction * 100.0,
                    count(rows),
                    count(expected)
                );
                if bars {
                    format!("{} {text}", bar(fraction, 20))
                } else {
                    text
                }
            }
            (Some(false), rows, _) => format!("{} rows", count(rows.unwrap_or(0.0))),
            _ => "-".into(),
        }
    }
}

impl SourceStatus {
    fn position(&self) -> String {
        match (self.confirmed_lsn, self.binlog_file, self.binlog_position) {
            (Some(l), _, _) => format!("lsn {}", lsn(l)),
            (None, Some(f), Some(p)) => format!("binlog {:06}:{}", f as u64, p as u64),
            _ => "-".into(),
        }
    }

    fn lag(&self) -> String {
        match (self.slot_lag_bytes, self.binlog_lag_seconds) {
            (Some(b), _) => format!("slot {}", bytes(b)),
            (None, Some(s)) => format!("binlog {s:.0} s"),
            _ => "-".into(),
        }
    }

    fn state(&self) -> &'static str {
        match self.snapshot_tables_remaining {
            Some(r) if r > 0.0 => "snapshotting",
            _ if self.confirmed_lsn.is_some() || self.binlog_position.is_some() => "streaming",
            _ => "starting",
        }
    }
}

/// Unix seconds as `2026-11-23T09:41:07Z` (UTC).
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Lays rows out in columns, the first row being the header.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = widths[i] - cell.chars().count();
                format!("{cell}{}", " ".repeat(pad))
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The report as tables; `bars` draws snapshot progress bars (for a terminal).
pub fn render(status: &Status, bars: bool) -> String {
    let mut out = String::new();
    for e in &status.endpoints {
        match &e.readiness {
            Ok((ready, body)) => {
                out.push_str(&format!(
                    "{}  {}\n",
                    e.url,
                    if *ready { "ready" } else { "NOT READY" }
                ));
                for line in body.lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            Err(why) => out.push_str(&format!("{}  UNREACHABLE: {why}\n", e.url)),
        }
    }
    if !status.sources.is_empty() {
        let mut rows = vec![vec![
            "SOURCE".to_string(),
            "STATE".into(),
            "POSITION".into(),
            "LAG".into(),
            "IN FLIGHT".into(),
            "ERRORS".into(),
        ]];
        for (name, s) in &status.sources {
            rows.push(vec![
                name.clone(),
                s.state().into(),
                s.position(),
                s.lag(),
                s.inflight.map_or_else(|| "-".into(), count),
                count(s.errors),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
        let mut rows = vec![vec![
            "SOURCE".to_string(),
            "TABLE".into(),
            "SNAPSHOT".into(),
            "CAPTURED".into(),
            "APPLIED".into(),
            "CONSUMER LAG".into(),
        ]];
        for (name, s) in &status.sources {
            for (table_name, t) in &s.tables {
                rows.push(vec![
                    name.clone(),
                    table_name.clone(),
                    t.snapshot(bars),
                    count(t.captured),
                    t.applied.map_or_else(|| "-".into(), count),
                    t.consumer_lag.map_or_else(|| "-".into(), count),
                ]);
            }
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    if !status.sinks.is_empty() {
        let mut rows = vec![vec![
            "SINK".to_string(),
            "BATCHES".into(),
            "LAST APPLIED SOURCE COMMIT".into(),
            "ERRORS".into(),
        ]];
        for (name, s) in &status.sinks {
            let last = s.last_source_ts.map_or_else(
                || "-".into(),
                |ts| format!("{:.1} s ago", (now_secs() - ts).max(0.0)),
            );
            rows.push(vec![name.clone(), count(s.batches), last, count(s.errors)]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
        out.push_str(&format!("dead letters: {}\n", count(status.dead_letters)));
    }
    out
}

/// One plain line per source and table, for logs (a non-interactive `--watch`).
pub fn render_log_lines(status: &Status) -> String {
    let mut out = String::new();
    for e in &status.endpoints {
        let state = match &e.readiness {
            Ok((true, _)) => "ready".to_string(),
            Ok((false, body)) => format!("not ready ({})", body.trim().replace('\n', "; ")),
            Err(why) => format!("unreachable ({why})"),
        };
        out.push_str(&format!("endpoint={} {state}\n", e.url));
    }
    for (name, s) in &status.sources {
        out.push_str(&format!(
            "source={name} state={} position=\"{}\" lag=\"{}\" errors={}\n",
            s.state(),
            s.position(),
            s.lag(),
            s.errors
        ));
        for (table_name, t) in &s.tables {
            out.push_str(&format!(
                "source={name} table={table_name} snapshot=\"{}\" captured={} applied={} consumer_lag={}\n",
                t.snapshot(false),
                t.captured,
                t.applied.map_or_else(|| "-".into(), |v| v.to_string()),
                t.consumer_lag.map_or_else(|| "-".into(), |v| v.to_string()),
            ));
        }
    }
    if !status.sinks.is_empty() {
        out.push_str(&format!("dead_letters={}\n", status.dead_letters));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP sluice_capture_events_total Row change events
# TYPE sluice_capture_events_total counter
sluice_capture_events_total{source="pg",table="public.orders",op="c"} 1200
sluice_capture_events_total{source="pg",table="public.orders",op="r"} 4100
sluice_capture_snapshot_rows_total{source="pg",table="public.orders"} 4100
sluice_capture_snapshot_rows_expected{source="pg",table="public.orders"} 10000
sluice_capture_snapshot_table_done{source="pg",table="public.orders"} 0
sluice_capture_snapshot_tables_remaining{source="pg"} 1
sluice_capture_confirmed_lsn{source="pg"} 22817624
sluice_capture_slot_lag_bytes{source="pg"} 2048
sluice_capture_binlog_confirmed_file{source="maria"} 3
sluice_capture_binlog_confirmed_position{source="maria"} 1234
sluice_capture_binlog_lag_seconds{source="maria"} 0
sluice_capture_events_total{source="maria",table="shop.items",op="c"} 7
sluice_capture_errors_total{source="maria",kind="value"} 2
sluice_sink_events_applied_total{sink="wh",table="public.orders",op="c"} 1000
sluice_sink_events_applied_total{sink="wh",table="public.orders",op="r"} 4000
sluice_router_consumer_lag_messages{topic="sluice.public.orders"} 300
sluice_router_dlq_total{topic="sluice.shop.items",reason="undecodable"} 1
sluice_router_batches_total{sink="wh"} 12
sluice_sink_batch_duration_seconds_bucket{sink="wh",le="+Inf"} 12
"#;

    #[test]
    fn parses_labels_with_escapes_and_special_values() {
        let s = parse_metrics(
            "a_b{x=\"q\\\"uote\",y=\"back\\\\slash\",} 1.5e3\nc +Inf\nd{le=\"+Inf\"} -Inf\n# x\nbroken{\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "a_b");
        assert_eq!(s[0].labels["x"], "q\"uote");
        assert_eq!(s[0].labels["y"], "back\\slash");
        assert_eq!(s[0].value, 1500.0);
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].labels["le"], "+Inf");
    }

    #[test]
    fn combines_capture_router_and_sink_figures_per_table() {
        let status = Status::from_samples(Vec::new(), &parse_metrics(SCRAPE));
        let pg = &status.sources["pg"];
        assert_eq!(pg.state(), "snapshotting");
        assert_eq!(pg.position(), "lsn 0/15C2B58");
        assert_eq!(pg.lag(), "slot 2.0 KiB");
        let orders = &pg.tables["public.orders"];
        assert_eq!(orders.captured, 5300.0);
        assert_eq!(orders.applied, Some(5000.0));
        assert_eq!(orders.consumer_lag, Some(300.0));
        assert_eq!(orders.snapshot(false), " 41% (4,100/~10,000)");
        assert!(orders.snapshot(true).starts_with("[████████░░░░░░░░░░░░]"));
        let maria = &status.sources["maria"];
        assert_eq!(maria.state(), "streaming");
        assert_eq!(maria.position(), "binlog 000003:1234");
        assert_eq!(maria.errors, 0.0, "value errors are not failures");
        assert_eq!(maria.tables["shop.items"].applied, None);
        assert_eq!(status.dead_letters, 1.0);
        assert_eq!(status.sinks["wh"].batches, 12.0);

        let text = render(&status, false);
        assert!(
            text.contains("pg      snapshotting  lsn 0/15C2B58"),
            "{text}"
        );
        assert!(
            text.contains("pg      public.orders   41% (4,100/~10,000)  5,300     5,000    300"),
            "{text}"
        );
        let lines = render_log_lines(&status);
        assert!(
            lines.contains("source=pg table=public.orders snapshot=\" 41% (4,100/~10,000)\" captured=5300 applied=5000 consumer_lag=300"),
            "{lines}"
        );
    }

    #[test]
    fn counts_and_sizes_read_as_people_write_them() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(5.5 * 1024.0 * 1024.0), "5.5 MiB");
        assert_eq!(lsn((1u64 << 32) as f64 + 255.0), "1/FF");
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_600.0), "2000-02-29T12:00:00Z");
        assert_eq!(rfc3339(1_795_426_867.0), "2026-11-23T09:41:07Z");
    }
}
