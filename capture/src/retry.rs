//! The reconnect loop every capture runs: retry transient errors with exponential backoff,
//! stop on definite ones, count both.

use std::future::Future;
use std::time::Duration;

use sluice_schemas::liveness::Liveness;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::metrics as m;
use crate::CaptureError;

/// Runs `once` until it returns `Ok` (a clean shutdown) or a definite error; after a transient
/// error, waits (500 ms doubling to 30 s) and runs it again, unless `shutdown` comes first.
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
    let mut backoff = Duration::from_millis(500);
    loop {
        match once().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                liveness.set_connected(e.dependency(), false);
                metrics::counter!(m::ERRORS_TOTAL, "source" => source.to_string(), "kind" => "transient")
                    .increment(1);
                warn!(error = %e, retry_in = ?backoff, "capture interrupted; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
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
