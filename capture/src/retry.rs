//! The reconnect loop every capture runs: retry transient errors with exponential backoff,
//! stop on definite ones, count both.

use std::future::Future;
use std::time::Duration;

use sluice_schemas::liveness::{Backoff, Liveness};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics as m;

/// How long a capture must have run before its failure no longer counts as following the
/// previous one.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
use crate::CaptureError;

/// Runs `once` until it returns `Ok` (a clean shutdown) or a definite error; after a transient
/// error, waits ([`Backoff`]) and runs it again, unless `shutdown` comes first. A run that
/// lasted [`HEALTHY_RUN`] counts as a success: the next failure is retried soon again.
pub async fn with_backoff<F, Fut>(
    source: &str,
    liveness: &Liveness,
    shutdown: &CancellationToken,
    mut once: F,
) -> Result<(), CaptureError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), CaptureError>>,
{
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let result = once().await;
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        match result {
            Ok(()) => return Ok(()),
            // Cut short by the shutdown itself: the next start goes on from the confirmed position.
            Err(e) if e.is_transient() && shutdown.is_cancelled() => {
                info!(error = %e, "capture stopped by the shutdown before it got further");
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                liveness.set_connected(e.dependency(), false);
                metrics::counter!(m::ERRORS_TOTAL, "source" => source.to_string(), "kind" => "transient")
                    .increment(1);
                let wait = backoff.next_wait();
                warn!(error = %e, retry_in = ?wait, "capture interrupted; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => {
                liveness.set_connected(e.dependency(), false);
                metrics::counter!(m::ERRORS_TOTAL, "source" => source.to_string(), "kind" => "definite")
                    .increment(1);
                error!(error = %e, "capture stopped");
                return Err(e);
            }
        }
    }
}
