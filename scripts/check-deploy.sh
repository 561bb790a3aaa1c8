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
python3 -m json.tool deploy/grafana/octopods-worker.json >/dev/null && echo "grafana dashboard: valid JSON"

# A live scrape: sandbox + worker on a throwaway prefix, one job through.
cargo build --quiet --locked
bin=target/debug/octopods-worker
work=$(mktemp -d)
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
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" sandbox --listen 127.0.0.1:18181 >"$work/sandbox.log" 2>&1 &
pids+=($!)
"$bin" run --config "$work/worker.toml" >"$work/worker.log" 2>&1 &
pids+=($!)
for i in $(seq 1 60); do
  curl -fs http://127.0.0.1:19465/readyz >/dev/null 2>&1 && break
  [ "$i" = 60 ] && { cat "$work/worker.log"; echo "worker not ready" >&2; exit 1; }
  sleep 0.5
done
sed -n 1p examples/jobs.jsonl | "$bin" enqueue --config "$work/worker.toml" --channel store-eu - 2>/dev/null
"$bin" events --config "$work/worker.toml" --count 1 --timeout 20s >/dev/null 2>&1
curl -fs http://127.0.0.1:19465/metrics >"$work/metrics.txt"
if ! promtool check metrics <"$work/metrics.txt"; then
  echo "promtool check metrics found problems in the live scrape" >&2
  exit 1
fi
echo "live scrape: $(grep -c '^octopods_' "$work/metrics.txt") octopods_* samples, promtool check metrics clean"
