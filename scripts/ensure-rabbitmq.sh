#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672: starts it if it is installed
# but stopped, installs it (Debian/Ubuntu, apt-get) if it is missing.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for_port() {
  for _ in $(seq 1 120); do
    port_open && return 0
    sleep 1
  done
  echo "RabbitMQ did not open 127.0.0.1:5672 within 120 s" >&2
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if port_open; then
  echo "RabbitMQ answers on 127.0.0.1:5672"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ is not installed; installing rabbitmq-server with apt-get" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rabbitmq-server >/dev/null
fi

# 65,536 open files (raising the hard limit when root may), else the hard limit.
raise_open_files() {
  ulimit -n 65536 2>/dev/null || ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
}

if ! port_open; then
  echo "starting RabbitMQ" >&2
  # The broker inherits this shell's open-files limit, and RabbitMQ 3.x
  # reserves handles for every quorum queue: with a shell's 1,024 new
  # connections stall past ~300 queues. Start it with what a systemd unit
  # gives it (LimitNOFILE=65536), or the hard limit where that is lower.
  raise_open_files
  as_root rabbitmq-server -detached || true
fi
wait_for_port
echo "RabbitMQ answers on 127.0.0.1:5672"
