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
set -euo pipefail

dir=${OCTOPODS_CLUSTER_DIR:-/tmp/octopods-cluster}
bin=/usr/lib/rabbitmq/bin
nodes=(1 2 3)

node_name() { echo "octopods-c$1@localhost"; }
amqp_port() { echo "568$1"; }

cookie() {
  if [ ! -s "$dir/.erlang.cookie" ]; then
    mkdir -p "$dir"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
  fi
  cat "$dir/.erlang.cookie"
}

ctl() {
  local n=$1
  shift
  HOME="$dir" RABBITMQ_CONF_ENV_FILE=/dev/null ERL_EPMD_ADDRESS=127.0.0.1 \
    "$bin/rabbitmqctl" -q -n "$(node_name "$n")" --erlang-cookie "$(cookie)" "$@"
}

start_node() {
  local n=$1 base="$dir/node$1"
  mkdir -p "$base/log" "$base/mnesia"
  cookie >/dev/null
  cat >"$base/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
# guest may connect from loopback only (RabbitMQ's default); this cluster
# listens on loopback only.
log.file.level = warning
cluster_partition_handling = pause_minority
EOF
  echo "[]." >"$base/enabled_plugins"
  if ctl "$n" status >/dev/null 2>&1; then
    echo "node $n already running"
    return 0
  fi
  HOME="$dir" \
    RABBITMQ_CONF_ENV_FILE=/dev/null \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="2568$n" \
    RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$base/mnesia" \
    RABBITMQ_LOG_BASE="$base/log" \
    RABBITMQ_PID_FILE="$base/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$bin/rabbitmq-server" >"$base/log/startup.log" 2>&1 &
  for _ in $(seq 1 120); do
    if ctl "$n" await_startup >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  tail -30 "$base/log/startup.log" >&2
  echo "node $n did not start within 120 s" >&2
  return 1
}

joined() { ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "$(node_name "$1")"; }

case ${1:-} in
  start)
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
    for n in "${nodes[@]}"; do
      ctl "$n" shutdown >/dev/null 2>&1 || true
      if [ -s "$dir/node$n/pid" ]; then kill -9 "$(cat "$dir/node$n/pid")" 2>/dev/null || true; fi
    done
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
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
