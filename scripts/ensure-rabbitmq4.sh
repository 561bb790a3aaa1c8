#!/usr/bin/env bash
# RabbitMQ 4.0.5 — Debian trixie's rabbitmq-server on Erlang 27 — in a chroot
# of its own, beside the system's broker: its own port (5674), node name
# (rabbit4@localhost), distribution port (25674) and epmd port (4371), so
# the two never meet. The chroot is made once with debootstrap (~40 s here)
# and kept in $RABBITMQ4_ROOT (default /var/cache/octopods-worker/trixie-rabbitmq).
#
#   scripts/ensure-rabbitmq4.sh          start it (idempotent); prints the env to use
#   scripts/ensure-rabbitmq4.sh stop     stop it and unmount
#
# The suite runs against it with AMQP_URL and RABBITMQCTL set as printed
# (scripts/test.sh does that after the 3.10 run).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${RABBITMQ4_ROOT:-/var/cache/octopods-worker/trixie-rabbitmq}
PORT=5674
NODE=rabbit4@localhost
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CTL=$PWD/scripts/rabbitmqctl4

mounted() { grep -q " $ROOT/$1 " /proc/mounts; }

if [ "${1:-}" = stop ]; then
  "$CTL" stop >/dev/null 2>&1 || true
  for m in proc dev; do mounted "$m" && umount -l "$ROOT/$m"; done
  exit 0
fi

if [ ! -x "$ROOT/usr/sbin/rabbitmq-server" ]; then
  command -v debootstrap >/dev/null 2>&1 || {
    echo "installing debootstrap (to make the RabbitMQ 4.x chroot)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  }
  echo "making the trixie chroot with rabbitmq-server in $ROOT (once)" >&2
  rm -rf "$ROOT.tmp"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include=rabbitmq-server trixie "$ROOT.tmp" "$MIRROR" >/dev/null
  mv "$ROOT.tmp" "$ROOT"
fi

mounted proc || mount -t proc proc "$ROOT/proc"
mounted dev || mount --bind /dev "$ROOT/dev"

# Its own node, ports and epmd: set where every rabbitmq script reads them.
cat > "$ROOT/etc/rabbitmq/rabbitmq-env.conf" <<EOF
NODENAME=$NODE
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$PORT
DIST_PORT=25674
export ERL_EPMD_PORT=4371
# The server runs as the rabbitmq user (su resets the soft open-files limit
# to 1,024): raise it here, where every rabbitmq script reads its settings.
ulimit -S -n "\$(ulimit -H -n)" 2>/dev/null || true
EOF
cat > "$ROOT/etc/rabbitmq/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$PORT
# Many quorum queues in the tests: the same room as the system's broker.
vm_memory_high_watermark.relative = 0.4
# RabbitMQ 4.0 names the cluster after the host's fully qualified name when
# this is unset, and looks that name up in DNS in every connection's
# handshake (rabbit_reader:server_properties -> rabbit_nodes:
# cluster_name_default -> inet:gethostbyname): one lost DNS packet and a
# new connection waits the resolver's 5 s (issue 39, docs/operations.md).
cluster_name = octopods-test-rabbit4
EOF
# The host's names, as a container runtime gives them: the broker's own
# lookups of this host's name are answered here, not by a DNS server.
cp /etc/hosts "$ROOT/etc/hosts"

if ! "$CTL" -q status >/dev/null 2>&1; then
  echo "starting RabbitMQ 4.0.5 ($NODE, 127.0.0.1:$PORT)" >&2
  # The broker inherits this shell's open-files limit (every quorum queue holds files).
  ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
  chroot "$ROOT" /usr/sbin/rabbitmq-server -detached >/dev/null 2>&1
  # The detached node takes a moment to register with its epmd.
  for _ in $(seq 1 120); do
    "$CTL" -q await_startup --timeout 120 >/dev/null 2>&1 && break
    sleep 1
  done
  "$CTL" -q await_startup --timeout 10 >/dev/null
fi
version=$("$CTL" -q eval 'rabbit_misc:version().' 2>/dev/null | tr -d '"')
echo "RabbitMQ $version ready: AMQP_URL=amqp://guest:guest@127.0.0.1:$PORT/%2f RABBITMQCTL=$CTL" >&2
