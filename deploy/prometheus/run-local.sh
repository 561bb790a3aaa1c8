#!/usr/bin/env bash
# A real Prometheus (Debian's `prometheus` package) scraping a local worker,
# with the alert rules loaded. UI and API on http://127.0.0.1:9090.
#   deploy/prometheus/run-local.sh [TARGET]   # default 127.0.0.1:19464, the demo worker
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${1:-127.0.0.1:19464}"
command -v prometheus >/dev/null || { echo "install Debian's prometheus package first" >&2; exit 1; }
dir="$(mktemp -d)"
sed "s/127.0.0.1:9464/$target/" "$here/prometheus.yml" >"$dir/prometheus.yml"
cp "$here/alerts.yml" "$dir/"
echo "Prometheus on http://127.0.0.1:9090 scraping $target (data in $dir)" >&2
exec prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --web.listen-address=127.0.0.1:9090 --log.level=warn
