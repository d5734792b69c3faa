//! What `sluice verify` shows on a terminal while it works: a line per table being compared —
//! its phase, a bar of the rows read so far against what both sides hold (when known), the
//! block ranges of a paced read, and an estimate of the time left — redrawn in place on
//! stderr. Off the terminal (a pipe, a log, `[verify]` inside `sluice run`) nothing is drawn:
//! the `key=value` lines and the summary are the output.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tables being compared, when drawn.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Board>>);

/// What is drawn: the tables in progress, and how many lines are on the screen.
#[derive(Default)]
struct Board {
    tables: Mutex<Vec<Arc<TableProgress>>>,
    drawn: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(drawn)"
        } else {
            "Progress(off)"
        })
    }
}

/// One table's progress (updated from its comparison, read by the drawing).
pub struct TableProgress {
    name: String,
    phase: Mutex<&'static str>,
    rows: AtomicU64,
    total: AtomicU64,
    chunks: AtomicU64,
    chunks_total: AtomicU64,
    started: Instant,
    done: AtomicBool,
    /// Drawn on a terminal: reads in one statement are split so that it can show them move.
    drawn: bool,
}

impl TableProgress {
    fn new(name: &str, drawn: bool) -> TableProgress {
        TableProgress {
            drawn,
            name: name.to_string(),
            phase: Mutex::new("starting"),
            rows: AtomicU64::new(0),
            total: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            chunks_total: AtomicU64::new(0),
            started: Instant::now(),
            done: AtomicBool::new(false),
        }
    }

    /// A new phase; its rows are counted from 0 against `total` (0: unknown).
    pub fn phase(&self, phase: &'static str, total: u64) {
        *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = phase;
        self.rows.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.chunks.store(0, Ordering::Relaxed);
        self.chunks_total.store(0, Ordering::Relaxed);
    }

    pub fn rows(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }

    /// A paced read (of one side) starts, in `n` block ranges.
    pub fn ranges(&self, n: u64) {
        self.chunks_total.fetch_add(n, Ordering::Relaxed);
    }

    /// One more block range is read.
    pub fn chunk(&self) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn done(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Whether the line is drawn (so a read worth showing is split into block ranges).
    pub fn drawn(&self) -> bool {
        self.drawn
    }

    /// Its line, `elapsed` into the current run.
    fn line(&self, width: usize) -> String {
        let phase = *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (rows, total) = (
            self.rows.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        let (chunks, of) = (
            self.chunks.load(Ordering::Relaxed),
            self.chunks_total.load(Ordering::Relaxed),
        );
        let elapsed = self.started.elapsed();
        let mut line = format!("{:<width$}  {phase:<14}", self.name);
        if total > 0 {
            let share = (rows as f64 / total as f64).min(1.0);
            let filled = (share * 24.0).round() as usize;
            line.push_str(&format!(
                " [{}{}] {}/{} rows",
                "#".repeat(filled),
                ".".repeat(24 - filled),
                thousands(rows.min(total)),
                thousands(total)
            ));
            if share > 0.02 && share < 1.0 {
                let left = elapsed.as_secs_f64() * (1.0 - share) / share;
                line.push_str(&format!("  ETA {}", seconds(Duration::from_secs_f64(left))));
            }
        } else if rows > 0 {
            line.push_str(&format!(" {} rows", thousands(rows)));
        }
        if of > 0 {
            line.push_str(&format!("  {chunks}/{of} ranges"));
        }
        line.push_str(&format!("  {}", seconds(elapsed)));
        line
    }
}

impl Progress {
    /// Drawn when stderr is a terminal (or `SLUICE_VERIFY_PROGRESS=always`: drawn anyway).
    pub fn on_terminal() -> Progress {
        let always = std::env::var("SLUICE_VERIFY_PROGRESS").is_ok_and(|v| v == "always");
        if always || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Progress::always()
        } else {
            Progress(None)
        }
    }

    /// Drawn wherever stderr goes.
    pub fn always() -> Progress {
        Progress(Some(Arc::new(Board::default())))
    }

    /// A table's progress, drawn until it is [`TableProgress::done`].
    pub fn table(&self, name: &str) -> Arc<TableProgress> {
        let table = Arc::new(TableProgress::new(name, self.0.is_some()));
        if let Some(board) = &self.0 {
            board
                .tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(table.clone());
        }
        table
    }

    /// Redraws the tables in progress every 250 ms until the returned task is aborted (the
    /// caller then calls [`Progress::clear`]).
    pub fn draw(&self) -> Option<tokio::task::JoinHandle<()>> {
        let board = self.0.clone()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let lines = {
                    let mut b = board
                        .tables
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    b.retain(|t| !t.done.load(Ordering::Relaxed));
                    render(&b)
                };
                let drawn = board.drawn.load(Ordering::Relaxed);
                board.drawn.store(redraw(drawn, &lines), Ordering::Relaxed);
            }
        }))
    }

    /// Removes what was drawn.
    pub fn clear(&self) {
        if let Some(board) = &self.0 {
            redraw(board.drawn.swap(0, Ordering::Relaxed), &[]);
        }
    }
}

/// The lines of the tables in progress.
fn render(tables: &[Arc<TableProgress>]) -> Vec<String> {
    let width = tables.iter().map(|t| t.name.len()).max().unwrap_or(0);
    tables.iter().map(|t| t.line(width)).collect()
}

/// Draws `lines` over the `drawn` drawn before; returns how many are drawn now.
fn redraw(drawn: usize, lines: &[String]) -> usize {
    let mut out = String::new();
    if drawn > 0 {
        out.push_str(&format!("\x1b[{drawn}F"));
    }
    out.push_str("\x1b[J");
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
    lines.len()
}

fn thousands(n: u64) -> String {
    crate::status::count(n as f64)
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_phase_rows_against_the_total_ranges_and_time() {
        let t = TableProgress::new("public.items", true);
        t.phase("hashing", 40_000);
        t.rows(10_000);
        t.ranges(4);
        t.chunk();
        let line = t.line(14);
        assert!(line.starts_with("public.items    hashing"), "{line}");
        assert!(
            line.contains("[######..................] 10,000/40,000 rows"),
            "{line}"
        );
        assert!(
            line.contains("ETA") && line.contains("1/4 ranges"),
            "{line}"
        );
        // Unknown total: the rows counted so far.
        t.phase("settling", 0);
        t.rows(1_234_567);
        assert!(
            t.line(0).contains("settling       1,234,567 rows"),
            "{}",
            t.line(0)
        );
        // Off the terminal nothing is kept to draw.
        let off = Progress::default();
        off.table("x").done();
        assert!(off.0.is_none());
    }
}
