#!/usr/bin/env bash
# Builds the container image from the project's Dockerfile with buildah (no
# daemon) and runs it the way a platform runs it: host network, uid 10001, a
# read-only root filesystem. A job goes through it against the test broker and
# the sandbox, the image's own HEALTHCHECK command answers, and SIGTERM ends it
# with exit 0 within the grace period. Prints the image's size.
#
# No image registry is reachable here, so:
# - the base `debian:bookworm-slim` is made locally with mmdebstrap (minbase,
#   docs and man pages left out and apt's caches off, as in Debian's official
#   slim images) unless it is in local storage already;
# - the binary comes from the build context (BINARY_FROM=prebuilt: the
#   Dockerfile's `prebuilt` stage), since the `rust` image cannot be pulled.
#   Users build with the default, BINARY_FROM=build. The runtime stage is the
#   one shipped, unchanged.
# The container runs under unshare + chroot: podman's runtime cannot start on
# this machine (cgroups in hybrid mode), and `buildah run` has no read-only
# root. The mount namespace gives the container its own read-only bind of the
# image's root, /proc, /dev and the config file, as a runtime would.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "buildah or mmdebstrap missing; installing Debian's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq buildah mmdebstrap >/dev/null
fi
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
B=(buildah --storage-driver vfs)
base=docker.io/library/debian:bookworm-slim
image=localhost/octopods-worker:ci

. scripts/lib.sh
started=$(date +%s)

if ! "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  echo "making $base with mmdebstrap" >&2
  mmdebstrap --variant=minbase --quiet \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='printf "%s\n" "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true\"; };" "APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true\"; };" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" >"$1"/etc/apt/apt.conf.d/docker-clean' \
    --customize-hook='echo "Acquire::Languages \"none\";" >"$1"/etc/apt/apt.conf.d/docker-no-languages' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    bookworm "$work/base.tar"
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" add "$ctr" "$work/base.tar" / >/dev/null
  "${B[@]}" config --cmd bash "$ctr"
  "${B[@]}" commit --quiet "$ctr" "$base" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  rm -f "$work/base.tar"
fi

# The binary the test suite built, stripped as the build stage strips.
cargo build --quiet --locked --bin octopods-worker
bin=target/debug/octopods-worker
mkdir -p "$work/context/prebuilt"
cp Dockerfile "$work/context/"
cp "$bin" "$work/context/prebuilt/octopods-worker"
strip "$work/context/prebuilt/octopods-worker"
"${B[@]}" build --quiet --format docker --pull=never --layers=false --build-arg BINARY_FROM=prebuilt \
  -f "$work/context/Dockerfile" -t "$image" "$work/context" >/dev/null
built=$(date +%s)

