#!/usr/bin/env bash
# Validates what deploy/ ships with the tools its users' systems run:
#   - promtool check rules on the alert rules (Debian's prometheus package);
#   - the Grafana dashboard parses and has panels;
#   - docker-compose config on docker-compose.yml (PyPI's docker-compose);
#   - kubernetes-validate --strict on every Kubernetes manifest (PyPI), and the kustomization
#     names only files that exist.
# tests/deploy_assets.rs checks that the dashboard and alerts name only metrics Sluice exports;
# tests/config_files.rs that every shipped sluice.toml passes check-config.
# The two Python tools need conflicting jsonschema versions, so each gets its own venv.
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
promtool check config --syntax-only deploy/prometheus/prometheus.yml
python3 - deploy/grafana/sluice-dashboard.json <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
assert dashboard["panels"], "no panels"
print("%s: %d panels" % (sys.argv[1], len(dashboard["panels"])))
PY

venvs="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/validate"
compose="$venvs/compose/bin/docker-compose"
if [ ! -x "$compose" ]; then
  log "installing docker-compose (PyPI) into $venvs/compose"
  python3 -m venv "$venvs/compose"
  # docker-compose 1.29 pins PyYAML 5.4, which does not build with Cython 3.
  "$venvs/compose/bin/pip" install -q "cython<3" wheel
  "$venvs/compose/bin/pip" install -q --no-build-isolation pyyaml==5.4.1
  "$venvs/compose/bin/pip" install -q docker-compose==1.29.2
fi
"$compose" -f deploy/docker-compose.yml config -q
log "docker-compose.yml valid"

kv="$venvs/k8s/bin/kubernetes-validate"
if [ ! -x "$kv" ]; then
  log "installing kubernetes-validate (PyPI) into $venvs/k8s"
  python3 -m venv "$venvs/k8s"
  "$venvs/k8s/bin/pip" install -q kubernetes-validate==1.33.1
fi
base=deploy/kubernetes/base
# kubernetes-validate knows Kubernetes' own kinds; the kustomization and the Prometheus
# Operator's ServiceMonitor are checked by the script below instead.
manifests=()
for f in "$base"/*.yaml; do
  case "$(basename "$f")" in kustomization.yaml | servicemonitor.yaml) ;; *) manifests+=("$f") ;; esac
done
"$kv" --strict --quiet "${manifests[@]}"
"$venvs/k8s/bin/python" - "$base" <<'PY'
import os, sys, yaml
base = sys.argv[1]
k = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
listed = set(k["resources"])
for gen in k.get("configMapGenerator", []):
    listed.update(gen.get("files", []))
for name in listed:
    assert os.path.exists(os.path.join(base, name)), f"kustomization.yaml names {name}, which does not exist"
on_disk = {f for f in os.listdir(base) if f.endswith((".yaml", ".toml")) and f != "kustomization.yaml"}
assert on_disk <= listed, f"not in kustomization.yaml: {sorted(on_disk - listed)}"
# The ServiceMonitor must select the services and scrape the port they name.
sm = yaml.safe_load(open(os.path.join(base, "servicemonitor.yaml")))
assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
wanted = sm["spec"]["selector"]["matchLabels"]
ports = {e["port"] for e in sm["spec"]["endpoints"]}
services = [d for f in sorted(listed) if f.endswith(".yaml")
            for d in yaml.safe_load_all(open(os.path.join(base, f))) if d and d.get("kind") == "Service"]
selected = [s for s in services if wanted.items() <= s["metadata"].get("labels", {}).items()]
assert len(selected) == 2, f"the ServiceMonitor should select capture and router, selects {len(selected)}"
for s in selected:
    named = {p["name"] for p in s["spec"]["ports"]}
    assert ports <= named, f"service {s['metadata']['name']} has no port {ports - named}"
print(f"{base}: {len(listed)} files, kustomization and ServiceMonitor consistent")
PY
log "Kubernetes manifests valid"
log "deploy/ assets valid"
