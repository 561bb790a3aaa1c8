#!/usr/bin/env bash
# Runs the producer examples end to end against the real broker and a real
# worker + sandbox: each publishes a delivery-confirmation job and reads its
# `sent` event back from its own results queue. Python always; Node when
# node/npm are installed; Rust always.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --locked --bin octopods-worker --example producer
bin=target/debug/octopods-worker
. scripts/lib.sh
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
start_stack 18282 19466 "$work/worker.toml" "$work"

# Unique order numbers: the example queues outlive a run, and must not match
# an earlier run's event.
run="$(date +%s)$$"

echo "== Python (pika)"
python3 -c 'import pika' 2>/dev/null || python3 -m pip install -q -r examples/producers/python/requirements.txt
py=examples/producers/python
# The publisher waits for its own job's event on a private queue; the shop's
# handler reads its durable queue with a prefetch and acks after handling.
# Capture, then look: grep -q reading a pipe would close it under the writer.
out=$(python3 $py/publish.py --prefix "$OCTOPODS_PREFIX" --channel store-eu --order "py-$run" --wait 30)
job="order-py-$run/delivery-confirm"
grep -qF "\"event\": \"sent\", \"job_id\": \"$job\"" <<<"$out"
# The shop's handler: its queue declared and bound first (a run with nothing
# to handle yet), then a job, then the handler reads its event.
python3 $py/results.py --prefix "$OCTOPODS_PREFIX" --queue "ci-producers.shop-$run" --idle-exit 0 >/dev/null
python3 $py/publish.py --prefix "$OCTOPODS_PREFIX" --channel store-eu --order "py2-$run" >/dev/null
handled=$(python3 $py/results.py --prefix "$OCTOPODS_PREFIX" --queue "ci-producers.shop-$run" --idle-exit 5)
grep -qF "\"job_id\": \"order-py2-$run/delivery-confirm\"" <<<"$handled"
python3 -c "
import pika, os, sys
c = pika.BlockingConnection(pika.URLParameters(os.environ.get('AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2f')))
c.channel().queue_delete('ci-producers.shop-$run')
c.close()"
echo "python: $job sent (publisher waited on a private queue; the shop's handler handled the next one)"

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  echo "== Node (amqplib)"
  (cd examples/producers/node && npm install --silent --no-audit --no-fund >/dev/null)
  out=$(WAIT_SECONDS=30 node examples/producers/node/publish.js store-eu "node-$run")
  job="order-node-$run/delivery-confirm"
  grep -qF "\"event\":\"sent\",\"job_id\":\"$job\"" <<<"$out"
  echo "node: $job sent"
else
  echo "== Node: node/npm not installed; skipped"
fi

echo "== Rust (lapin)"
out=$(cargo run --quiet --locked --example producer -- store-eu "rust-$run")
grep -qF "\"event\":\"sent\",\"job_id\":\"order-rust-$run/delivery-confirm\"" <<<"$out"
echo "rust: order-rust-$run/delivery-confirm sent"
