#!/usr/bin/env bash
# Runs Sluice's whole test suite: unit tests and end-to-end tests against real PostgreSQL,
# MariaDB and Apache Kafka, which the harness starts on free ports in temporary directories.
# The suite runs on PostgreSQL 15 (Debian's); the tests whose source or sink is PostgreSQL
# run again on 18 (SLUICE_TEST_PG_MAJOR, see the README), so the oldest and newest verified
# majors are both proven on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/prereqs.sh
deploy/local/postgres.sh 13 16 17 18
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --all-targets --locked
SLUICE_TEST_PG_MAJOR=18 cargo test --locked -p sluice-harness --test services
SLUICE_TEST_PG_MAJOR=18 cargo test --locked \
  --test e2e_postgres --test pg_table_shapes --test e2e_schemas --test sink_evolution \
  --test pg_streaming --test local_mode
