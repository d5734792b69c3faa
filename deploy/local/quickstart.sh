#!/usr/bin/env bash
# Sluice on one machine: installs what is missing, starts PostgreSQL (wal_level=logical) under
# .sluice-local/ on a non-default port, creates a demo table, runs `sluice run` in local mode
# (no broker: capture → schemes → sink in one process), makes changes at the source and shows
# them arriving in the sink. Everything stops at the end.
#
#   quickstart.sh           local mode (the default): PostgreSQL → Sluice → PostgreSQL
#   quickstart.sh --kafka   through a broker: also starts MariaDB and Tansu (a Kafka-protocol
#                           broker, built with `cargo install` the first time, ~10 minutes)
#   --keep                  leave everything running; --stop stops what --keep left running
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STATE=$ROOT/.sluice-local
KAFKA=0
KEEP=
for arg in "$@"; do
  case "$arg" in
    --kafka) KAFKA=1 ;;
    --keep|--stop) KEEP=$arg ;;
    *) echo "usage: quickstart.sh [--kafka] [--keep|--stop]" >&2; exit 2 ;;
  esac
done

PG_PORT=${SLUICE_PG_PORT:-54329}
MARIADB_PORT=${SLUICE_MARIADB_PORT:-33069}
KAFKA_PORT=${SLUICE_KAFKA_PORT:-19092}
METRICS_PORT=${SLUICE_METRICS_PORT:-19464}
PG_BIN=/usr/lib/postgresql/15/bin

say() { printf '\n\033[1;34m==>\033[0m \033[1m%s\033[0m\n' "$*"; }


as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

stop_all() {
  [ -f "$STATE/sluice.pid" ] && kill "$(cat "$STATE/sluice.pid")" 2>/dev/null && sleep 1 || true
  [ -f "$STATE/tansu.pid" ] && kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
  [ -f "$STATE/mariadb/mariadb.pid" ] && kill "$(cat "$STATE/mariadb/mariadb.pid")" 2>/dev/null || true
  [ -d "$STATE/pg/data" ] && as_postgres "$PG_BIN/pg_ctl" -D "$STATE/pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -f "$STATE"/*.pid
}

if [ "$KEEP" = "--stop" ]; then
  stop_all
  echo "stopped what ran under .sluice-local/"
  exit 0
fi

mkdir -p "$STATE"
stop_all

if [ "$KAFKA" = 1 ]; then deploy/local/prereqs.sh --tansu; else deploy/local/prereqs.sh --local; fi
export PATH="$HOME/.cargo/bin:$PATH"

say "building sluice (release)"
cargo build --release --locked --bin sluice
SLUICE=$ROOT/target/release/sluice

say "PostgreSQL 15 on port $PG_PORT (wal_level=logical)"
if [ ! -d "$STATE/pg/data" ]; then
  mkdir -p "$STATE/pg"
  [ "$(id -u)" -eq 0 ] && chown -R postgres: "$STATE/pg"
  as_postgres "$PG_BIN/initdb" -D "$STATE/pg/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
fi
as_postgres "$PG_BIN/pg_ctl" -D "$STATE/pg/data" -l "$STATE/pg/postgres.log" -w start \
  -o "-p $PG_PORT -k $STATE/pg -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10" >/dev/null

if [ "$KAFKA" = 1 ]; then
say "MariaDB on port $MARIADB_PORT (binlog ROW, full image and metadata; ready for MySQL sources)"
mkdir -p "$STATE/mariadb"
if [ ! -d "$STATE/mariadb/data" ]; then
  mariadb-install-db --no-defaults --datadir="$STATE/mariadb/data" --auth-root-authentication-method=normal \
    --skip-test-db --user="$(id -un)" >/dev/null
fi
mariadbd --no-defaults --datadir="$STATE/mariadb/data" --socket="$STATE/mariadb/mysqld.sock" \
  --pid-file="$STATE/mariadb/mariadb.pid" --port="$MARIADB_PORT" --bind-address=127.0.0.1 --user="$(id -un)" \
  --log-bin="$STATE/mariadb/binlog" --server-id=1 --binlog-format=ROW --binlog-row-image=FULL \
  --binlog-row-metadata=FULL >"$STATE/mariadb/mariadb.log" 2>&1 &
for _ in $(seq 1 100); do mariadb --socket="$STATE/mariadb/mysqld.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done

