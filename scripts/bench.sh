#!/usr/bin/env bash
# The throughput benchmark as docs/performance.md reports it: makes sure
# RabbitMQ answers and Debian's nginx-light (the constant HTTP peer, cheaper
# than any stand-in) is installed, then runs `cargo bench --bench throughput`.
# Every BENCH_* variable of benches/throughput.rs passes through, e.g.
#   BENCH_ONLY=ab BENCH_ROUNDS=5 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

scripts/ensure-rabbitmq.sh
if ! [ -x /usr/sbin/nginx ]; then
  echo "installing nginx-light with apt-get (the benchmark's constant HTTP peer)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nginx-light >/dev/null
  # The bench starts an nginx of its own on a free port; the packaged service is not used.
  as_root systemctl disable --now nginx >/dev/null 2>&1 || true
fi
exec cargo bench --bench throughput
