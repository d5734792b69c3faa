#!/usr/bin/env bash
# Measures capture's peak RSS while one transaction of N rows (default 5,000,000) streams
# through it into Kafka. Prints rows, seconds, rows/s and peak RSS. Not part of the test
# suite: a measurement, run by hand or by the benchmark command.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-5000000}
deploy/local/prereqs.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bin sluice >/dev/null 2>&1
WORK=$(mktemp -d)
chown postgres: "$WORK" 2>/dev/null || true
PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KAFKA_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  [ -n "${SLUICE_PID:-}" ] && kill "$SLUICE_PID" 2>/dev/null || true
  [ -n "${TANSU_PID:-}" ] && kill "$TANSU_PID" 2>/dev/null || true
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off -c max_wal_size=4GB" >/dev/null
psql() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
psql -d postgres -c "CREATE TABLE public.big (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2))"
(cd "$WORK" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1) &
TANSU_PID=$!
cat >"$WORK/sluice.toml" <<TOML
[kafka]
bootstrap_servers = "127.0.0.1:$KAFKA_PORT"
[sources.bench]
kind = "postgres"
url = "postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
tables = ["public.big"]
slot = "bench"
publication = "bench"
snapshot = "never"
[observability]
listen = "127.0.0.1:$METRICS_PORT"
log_level = "warn"
TOML
target/release/sluice capture --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break; sleep 0.2; done
sleep 2
echo "inserting $ROWS rows in one transaction"
psql -d postgres -c "INSERT INTO public.big SELECT i, i % 1000, md5(i::text), now(), i / 100.0 FROM generate_series(1, $ROWS) i"
start=$(date +%s.%N)
events() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^sluice_capture_events_total/ {s += $2} END {print s + 0}'; }
while [ "$(events)" -lt "$ROWS" ]; do sleep 1; kill -0 "$SLUICE_PID" || { echo "capture exited"; tail "$WORK/sluice.log"; exit 1; }; done
end=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SLUICE_PID/status")
python3 - "$ROWS" "$start" "$end" "$hwm" <<'PY'
import sys
rows, start, end, hwm = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
secs = end - start
print(f"rows={rows} seconds={secs:.1f} rows_per_s={rows/secs:,.0f} capture_peak_rss_mib={hwm/1024:.1f}")
PY
