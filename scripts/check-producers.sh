#!/usr/bin/env bash
# Runs the producer examples end to end against the real broker and a real
# worker + sandbox: each publishes a delivery-confirmation job and reads its
# `sent` event back from its own results queue. Python always; Node when
# node/npm are installed; Rust always.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --locked --bin octopods-worker --example producer
bin=target/debug/octopods-worker
work=$(mktemp -d)
export OCTOPODS_PREFIX=ci-producers
echo "k" >"$work/key"
cat >"$work/worker.toml" <<TOML
[broker]
prefix = "$OCTOPODS_PREFIX"
[octopods]
base_url = "http://127.0.0.1:18282"
[http]
listen = "127.0.0.1:19466"
[worker]
spread_window = "0s"
[[channels]]
name = "store-eu"
api_key_file = "$work/key"
rate_per_second = 20
TOML
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" sandbox --listen 127.0.0.1:18282 >"$work/sandbox.log" 2>&1 &
pids+=($!)
"$bin" run --config "$work/worker.toml" >"$work/worker.log" 2>&1 &
pids+=($!)
for i in $(seq 1 60); do
  curl -fs http://127.0.0.1:19466/readyz >/dev/null 2>&1 && break
  [ "$i" = 60 ] && { cat "$work/worker.log"; echo "worker not ready" >&2; exit 1; }
  sleep 0.5
done

echo "== Python (pika)"
python3 -c 'import pika' 2>/dev/null || python3 -m pip install -q -r examples/producers/python/requirements.txt
py=examples/producers/python
python3 $py/results.py --prefix "$OCTOPODS_PREFIX" --setup
job=$(python3 $py/publish.py --prefix "$OCTOPODS_PREFIX" --channel store-eu --order 1001)
python3 $py/results.py --prefix "$OCTOPODS_PREFIX" --job-id "$job" --timeout 30 | grep -q '"event": "sent"'
echo "python: $job sent"

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  echo "== Node (amqplib)"
  (cd examples/producers/node && npm install --silent --no-audit --no-fund >/dev/null)
  node examples/producers/node/results.js --setup
  job=$(node examples/producers/node/publish.js store-eu 2001)
  node examples/producers/node/results.js "$job" | grep -q '"event":"sent"'
  echo "node: $job sent"
else
  echo "== Node: node/npm not installed; skipped"
fi

echo "== Rust (lapin)"
cargo run --quiet --locked --example producer -- store-eu 3001 | grep -q '"event":"sent"'
echo "rust: order-3001/delivery-confirm sent"
