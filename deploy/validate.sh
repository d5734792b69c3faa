#!/usr/bin/env bash
# Validates what deploy/ ships with the tools its users' systems run: promtool for the alert
# rules, a JSON parse of the Grafana dashboard. (tests/deploy_assets.rs checks that both name
# only metrics Sluice exports.) Installs promtool (Debian's prometheus package) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1m[deploy]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
python3 - deploy/grafana/sluice-dashboard.json <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
assert dashboard["panels"], "no panels"
print("%s: %d panels" % (sys.argv[1], len(dashboard["panels"])))
PY
log "deploy/ assets valid"
