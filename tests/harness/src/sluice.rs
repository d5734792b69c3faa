use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::ChildGuard;
use crate::{wait_until, Result};

/// A `sluice` process started with a config file; killed when dropped.
pub struct SluiceProcess {
    guard: ChildGuard,
    log: PathBuf,
    /// Where this process's part of `log` begins (a restarted process appends to the log of
    /// the one before).
    log_start: usize,
    pub metrics_port: u16,
}

impl SluiceProcess {
    /// Starts `bin <subcommand> --config <config>` with logs in `log`, and waits for `/healthz`.
    pub fn start(
        bin: &Path,
        subcommand: &str,
        config: &Path,
        log: &Path,
        metrics_port: u16,
    ) -> Result<SluiceProcess> {
        SluiceProcess::start_with_env(bin, subcommand, config, log, metrics_port, &[])
    }

    /// [`SluiceProcess::start`] with extra environment variables.
    pub fn start_with_env(
        bin: &Path,
        subcommand: &str,
        config: &Path,
        log: &Path,
        metrics_port: u16,
        env: &[(&str, &str)],
    ) -> Result<SluiceProcess> {
        let mut cmd = Command::new(bin);
        if crate::Broker::configured_is_tansu() {
            // Tansu 0.6's empty answers to fetches inside a record batch need the router's
            // workaround (off by default, for Apache Kafka).
            cmd.env("SLUICE_ROUTER_FETCH_STALL_RECOVERY", "true");
        }
        cmd.envs(env.iter().copied());
        cmd.arg(subcommand).arg("--config").arg(config).env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let log_start = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
        let guard = ChildGuard::spawn("sluice", cmd, log, None, libc::SIGTERM)?;
        let mut p = SluiceProcess {
            guard,
            log: log.to_path_buf(),
            log_start,
            metrics_port,
        };
        let port = metrics_port;
        let mut exited = false;
        let started = wait_until("sluice /healthz", Duration::from_secs(60), || {
            // A process that already stopped will never be healthy: stop waiting.
            exited = p.guard.has_exited();
            exited || http_get(port, "/healthz").is_some_and(|(status, _)| status == 200)
        });
        if exited || started.is_err() {
            let why = started
                .err()
                .unwrap_or_else(|| "sluice exited before /healthz".into());
            return Err(format!("{why} (exited: {exited}); log:\n{}", p.log()));
        }
        Ok(p)
    }

    /// Writes `config` (a sluice.toml without an `[observability]` table) to `dir/sluice.toml`
    /// with a free metrics port, and starts `bin <subcommand>` on it, logging to `dir/log`.
    /// Returns the process and the config's path.
    pub fn start_in(
        bin: &Path,
        subcommand: &str,
        dir: &Path,
        config: &str,
    ) -> Result<(SluiceProcess, PathBuf)> {
        let port = crate::free_port();
        let path = dir.join("sluice.toml");
        std::fs::write(
            &path,
            format!("{config}\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .map_err(|e| format!("write {}: {e}", path.display()))?;
        let process = SluiceProcess::start(bin, subcommand, &path, &dir.join("log"), port)?;
        Ok((process, path))
    }

    /// Runs sluice expecting it to stop on its own (a definite error) within 60 s, reading its
    /// `/metrics` meanwhile (a failed process serves the failure until it is read); returns its
    /// log. Panics when it keeps running. (A failed process gives the others up to
    /// `shutdown.drain_timeout_ms` + 5 s, 35 s by default, to stop: a router leaving its group
    /// in the middle of a rebalance on a loaded machine has taken that long.)
    pub fn run_until_exit(
        bin: &Path,
        subcommand: &str,
        config: &Path,
        log: &Path,
        metrics_port: u16,
        env: &[(&str, &str)],
    ) -> String {
        let mut sluice =
            match SluiceProcess::start_with_env(bin, subcommand, config, log, metrics_port, env) {
                Ok(sluice) => sluice,
                // It stopped before it was ever healthy; the error carries its log.
                Err(e) => return e,
            };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !sluice.has_exited() {
            assert!(
                std::time::Instant::now() < deadline,
                "sluice must stop on a definite error\n{}",
                sluice.log()
            );
            // Read as Prometheus would: a failed process waits for that before it exits.
            let _ = try_http_get(sluice.metrics_port, "/metrics");
            std::thread::sleep(Duration::from_millis(100));
        }
        sluice.log()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until this process has logged `needle` (for example `starting replication`: changes
    /// written after it are streamed, not read by the snapshot); panics with the log after
    /// `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        // Only what this process logged: an earlier start's line must not count.
        while !self
            .log()
            .get(self.log_start..)
            .unwrap_or("")
            .contains(needle)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "sluice never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Prometheus text from `/metrics`; a failed request is tried again (up to five
    /// times, 200 ms apart) before giving up.
    pub fn metrics(&self) -> Option<String> {
        for attempt in 1..=5 {
            match try_http_get(self.metrics_port, "/metrics") {
                Ok((_, body)) => return Some(body),
                Err(e) => {
                    eprintln!("GET /metrics failed (attempt {attempt}): {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        None
    }

    /// The value of `name{labels}` (summed over other labels; 0 when absent). Panics with the
    /// log when `/metrics` cannot be read.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .metrics()
            .unwrap_or_else(|| panic!("no /metrics\n--- sluice log ---\n{}", self.log()));
        metric_value(&text, name, labels).unwrap_or(0.0)
    }

    /// Waits up to `timeout` until `name{labels}` satisfies `ok` (described by `what` in the
    /// failure, with the last value and the log).
    pub fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        what: &str,
        ok: impl Fn(f64) -> bool,
    ) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels);
            if ok(value) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}{labels:?} never became {what} within {timeout:?} (is {value})\n\
                 --- sluice log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, as an orchestrator stopping a pod would; waits up to `grace` for the exit
    /// status (then kills it, and the status says so).
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.guard.stop(grace)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.guard.kill9();
    }

    pub fn has_exited(&mut self) -> bool {
        self.guard.has_exited()
    }

    /// The process id, while it runs (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.guard.pid()
    }
}

/// A minimal HTTP GET on 127.0.0.1; `(status, body)`.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    try_http_get(port, path).ok()
}

/// [`http_get`], saying why it failed.
pub fn try_http_get(port: u16, path: &str) -> std::result::Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // One write: `write!` would send the pieces separately.
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "no status line in {:?}",
                response.chars().take(200).collect::<String>()
            )
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of a Prometheus sample whose name and labels all match, summed over the rest.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    total
}
