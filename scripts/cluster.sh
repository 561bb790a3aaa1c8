#!/usr/bin/env bash
# A real three-node RabbitMQ cluster on this machine, beside (and independent
# of) the default node on 5672:
#
#   scripts/cluster.sh start          start the three nodes and join them
#   scripts/cluster.sh stop           stop them and delete their data
#   scripts/cluster.sh kill N         kill -9 node N (1, 2 or 3)
#   scripts/cluster.sh restart N      start node N again; it rejoins the cluster
#   scripts/cluster.sh status         cluster status as node 1 (or 2, 3) sees it
#   scripts/cluster.sh urls           the AMQP URLs, comma-separated (AMQP_URL)
#   scripts/cluster.sh ctl N ARGS...  rabbitmqctl against node N
#
# Node N is octopods-cN@localhost, AMQP on 127.0.0.1:568N, Erlang
# distribution on 2568N, data under $OCTOPODS_CLUSTER_DIR (default
# /tmp/octopods-cluster) with its own Erlang cookie. Runs Debian's
# rabbitmq-server as the calling user; nothing outside that directory is
# touched.
#
# OCTOPODS_CLUSTER_RABBIT=4 runs the same cluster (names, ports) from the
# RabbitMQ 4.0.5 of scripts/ensure-rabbitmq4.sh's chroot instead, its data
# under the chroot's /tmp; the tests take the cluster the same way.
set -euo pipefail

nodes=(1 2 3)
if [ "${OCTOPODS_CLUSTER_RABBIT:-}" = 4 ]; then
  RABBIT_CHROOT=${RABBITMQ4_ROOT:-/var/cache/octopods-worker/trixie-rabbitmq}
  [ -x "$RABBIT_CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] && grep -q " $RABBIT_CHROOT/proc " /proc/mounts \
    || "$(dirname "$0")/ensure-rabbitmq4.sh" >&2
  dir=$RABBIT_CHROOT/tmp/octopods-cluster
else
  dir=${OCTOPODS_CLUSTER_DIR:-/tmp/octopods-cluster}
fi
RABBIT_HOME=$dir
# shellcheck source=scripts/lib-rabbit.sh
. "$(dirname "$0")/lib-rabbit.sh"

node_name() { echo "octopods-c$1@localhost"; }
amqp_port() { echo "568$1"; }
ctl() { local n=$1; shift; rabbit_ctl "$(node_name "$n")" "$@"; }

start_node() {
  local n=$1 base="$dir/node$1"
  mkdir -p "$base"
  cat >"$base/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
# guest may connect from loopback only (RabbitMQ's default); this cluster
# listens on loopback only.
log.file.level = warning
cluster_partition_handling = pause_minority
# Set, or RabbitMQ 4.x looks the host's name up in DNS in every connection's
# handshake (scripts/ensure-rabbitmq4.sh says more).
cluster_name = octopods-test-cluster
CONF
  rabbit_start "$(node_name "$n")" "$(amqp_port "$n")" "2568$n" "$base" "$base/rabbitmq.conf"
}

case ${1:-} in
  start)
    # A test cluster starts empty: the data of nodes that were killed, not
    # stopped, keeps the first from booting alone ("start the other nodes first").
    if ! pgrep -f "beam.smp.*octopods-cluster" >/dev/null; then rm -rf "$dir"; fi
    for n in "${nodes[@]}"; do start_node "$n"; done
    for n in 2 3; do
      if ! ctl 1 cluster_status --formatter json | python3 -c '
import json, sys
status = json.load(sys.stdin)
sys.exit(0 if sys.argv[1] in status.get("running_nodes", []) else 1)' "$(node_name "$n")"; then
        {
          ctl "$n" stop_app
          ctl "$n" reset
          ctl "$n" join_cluster "$(node_name 1)"
          ctl "$n" start_app
        } >>"$dir/join.log" 2>&1 || { cat "$dir/join.log" >&2; exit 1; }
      fi
    done
    ctl 1 await_online_nodes 3 --timeout 60
    echo "cluster up: $("$0" urls)"
    ;;
  stop)
    for n in "${nodes[@]}"; do rabbit_stop "$(node_name "$n")" "$dir/node$n"; done
    rm -rf "$dir"
    echo "cluster stopped"
    ;;
  kill)
    n=${2:?which node: 1, 2 or 3}
    pid=$(cat "$dir/node$n/pid")
    kill -9 "$pid"
    echo "killed node $n (pid $pid)"
    ;;
  restart)
    n=${2:?which node: 1, 2 or 3}
    start_node "$n"
    ctl 1 await_online_nodes 3 --timeout 60 2>/dev/null || ctl "$n" await_online_nodes 3 --timeout 60
    echo "node $n back"
    ;;
  status)
    ctl "${2:-1}" cluster_status
    ;;
  urls)
    urls=()
    for n in "${nodes[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
    (IFS=,; echo "${urls[*]}")
    ;;
  ctl)
    n=${2:?which node: 1, 2 or 3}
    shift 2
    ctl "$n" "$@"
    ;;
  *)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
