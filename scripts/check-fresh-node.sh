#!/usr/bin/env bash
# Boots a fresh RabbitMQ node from the project's deploy files, as the compose
# stack does — deploy/rabbitmq/rabbitmq.conf, and the definitions rendered by
# `octopods-worker definitions --users` from deploy/compose/worker.toml — and
# checks, from the outside:
#   - guest cannot log in (the file seeds only our users);
#   - the worker user may use the prefix's names and nothing else;
#   - the worker runs with the compose configuration: a job goes in, its
#     `sent` event comes out.
# The node (octopods-fresh@localhost, 127.0.0.1:5690) is independent of the
# default broker on 5672 and removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/octopods-worker
cargo build --quiet --locked
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
RABBIT_HOME=$work/rabbit
# shellcheck source=scripts/lib-rabbit.sh
. scripts/lib-rabbit.sh
node=octopods-fresh@localhost
port=5690
base=$RABBIT_HOME/node
trap 'rabbit_stop "$node" "$base"; stop_stack; rm -rf "$work"' EXIT
mkdir -p "$base"

password() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
worker_pw=$(password)
admin_pw=$(password)

# What the compose stack's rabbitmq-definitions service renders.
OCTOPODS_RABBITMQ_WORKER_PASSWORD=$worker_pw OCTOPODS_RABBITMQ_ADMIN_PASSWORD=$admin_pw \
  "$bin" definitions --config deploy/compose/worker.toml --users --out "$base/definitions.json"
# The project's rabbitmq.conf, with the file where this node finds it and a
# port of its own.
sed "s|/etc/rabbitmq/defs/definitions.json|$base/definitions.json|" deploy/rabbitmq/rabbitmq.conf >"$base/rabbitmq.conf"
echo "listeners.tcp.local = 127.0.0.1:$port" >>"$base/rabbitmq.conf"
rabbit_start "$node" "$port" 25690 "$base" "$base/rabbitmq.conf"
echo "fresh node booted from deploy/rabbitmq/rabbitmq.conf and the rendered definitions"

vhost=octopods
worker_url="amqp://octopods-worker:$worker_pw@127.0.0.1:$port/$vhost"
admin_url="amqp://octopods-admin:$admin_pw@127.0.0.1:$port/$vhost"

# guest does not exist on a node booted from definitions.
if AMQP_URL="amqp://guest:guest@127.0.0.1:$port/$vhost" "$bin" topology --config deploy/compose/worker.toml >"$work/guest.log" 2>&1; then
  echo "guest could log in to the fresh node" >&2
  exit 1
fi
grep -q "ACCESS_REFUSED\|access refused\|ACCESS-REFUSED" "$work/guest.log" || { cat "$work/guest.log" >&2; exit 1; }
echo "guest: refused"

# The worker user: its own prefix, and nothing else.
AMQP_URL=$worker_url "$bin" topology --config deploy/compose/worker.toml >/dev/null
sed 's/^prefix = "octopods"/prefix = "other"/' deploy/compose/worker.toml >"$work/other.toml"
if AMQP_URL=$worker_url "$bin" topology --config "$work/other.toml" >"$work/other.log" 2>&1; then
  echo "the worker user could declare names outside its prefix" >&2
  exit 1
fi
grep -q "ACCESS_REFUSED\|ACCESS-REFUSED" "$work/other.log" || { cat "$work/other.log" >&2; exit 1; }
echo "worker user: may declare octopods.*, refused other.*"

# The worker with the compose configuration (its hosts moved to this machine).
sed -e 's|http://sandbox:8080|http://127.0.0.1:18190|' -e 's|0.0.0.0:9464|127.0.0.1:18191|' \
  deploy/compose/worker.toml >"$work/worker.toml"
export OCTOPODS_KEY_STORE_EU=demo-key-store-eu
AMQP_URL=$worker_url start_stack 18190 18191 "$work/worker.toml" "$work"
echo '{"job_id":"fresh-node-1","destination_phone":"+15550001111","waba_interactive_message":{"type":"button","body":{"text":"Did your order arrive?"},"action":{"buttons":[{"type":"reply","reply":{"id":"yes","title":"Yes"}}]}}}' \
  | AMQP_URL=$admin_url "$bin" enqueue --config "$work/worker.toml" --channel store-eu - 2>/dev/null
event=$(AMQP_URL=$admin_url "$bin" events --config "$work/worker.toml" --count 1 --timeout 30s 2>/dev/null)
grep -q '"event":"sent".*"job_id":"fresh-node-1"\|"job_id":"fresh-node-1".*"event":"sent"' <<<"$event" \
  || { echo "no sent event from the fresh node: $event" >&2; tail -20 "$work/worker.log" >&2; exit 1; }
echo "fresh node: a job went in as octopods-admin, the worker (as octopods-worker) sent it, its event came out"