# What the image says of itself.
config=$("${B[@]}" inspect --type image "$image")
size=$("${B[@]}" images --format '{{.Size}}' "$image" | head -1)
# The layers: the base's, and the one this Dockerfile adds (what a user's
# image adds to Debian's official bookworm-slim).
layers=$("${B[@]}" inspect --type image "$image" | python3 -c '
import json, sys
m = json.loads(json.load(sys.stdin)["Manifest"])
print(" + ".join("%.1f MB" % (l["size"] / 1e6) for l in m["layers"]))')
read -r user entry cmd health stop env_config < <(python3 - "$config" <<'PY'
import json, sys
c = json.loads(sys.argv[1])["Docker"]["config"]
h = c.get("Healthcheck") or {}
test = h.get("Test") or []
assert test and test[0] == "CMD", f"HEALTHCHECK is not an exec form: {test}"
env = dict(e.split("=", 1) for e in c.get("Env") or [])
print(c.get("User", ""), json.dumps(c.get("Entrypoint")).replace(" ", ""),
      json.dumps(c.get("Cmd")).replace(" ", ""), json.dumps(test[1:]).replace(" ", ""),
      c.get("StopSignal", ""), env.get("OCTOPODS_CONFIG", ""))
PY
)
[ "$user" = "10001:10001" ] || { echo "image user is '$user', not 10001:10001" >&2; exit 1; }
[ "$stop" = "SIGTERM" ] || { echo "image stop signal is '$stop'" >&2; exit 1; }
[ -n "$env_config" ] || { echo "image sets no OCTOPODS_CONFIG" >&2; exit 1; }

# A sandbox on the host, and the worker's config (the image's HEALTHCHECK
# probes 127.0.0.1:9464, so the worker listens there).
prefix="ci-image"   # fixed: re-running reuses the same small topology
"$bin" sandbox --listen 127.0.0.1:18291 >"$work/sandbox.log" 2>&1 &
stack_pids+=($!)
cat >"$work/worker.toml" <<TOML
[broker]
prefix = "$prefix"
[octopods]
base_url = "http://127.0.0.1:18291"
timeout = "3s"
[http]
listen = "127.0.0.1:9464"
[worker]
grace_period = "5s"
[[channels]]
name = "store-eu"
api_key_env = "OCTOPODS_KEY_STORE_EU"
rate_per_second = 10
TOML
"$bin" topology --config "$work/worker.toml" >/dev/null

ctr=$("${B[@]}" from --pull=never "$image")
root=$("${B[@]}" mount "$ctr")
cleanup_image() {
  "${B[@]}" umount "$ctr" >/dev/null 2>&1 || true
  "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
}
trap 'stop_stack; cleanup_image; rm -rf "$work"' EXIT
# Mount points, as a runtime makes them, before the root goes read-only.
mkdir -p "$root$(dirname "$env_config")" "$root/proc" "$root/dev"
touch "$root$env_config"

# Runs a JSON exec form in the container: the image's root read-only, uid
# and gid 10001, the image's environment, the host network.
in_container() {
  local args=()
  mapfile -d '' args < <(python3 -c 'import json,sys; sys.stdout.write("".join(a + "\0" for a in json.loads(sys.argv[1])))' "$1")
  unshare --mount --fork -- sh -ec '
    root=$1; config=$2; host_config=$3; pidfile=$4; shift 4
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --bind -o ro "$host_config" "$root$config"
    [ -z "$pidfile" ] || echo $$ >"$pidfile"
    exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      OCTOPODS_CONFIG="$config" OCTOPODS_KEY_STORE_EU=image-test-key \
      chroot --userspec=10001:10001 "$root" "$@"
  ' sh "$root" "$env_config" "$work/worker.toml" "${PIDFILE:-}" "${args[@]}"
}

argv=$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]) + json.loads(sys.argv[2])))' "$entry" "$cmd")
PIDFILE="$work/worker.pid" in_container "$argv" >"$work/worker.log" 2>&1 &
runner=$!
for i in $(seq 1 60); do
  curl -fs http://127.0.0.1:9464/readyz >/dev/null 2>&1 && break
  if ! kill -0 "$runner" 2>/dev/null; then cat "$work/worker.log" >&2; echo "the container exited before it was ready" >&2; exit 1; fi
  sleep 0.5
done
curl -fs http://127.0.0.1:9464/readyz >/dev/null || { cat "$work/worker.log" >&2; echo "the container's worker never became ready" >&2; exit 1; }

# Inside: really uid 10001 and a read-only root.
probe_root=$(in_container '["sh","-c","id -u; touch /probe 2>/dev/null && echo writable || echo read-only"]')
[ "$probe_root" = $'10001\nread-only' ] || { echo "the container ran as/with: $probe_root" >&2; exit 1; }

# A job through the image.
sed -n 1p examples/jobs.jsonl | "$bin" enqueue --config "$work/worker.toml" --channel store-eu - >/dev/null 2>&1
event=$("$bin" events --config "$work/worker.toml" --count 1 --timeout 20s 2>/dev/null)
grep -q '"event":"sent"' <<<"$event" || { cat "$work/worker.log" >&2; echo "no sent event from the image: $event" >&2; exit 1; }

# The image's own HEALTHCHECK command, run in the container.
in_container "$health" >/dev/null || { echo "the HEALTHCHECK command failed" >&2; exit 1; }

# SIGTERM: exit 0 within the grace period (5 s) and a margin.
kill -TERM "$(cat "$work/worker.pid")"
t0=$(date +%s)
status=0
wait "$runner" || status=$?
took=$(( $(date +%s) - t0 ))
[ "$status" = 0 ] || { cat "$work/worker.log" >&2; echo "the container exited $status on SIGTERM" >&2; exit 1; }
[ "$took" -le 10 ] || { echo "the container took ${took}s to stop on SIGTERM" >&2; exit 1; }
# The prebuilt stage's images are left over by --layers=false: remove them.
"${B[@]}" images --quiet --filter dangling=true | xargs -r "${B[@]}" rmi -f >/dev/null 2>&1 || true
echo "image $image: built in $((built - started))s, $size (layers: $layers; the binary is the test build, stripped); ran as uid 10001 with a read-only root, sent a job, HEALTHCHECK ok, SIGTERM exit 0 in ${took}s"
