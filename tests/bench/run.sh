#!/usr/bin/env bash
# Sluice's benchmarks in one command (BENCHMARKS.md): starts its own PostgreSQL, MariaDB and
# Tansu, measures each Sluice figure beside this machine's own tools on the same data, prints a
# table and writes target/bench/results.json. Sizes: SLUICE_BENCH_ROWS (1,000,000),
# SLUICE_BENCH_BIG_ROWS (5,000,000), SLUICE_BENCH_LATENCY_RATE (5,000 rows/s),
# SLUICE_BENCH_LATENCY_SECS (30); SLUICE_BENCH_ONLY=pg,maria,router,latency,rss runs a part.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/prereqs.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
echo "building (release)..." >&2
cargo build --release --locked --bin sluice --bin sluice-bench -p sluice -p sluice-harness >&2
exec target/release/sluice-bench --sluice target/release/sluice --out target/bench/results.json "$@"
