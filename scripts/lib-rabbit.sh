# Shared by scripts/cluster.sh and scripts/check-fresh-node.sh: RabbitMQ
# nodes of our own beside the machine's default one, from Debian's
# rabbitmq-server, run as the calling user with their own data directory and
# Erlang cookie (HOME=$RABBIT_HOME).
#
#   rabbit_ctl NODE ARGS...                         rabbitmqctl against NODE
#   rabbit_start NODE PORT DIST_PORT DIR CONF       start, wait until booted
#
# RABBIT_HOME must be set (the cookie lives there).
# RABBIT_CHROOT, if set, runs the RabbitMQ installed in that chroot instead
# (scripts/ensure-rabbitmq4.sh's: 4.0.5, with its own epmd on 4371);
# RABBIT_HOME and every data directory must then lie inside it.

rabbit_bin=/usr/lib/rabbitmq/bin

# Runs `env ARGS...` on the host, or inside RABBIT_CHROOT.
rabbit_env() {
  if [ -n "${RABBIT_CHROOT:-}" ]; then
    chroot "$RABBIT_CHROOT" env ERL_EPMD_PORT=4371 "$@"
  else
    env "$@"
  fi
}
# A host path as the broker sees it (inside RABBIT_CHROOT, if set).
rabbit_path() { echo "${1#"${RABBIT_CHROOT:-}"}"; }

rabbit_cookie() {
  if [ ! -s "$RABBIT_HOME/.erlang.cookie" ]; then
    mkdir -p "$RABBIT_HOME"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F >"$RABBIT_HOME/.erlang.cookie"
    chmod 400 "$RABBIT_HOME/.erlang.cookie"
  fi
  cat "$RABBIT_HOME/.erlang.cookie"
}

rabbit_ctl() {
  local node=$1
  shift
  rabbit_env HOME="$(rabbit_path "$RABBIT_HOME")" RABBITMQ_CONF_ENV_FILE=/dev/null ERL_EPMD_ADDRESS=127.0.0.1 \
    "$rabbit_bin/rabbitmqctl" -q -n "$node" --erlang-cookie "$(rabbit_cookie)" "$@"
}

rabbit_start() {
  local node=$1 port=$2 dist=$3 base=$4 conf=$5
  mkdir -p "$base/log" "$base/mnesia"
  rabbit_cookie >/dev/null
  [ -f "$base/enabled_plugins" ] || echo "[]." >"$base/enabled_plugins"
  if rabbit_ctl "$node" status >/dev/null 2>&1; then
    echo "$node already running"
    return 0
  fi
  # A killed node leaves its pid file behind.
  rm -f "$base/pid"
  # A systemd unit's open-files limit (LimitNOFILE=65536): RabbitMQ 3.x
  # reserves handles per quorum queue (docs/operations.md, Sizing).
  ulimit -n 65536 2>/dev/null || ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
  local in
  in=$(rabbit_path "$base")
  rabbit_env HOME="$(rabbit_path "$RABBIT_HOME")" \
    RABBITMQ_CONF_ENV_FILE=/dev/null \
    RABBITMQ_NODENAME="$node" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT="$dist" \
    RABBITMQ_CONFIG_FILE="$(rabbit_path "$conf")" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$in/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$in/mnesia" \
    RABBITMQ_LOG_BASE="$in/log" \
    RABBITMQ_PID_FILE="$in/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$rabbit_bin/rabbitmq-server" >"$base/log/startup.log" 2>&1 &
  local server=$!
  for _ in $(seq 1 120); do
    if rabbit_ctl "$node" await_startup >/dev/null 2>&1; then
      return 0
    fi
    # A node that failed to boot (bad config, bad definitions) has exited.
    if ! kill -0 "$server" 2>/dev/null; then
      break
    fi
    sleep 1
  done
  tail -30 "$base/log/startup.log" >&2
  echo "$node did not start" >&2
  return 1
}

rabbit_stop() {
  local node=$1 base=$2
  rabbit_ctl "$node" shutdown >/dev/null 2>&1 || true
  if [ -s "$base/pid" ]; then kill -9 "$(cat "$base/pid")" 2>/dev/null || true; fi
}
