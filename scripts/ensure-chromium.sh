#!/usr/bin/env bash
# Makes sure the console's browser tests have a browser: Debian's chromium
# and chromium-driver (chromedriver), installed with apt-get if missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium and chromedriver are installed"
  exit 0
fi
echo "installing chromium and chromium-driver with apt-get (the console's browser tests)" >&2
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null 2>&1 || { echo "chromedriver is still missing after the install" >&2; exit 1; }
