#!/usr/bin/env bash
# Installs what Sluice's quickstart and tests need on a Debian machine with a Rust toolchain:
# PostgreSQL 15, MariaDB, the C toolchain bits librdkafka builds with (zlib, OpenSSL), Apache Kafka (jars from
# Maven Central) and Tansu (a
# Kafka-protocol broker) at the pinned version. Each step is skipped when already satisfied.
#
#   prereqs.sh           everything (the test suite, the benchmark)
#   prereqs.sh --local   only what the local-mode quickstart needs: PostgreSQL 15 and the build
#                        tools (no broker, no Java, no MariaDB)
#   prereqs.sh --tansu   the local set plus MariaDB and Tansu (the quickstart's --kafka path)
set -euo pipefail

SCOPE=${1:-all}
case "$SCOPE" in all|--local|--tansu) ;; *) echo "usage: prereqs.sh [--local|--tansu]" >&2; exit 2 ;; esac

TANSU_VERSION=0.6.0

log() { printf '\033[1m[prereqs]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; exit 1
  fi
}

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15 postgresql-client-15)
if [ "$SCOPE" != --local ]; then
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
fi
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
# librdkafka's TLS and SASL/SCRAM (rdkafka's `ssl` feature links the system OpenSSL).
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "$SCOPE" = all ]; then
  # The TLS tests make throwaway certificates with it.
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  # Apache Kafka runs on Java 17+, and its jars come from Maven Central.
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  # A workload none of us wrote, for the MariaDB end-to-end test.
  command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
fi

if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages: present"
fi

[ "$SCOPE" = --local ] && exit 0

export PATH="$HOME/.cargo/bin:$PATH"
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "tansu $TANSU_VERSION: present"
else
  # --locked: without it the build does not compile; dynostore gives memory storage,
  # libsql gives sqlite storage (survives restarts). About 10 minutes on 2 cores.
  log "installing tansu $TANSU_VERSION (about 10 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql,postgres
fi

[ "$SCOPE" = --tansu ] && exit 0

# A consumer built the way Debezium users build theirs (confluent-kafka's Avro deserializer and
# Schema Registry client), for the test that reads Sluice topics with it.
PY_VENV="${SLUICE_PY_VENV:-$HOME/.cache/sluice/py}"
CONFLUENT_KAFKA_VERSION=2.16.1
if "$PY_VENV/bin/python" -c "import confluent_kafka, fastavro, sys; sys.exit(confluent_kafka.__version__ != '$CONFLUENT_KAFKA_VERSION')" 2>/dev/null; then
  log "confluent-kafka $CONFLUENT_KAFKA_VERSION (python): present"
else
  log "installing confluent-kafka $CONFLUENT_KAFKA_VERSION with its Avro and Schema Registry extras into $PY_VENV"
  command -v python3 >/dev/null || { as_root apt-get install -y -qq python3 python3-venv; }
  python3 -m venv "$PY_VENV" || { as_root apt-get install -y -qq python3-venv && python3 -m venv "$PY_VENV"; }
  "$PY_VENV/bin/pip" install -q "confluent-kafka[avro,schemaregistry]==$CONFLUENT_KAFKA_VERSION"
fi

# Apache Kafka, the broker the tests run on (jars from Maven Central into a cache directory).
"$(dirname "${BASH_SOURCE[0]}")/kafka.sh"
