# Shared steps of the capture benchmarks (source this file): build, a work directory cleaned
# on exit, free ports, Tansu, `sluice capture` with a given source, and the report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/prereqs.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bin sluice >/dev/null 2>&1
WORK=$(mktemp -d)
CLEANUP=()  # commands run on exit, last first
on_exit() {
  [ -n "${SLUICE_PID:-}" ] && kill "$SLUICE_PID" 2>/dev/null || true
  [ -n "${TANSU_PID:-}" ] && kill "$TANSU_PID" 2>/dev/null || true
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
  rm -rf "$WORK"
}
trap on_exit EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KAFKA_PORT=$(free_port)
METRICS_PORT=$(free_port)

start_tansu() {
  (cd "$WORK" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
    >"$WORK/tansu.log" 2>&1) &
  TANSU_PID=$!
}

# start_capture SOURCE_TOML: runs `sluice capture` with the given [sources.bench] body.
start_capture() {
  cat >"$WORK/sluice.toml" <<TOML
[kafka]
bootstrap_servers = "127.0.0.1:$KAFKA_PORT"
[kafka.properties]
# Tansu 0.6 holds every fetch for up to this long even when it has data (Kafka answers at once).
"fetch.wait.max.ms" = "10"
[sources.bench]
$1
snapshot = "never"
[observability]
listen = "127.0.0.1:$METRICS_PORT"
log_level = "warn"
TOML
  target/release/sluice capture --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
  SLUICE_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break; sleep 0.2; done
  sleep 2
}

# report ROWS: waits until capture has published ROWS events, then prints the rate and its
# peak RSS, timed from this call (the source transaction has committed by then).
report() {
  local rows=$1 start end hwm
  start=$(date +%s.%N)
  events() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^sluice_capture_events_total/ {s += $2} END {print s + 0}'; }
  while [ "$(events)" -lt "$rows" ]; do
    sleep 1
    kill -0 "$SLUICE_PID" || { echo "capture exited"; tail "$WORK/sluice.log"; exit 1; }
  done
  end=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SLUICE_PID/status")
  python3 - "$rows" "$start" "$end" "$hwm" <<'PY'
import sys
rows, start, end, hwm = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
secs = end - start
print(f"rows={rows} seconds={secs:.1f} rows_per_s={rows/secs:,.0f} capture_peak_rss_mib={hwm/1024:.1f}")
PY
}
