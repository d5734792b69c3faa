//! Logs, metrics and the HTTP endpoints every Sluice process serves:
//! `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (every component connected,
//! none stalled, none failed; the body says which is which).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluice_schemas::liveness::Liveness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{LogFormat, ObservabilityConfig};

/// Readiness of one process: every component it runs is connected and none is stalled (see
/// [`Liveness`]), and none has failed.
#[derive(Debug)]
pub struct Health {
    components: Mutex<Vec<Arc<Liveness>>>,
    stall_after: Duration,
    failed: AtomicBool,
    /// Told when `/metrics` is read after a component failed: the failure has been seen.
    failure_scraped: tokio::sync::Notify,
}

impl Health {
    pub fn new(stall_after: Duration) -> Health {
        Health {
            components: Mutex::new(Vec::new()),
            stall_after,
            failed: AtomicBool::new(false),
            failure_scraped: tokio::sync::Notify::new(),
        }
    }

    /// A component this process runs, depending on `needs`; it is not ready until it reports
    /// each of them connected.
    pub fn component(&self, name: &str, needs: &[&'static str]) -> Arc<Liveness> {
        let liveness = Arc::new(Liveness::new(name, needs));
        self.components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(liveness.clone());
        liveness
    }

    pub fn failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Waits until `/metrics` has been read since a component failed.
    pub async fn failure_scraped(&self) {
        self.failure_scraped.notified().await;
    }

    fn scraped(&self) {
        if self.failed.load(Ordering::SeqCst) {
            self.failure_scraped.notify_one();
        }
    }

    /// Whether the process is ready, and a line per component saying why or why not.
    pub fn report(&self) -> (bool, String) {
        let mut ready = !self.failed.load(Ordering::SeqCst);
        let mut body = String::new();
        if !ready {
            body.push_str("a component failed\n");
        }
        for c in self
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            match c.check(self.stall_after) {
                Ok(()) => body.push_str(&format!("{}: ready\n", c.name())),
                Err(why) => {
                    ready = false;
                    body.push_str(&format!("{}: {why}\n", c.name()));
                }
            }
        }
        (ready, body)
    }
}

/// Installs the `tracing` subscriber.
pub fn init_logging(config: &ObservabilityConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// When this process started (Unix seconds): a value that changes tells a restart, which
/// alerts count (`SluiceRestarting`).
pub const PROCESS_START_TIME: &str = "sluice_process_start_time_seconds";

/// 1 for a component (`component` = `capture` or `router`, `name` = its source or sink) that
/// stopped on a definite error; the process exits after Prometheus has read it (see
/// `shutdown.linger_on_failure_ms`).
pub const COMPONENT_FAILED: &str = "sluice_component_failed";

/// `[verify]` runs inside `sluice run` / `sluice route`: per compared table (`source`, `table`)
/// what the last run found — rows at the source, and rows missing from, extra at and differing
/// in the sink, rows that were still in flight — whether it could not be compared, and per run
/// when it ended, how long it took and how it came out (`outcome`: `equal`, `different`,
/// `error`).
pub const VERIFY_ROWS_CHECKED: &str = "sluice_verify_rows_checked";
pub const VERIFY_ROWS_MISSING: &str = "sluice_verify_rows_missing";
pub const VERIFY_ROWS_EXTRA: &str = "sluice_verify_rows_extra";
pub const VERIFY_ROWS_DIFFERING: &str = "sluice_verify_rows_differing";
pub const VERIFY_ROWS_IN_FLIGHT: &str = "sluice_verify_rows_in_flight";
pub const VERIFY_NOT_COMPARED: &str = "sluice_verify_table_not_compared";
pub const VERIFY_LAST_RUN: &str = "sluice_verify_last_run_timestamp_seconds";
pub const VERIFY_RUN_SECONDS: &str = "sluice_verify_run_duration_seconds";
pub const VERIFY_RUNS_TOTAL: &str = "sluice_verify_runs_total";

/// Installs the Prometheus recorder and describes every metric.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    sluice_capture::metrics::describe();
    sluice_router::metrics::describe();
    sluice_sinks::metrics::describe();
    metrics::describe_gauge!(
        PROCESS_START_TIME,
        "When this process started, Unix seconds"
    );
    metrics::describe_gauge!(
        COMPONENT_FAILED,
        "1 for a component that stopped on a definite error"
    );
    for (name, help) in [
        (
            VERIFY_ROWS_CHECKED,
            "Rows of the source table the last scheduled verify compared",
        ),
        (
            VERIFY_ROWS_MISSING,
            "Rows at the source and not at the sink, last scheduled verify",
        ),
        (
            VERIFY_ROWS_EXTRA,
            "Rows at the sink and not at the source, last scheduled verify",
        ),
        (
            VERIFY_ROWS_DIFFERING,
            "Rows whose values differ, last scheduled verify",
        ),
        (
            VERIFY_ROWS_IN_FLIGHT,
            "Rows that differed and settled while verify waited, last run",
        ),
        (
            VERIFY_NOT_COMPARED,
            "1 when the last scheduled verify could not compare the table",
        ),
        (
            VERIFY_LAST_RUN,
            "When the last scheduled verify ended, Unix seconds",
        ),
        (
            VERIFY_RUN_SECONDS,
            "How long the last scheduled verify took",
        ),
    ] {
        metrics::describe_gauge!(name, help);
    }
    metrics::describe_counter!(VERIFY_RUNS_TOTAL, "Scheduled verify runs, by outcome");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(PROCESS_START_TIME).set(started);
    Ok(handle)
}

/// Serves the endpoints until `shutdown`.
pub async fn serve(
    listen: &str,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    // Without the exporter's own HTTP listener, histograms must be drained periodically or
    // their samples accumulate without bound.
    let upkeep = tokio::spawn({
        let handle = handle.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        }
    });
    let _upkeep = AbortOnDrop(upkeep);
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    loop {
        let (mut socket, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { warn!(error = %e, "accept failed"); continue; }
            },
        };
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            // Read the whole request head: a client may send it in several segments, and
            // answering after the first one would cut the rest off (the client then sees a
            // reset connection).
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read_head = async {
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), read_head)
                .await
                .is_err()
            {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => {
                    let body = handle.render();
                    health.scraped();
                    ("200 OK", "text/plain; version=0.0.4", body)
                }
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" => match health.report() {
                    (true, body) => ("200 OK", "text/plain", body),
                    (false, body) => ("503 Service Unavailable", "text/plain", body),
                },
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
