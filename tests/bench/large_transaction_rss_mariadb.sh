#!/usr/bin/env bash
# MariaDB variant of large_transaction_rss.sh: capture's peak RSS while one binlog
# transaction of N rows (default 5,000,000) streams through it into Kafka. Prints rows,
# seconds, rows/s and peak RSS. A measurement, not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-5000000}
deploy/local/prereqs.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bin sluice >/dev/null 2>&1
WORK=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MY_PORT=$(free_port); KAFKA_PORT=$(free_port); METRICS_PORT=$(free_port)
cleanup() {
  [ -n "${SLUICE_PID:-}" ] && kill "$SLUICE_PID" 2>/dev/null || true
  [ -n "${TANSU_PID:-}" ] && kill "$TANSU_PID" 2>/dev/null || true
  [ -n "${MY_PID:-}" ] && kill "$MY_PID" 2>/dev/null && wait "$MY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir "$WORK/tmp"
mariadb-install-db --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --auth-root-authentication-method=normal --skip-test-db --user=root >/dev/null
mariadbd --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --socket="$WORK/my.sock" --pid-file="$WORK/my.pid" \
  --port="$MY_PORT" --bind-address=127.0.0.1 --user=root --server-id=1 --log-bin="$WORK/binlog" \
  --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --innodb-buffer-pool-size=512M \
  --innodb-flush-log-at-trx-commit=2 --skip-name-resolve >"$WORK/mariadb.log" 2>&1 &
MY_PID=$!
sql() { mariadb --socket="$WORK/my.sock" -uroot --default-character-set=utf8mb4 -e "$1"; }
for _ in $(seq 1 100); do sql "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
sql "CREATE USER 'sluice'@'%' IDENTIFIED BY 'sluice'; GRANT ALL ON *.* TO 'sluice'@'%';
     CREATE DATABASE shop; CREATE TABLE shop.big (id bigint PRIMARY KEY, a int, b varchar(32), c timestamp(6), d decimal(12,2))"
(cd "$WORK" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1) &
TANSU_PID=$!
cat >"$WORK/sluice.toml" <<TOML
[kafka]
bootstrap_servers = "127.0.0.1:$KAFKA_PORT"
[sources.bench]
kind = "mysql"
url = "mysql://sluice:sluice@127.0.0.1:$MY_PORT"
tables = ["shop.big"]
server_id = 5999
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
sql "INSERT INTO shop.big SELECT seq, seq % 1000, md5(seq), now(6), seq / 100 FROM shop.seq_1_to_$ROWS"
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
