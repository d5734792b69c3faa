#!/usr/bin/env bash
# Measures capture's peak RSS while one transaction of N rows (default 5,000,000) streams
# through it into Kafka. Prints rows, seconds, rows/s and peak RSS. Not part of the test
# suite: a measurement, run by hand or by the benchmark command.
ROWS=${1:-5000000}
source "$(dirname "$0")/lib.sh"
chown postgres: "$WORK" 2>/dev/null || true
PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=$(free_port)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
CLEANUP+=("as_pg $PG_BIN/pg_ctl -D $WORK/pg -m immediate stop >/dev/null 2>&1")
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off -c max_wal_size=4GB" >/dev/null
psql() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
psql -d postgres -c "CREATE TABLE public.big (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2))"
start_tansu
start_capture "kind = \"postgres\"
url = \"postgresql://postgres@127.0.0.1:$PG_PORT/postgres\"
tables = [\"public.big\"]
slot = \"bench\"
publication = \"bench\""
echo "inserting $ROWS rows in one transaction"
psql -d postgres -c "INSERT INTO public.big SELECT i, i % 1000, md5(i::text), now(), i / 100.0 FROM generate_series(1, $ROWS) i"
report "$ROWS"