say "Tansu (Kafka protocol) on port $KAFKA_PORT, sqlite storage"
(cd "$STATE" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine sqlite://tansu.db >"$STATE/tansu.log" 2>&1) &
echo $! >"$STATE/tansu.pid"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.2; done
fi

say "demo databases: shop (source) and warehouse (sink); table public.orders"
psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'shop'" | grep -q 1 || psql_ -d postgres -c "CREATE DATABASE shop"
psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'warehouse'" | grep -q 1 || psql_ -d postgres -c "CREATE DATABASE warehouse"
psql_ -d shop -c "CREATE TABLE IF NOT EXISTS public.orders (
  id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), status text, placed_at timestamptz DEFAULT now())"

if [ "$KAFKA" = 1 ]; then
  TRANSPORT="[kafka]
bootstrap_servers = \"127.0.0.1:$KAFKA_PORT\"
topic_prefix = \"demo\"

[kafka.properties]
# Tansu 0.6 holds every fetch for up to this long even when it has data (Kafka answers at once).
\"fetch.wait.max.ms\" = \"10\""
  ROUTER_EXTRA="instance_id = \"quickstart-router\"
# Tansu 0.6 answers a fetch that starts inside a record batch with nothing; read such a
# partition again from earlier. (Leave this out on Apache Kafka.)
fetch_stall_recovery = true"
else
  TRANSPORT="# No [kafka] section: local mode. Capture state, schemas and dead letters are kept here.
[local]
state_dir = \"state\""
  ROUTER_EXTRA=""
fi

cat >"$STATE/sluice.toml" <<TOML
$TRANSPORT

[sources.shop]
kind = "postgres"
url = "postgresql://postgres@127.0.0.1:$PG_PORT/shop"
tables = ["public.orders"]
slot = "sluice_shop"
publication = "sluice_shop"

[sinks.warehouse]
kind = "postgres"
url = "postgresql://postgres@127.0.0.1:$PG_PORT/warehouse"

[router]
sink = "warehouse"
$ROUTER_EXTRA

[observability]
listen = "127.0.0.1:$METRICS_PORT"
TOML

say "starting: sluice run --config .sluice-local/sluice.toml (log: .sluice-local/sluice.log)"
started=$(date +%s.%N)
"$SLUICE" run --config "$STATE/sluice.toml" >"$STATE/sluice.log" 2>&1 &
echo $! >"$STATE/sluice.pid"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break; sleep 0.2; done

say "changing the source: 5 inserts, 2 updates, 1 delete"
run_id=$(date +%s)
psql_ -d shop -c "INSERT INTO public.orders (id, customer, amount, status)
  SELECT $run_id::bigint * 10 + i, 'customer ' || i, i * 9.99, 'new' FROM generate_series(1, 5) i"
psql_ -d shop -c "UPDATE public.orders SET status = 'paid', amount = amount + 1 WHERE id IN ($run_id::bigint * 10 + 1, $run_id::bigint * 10 + 2)"
psql_ -d shop -c "DELETE FROM public.orders WHERE id = $run_id::bigint * 10 + 5"

say "waiting for the sink to match the source"
query="SELECT id, customer, amount, status FROM public.orders ORDER BY id"
for i in $(seq 1 150); do
  if [ "$(psql_ -d shop -tAc "$query")" = "$(psql_ -d warehouse -tAc "$query" 2>/dev/null)" ]; then
    echo "in sync $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }") s after sluice started"; synced=1; break
  fi
  sleep 0.2
done
[ "${synced:-}" = 1 ] || { echo "sink did not catch up; see .sluice-local/sluice.log"; tail -20 "$STATE/sluice.log"; stop_all; exit 1; }

echo; echo "source (shop.public.orders):"; psql_ -d shop -c "$query"
echo "sink (warehouse.public.orders):"; psql_ -d warehouse -c "$query"
echo "metrics (http://127.0.0.1:$METRICS_PORT/metrics):"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^sluice_(capture_events_total|sink_events_applied_total)' || true

if [ "$KEEP" = "--keep" ]; then
  say "left running: make changes in 'shop' and watch 'warehouse'; stop everything with: deploy/local/quickstart.sh --stop"
  echo "  psql -h 127.0.0.1 -p $PG_PORT -U postgres shop"
else
  say "stopping (run with --keep to leave everything running)"
  stop_all
fi
