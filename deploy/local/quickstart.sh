#!/usr/bin/env bash
# Sluice on one machine: installs what is missing, starts PostgreSQL (wal_level=logical),
# MariaDB (binlog ROW) and Tansu (Kafka protocol) under .sluice-local/ on non-default ports,
# creates a demo table, runs `sluice run`, makes changes at the source and shows them
# arriving in the sink. Everything stops at the end; pass --keep to leave it running, and
# --stop later to stop what --keep left running.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STATE=$ROOT/.sluice-local
KEEP=${1:-}

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
  echo "stopped sluice, Tansu, MariaDB and PostgreSQL under .sluice-local/"
  exit 0
fi

mkdir -p "$STATE"
stop_all

deploy/local/prereqs.sh
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

say "demo databases: shop (source) and warehouse (sink); table public.orders"
psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'shop'" | grep -q 1 || psql_ -d postgres -c "CREATE DATABASE shop"
psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'warehouse'" | grep -q 1 || psql_ -d postgres -c "CREATE DATABASE warehouse"
psql_ -d shop -c "CREATE TABLE IF NOT EXISTS public.orders (
  id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), status text, placed_at timestamptz DEFAULT now())"

cat >"$STATE/sluice.toml" <<TOML
[kafka]
bootstrap_servers = "127.0.0.1:$KAFKA_PORT"
topic_prefix = "demo"

[kafka.properties]
# Tansu 0.6 holds every fetch for up to this long even when it has data (Kafka answers at once).
"fetch.wait.max.ms" = "10"

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
instance_id = "quickstart-router"
# Tansu 0.6 answers a fetch that starts inside a record batch with nothing; read such a
# partition again from earlier. (Leave this out on Apache Kafka.)
fetch_stall_recovery = true

[observability]
listen = "127.0.0.1:$METRICS_PORT"
TOML

say "starting: sluice run --config .sluice-local/sluice.toml (log: .sluice-local/sluice.log)"
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
    echo "in sync after ~$((i / 5)).$((i % 5 * 2))s"; synced=1; break
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
