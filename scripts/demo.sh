#!/usr/bin/env bash
# The main job, locally: RabbitMQ (started or installed if needed), the
# sandbox standing in for Octopods, the worker, the sample jobs from
# examples/jobs.jsonl, and the result events printed as they come back.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
cargo build --quiet --locked
bin=target/debug/octopods-worker
config=examples/worker.toml
export OCTOPODS_KEY_STORE_EU=demo-key-store-eu OCTOPODS_KEY_STORE_US=demo-key-store-us
export OCTOPODS_INTERCOM_SECRET=demo-intercom-secret OCTOPODS_INTERCOM_TOKEN=demo-intercom-token
mkdir -p .demo

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$bin" sandbox --listen 127.0.0.1:18080 --intercom-listen 127.0.0.1:18081 \
  --intercom-webhook http://127.0.0.1:19466/hooks/intercom >.demo/sandbox.log 2>&1 &
sandbox=$!
pids+=($sandbox)
"$bin" run --config "$config" >.demo/worker.log 2>&1 &
pids+=($!)

echo "waiting for the worker to be ready (logs in .demo/)..." >&2
for i in $(seq 1 60); do
  curl -fs http://127.0.0.1:19464/readyz >/dev/null 2>&1 && break
  if [ "$i" = 60 ]; then echo "worker not ready after 30 s; see .demo/worker.log" >&2; exit 1; fi
  sleep 0.5
done

# Another program on the sandbox's port would answer in its place.
if ! kill -0 "$sandbox" 2>/dev/null; then
  echo "the sandbox did not start (is 127.0.0.1:18080 in use?):" >&2
  cat .demo/sandbox.log >&2
  exit 1
fi

# Leftover events from an earlier run would be confusing: take them off first.
"$bin" events --config "$config" --timeout 1s >/dev/null 2>&1 || true

"$bin" enqueue --config "$config" examples/jobs.jsonl
echo "result events: one per job (order-1004 is past its 24-hour window and goes out as its template; order-1003 is invalid on purpose), then delivered and read for store-eu:" >&2
# One event per job, then delivered and read for each store-eu message sent
# (that channel tracks delivery status): 5 + 3 + 3.
"$bin" events --config "$config" --count 11 --timeout 30s
echo >&2
echo "the customer of order-1001 taps \"Yes, received\" in WhatsApp; it reaches the shop's Intercom inbox, whose webhook reaches the worker:" >&2
curl -fsS -X POST http://127.0.0.1:18081/_sandbox/tap -H 'content-type: application/json' \
  -d '{"phone": "+15551234567", "text": "Yes, received"}' >/dev/null
"$bin" events --config "$config" --count 1 --timeout 30s
echo >&2
echo "dead-lettered jobs stay in octopods.dead (see README, 'Operators')." >&2
