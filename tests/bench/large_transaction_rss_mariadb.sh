#!/usr/bin/env bash
# MariaDB variant of large_transaction_rss.sh: capture's peak RSS while one binlog
# transaction of N rows (default 5,000,000) streams through it into Kafka. Prints rows,
# seconds, rows/s and peak RSS. A measurement, not part of the test suite.
ROWS=${1:-5000000}
source "$(dirname "$0")/lib.sh"
MY_PORT=$(free_port)
mkdir "$WORK/tmp"
mariadb-install-db --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --auth-root-authentication-method=normal --skip-test-db --user=root >/dev/null
mariadbd --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --socket="$WORK/my.sock" --pid-file="$WORK/my.pid" \
  --port="$MY_PORT" --bind-address=127.0.0.1 --user=root --server-id=1 --log-bin="$WORK/binlog" \
  --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --innodb-buffer-pool-size=512M \
  --innodb-flush-log-at-trx-commit=2 --skip-name-resolve >"$WORK/mariadb.log" 2>&1 &
MY_PID=$!
CLEANUP+=("kill $MY_PID 2>/dev/null && wait $MY_PID 2>/dev/null")
sql() { mariadb --socket="$WORK/my.sock" -uroot --default-character-set=utf8mb4 -e "$1"; }
for _ in $(seq 1 100); do sql "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
sql "CREATE USER 'sluice'@'%' IDENTIFIED BY 'sluice'; GRANT ALL ON *.* TO 'sluice'@'%';
     CREATE DATABASE shop; CREATE TABLE shop.big (id bigint PRIMARY KEY, a int, b varchar(32), c timestamp(6), d decimal(12,2))"
start_tansu
start_capture "kind = \"mysql\"
url = \"mysql://sluice:sluice@127.0.0.1:$MY_PORT\"
tables = [\"shop.big\"]
server_id = 5999"
echo "inserting $ROWS rows in one transaction"
sql "INSERT INTO shop.big SELECT seq, seq % 1000, md5(seq), now(6), seq / 100 FROM shop.seq_1_to_$ROWS"
report "$ROWS"
