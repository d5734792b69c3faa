#!/usr/bin/env bash
# Runs Sluice's whole test suite: unit tests and end-to-end tests against real PostgreSQL,
# MariaDB and Tansu, which the harness starts on free ports in temporary directories.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/prereqs.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --all-targets --locked
