#!/usr/bin/env bash
# Compares the PostgreSQL sink's set-based `unnest` upsert with COPY into a temporary table
# followed by the same set-based upsert (issue #6: measure both, keep the faster). Starts its
# own PostgreSQL; prints rows/s per method for inserts and for upserts of existing rows.
# Usage: tests/bench/sink_upsert_methods.sh [ROWS] [BATCH]
set -euo pipefail
ROWS=${1:-200000}
BATCH=${2:-5000}
cd "$(dirname "$0")/../.."
deploy/local/prereqs.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p sluice-sinks --example upsert_methods >/dev/null 2>&1
WORK=$(mktemp -d)
chown postgres: "$WORK" 2>/dev/null || true
PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
trap 'as_pg $PG_BIN/pg_ctl -D $WORK/pg -m immediate stop >/dev/null 2>&1; rm -rf $WORK' EXIT
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c max_wal_size=4GB" >/dev/null
target/release/examples/upsert_methods "postgresql://postgres@127.0.0.1:$PG_PORT/postgres" "$ROWS" "$BATCH"
