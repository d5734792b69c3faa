#!/usr/bin/env bash
# Installs Apache Kafka (the broker the test suite runs on) from Maven Central: the jars of
# `kafka_2.13` and its dependencies, plus a Log4j 2 backend, copied into a cache directory that
# the test harness reads (tests/harness/src/kafka.rs). Needs Java 17+ and Maven. Skipped when
# the jars are there already.
set -euo pipefail

KAFKA_VERSION=4.4.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lib="${SLUICE_KAFKA_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/kafka-$KAFKA_VERSION/lib}"

log() { printf '\033[1m[kafka]\033[0m %s\n' "$*" >&2; }

if [ -f "$lib/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  log "Apache Kafka $KAFKA_VERSION: present ($lib)"
  exit 0
fi
command -v java >/dev/null || { log "needs Java 17 or newer on PATH"; exit 1; }
command -v mvn >/dev/null || { log "needs Maven on PATH"; exit 1; }
log "installing Apache Kafka $KAFKA_VERSION from Maven Central into $lib"
tmp="$lib.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
mvn -q -B -f "$here/../../tests/kafka/pom.xml" dependency:copy-dependencies \
  -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp"
rm -rf "$lib"
mv "$tmp" "$lib"
log "Apache Kafka $KAFKA_VERSION: $(ls "$lib" | wc -l) jars"
