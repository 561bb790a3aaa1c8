# Shared by the check scripts. Sourcing it gives "$work", a scratch
# directory removed on exit, and start_stack, which runs a sandbox and a worker
# in the background for the length of the script:
#   start_stack SANDBOX_PORT HTTP_PORT CONFIG LOGDIR
# The worker's [octopods] base_url and [http] listen must match the ports.
# Both processes are stopped (SIGTERM) when the script exits.

work=$(mktemp -d)
stack_pids=()
stop_stack() {
  for pid in "${stack_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'stop_stack; rm -rf "$work"' EXIT

start_stack() {
  local sandbox_port=$1 http_port=$2 config=$3 logs=$4
  local bin=target/debug/octopods-worker
  "$bin" sandbox --listen "127.0.0.1:$sandbox_port" >"$logs/sandbox.log" 2>&1 &
  stack_pids+=($!)
  "$bin" run --config "$config" >"$logs/worker.log" 2>&1 &
  stack_pids+=($!)
  for i in $(seq 1 60); do
    curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  cat "$logs/worker.log" >&2
  echo "worker not ready on port $http_port after 30 s" >&2
  return 1
}
