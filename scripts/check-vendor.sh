#!/usr/bin/env bash
# vendor/lapin is lapin 4.12.3 as published on crates.io plus
# vendor/lapin.patch and nothing else (vendor/README.md says why it is
# there), and the patch's own tests pass. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.12.3
sha256=3212643cc0031d982f81a62360998106268587237d81d6e8501a0a323e13b656
# Left out of the copy: repository furniture the build never reads.
dropped=(.cargo-ok .cargo_vcs_info.json .editorconfig .github .gitignore
         AGENTS.md CHANGELOG.md clippy.toml logo.jpg regen-code.sh)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/lapin-$version.crate 2>/dev/null | head -1 || true)
if [ -z "$crate" ]; then
  crate=$tmp/lapin-$version.crate
  curl -fsSL --retry 3 -o "$crate" "https://static.crates.io/crates/lapin/lapin-$version.crate"
fi
echo "$sha256  $crate" | sha256sum --check --quiet -
tar -xzf "$crate" -C "$tmp"
upstream=$tmp/lapin-$version
patch --quiet -d "$upstream" -p1 < vendor/lapin.patch
excludes=()
for f in "${dropped[@]}"; do excludes+=(--exclude="$f"); done
if ! diff -r "${excludes[@]}" "$upstream" vendor/lapin; then
  echo "vendor/lapin differs from lapin $version + vendor/lapin.patch (above)." >&2
  echo "Change lapin only through the patch: edit, then regenerate it (vendor/README.md)." >&2
  exit 1
fi
echo "vendor/lapin = lapin $version + vendor/lapin.patch"

# lapin's unit tests, the patch's among them (the ring's order, where reads
# and writes land). Its integration tests leave queues on the broker; the
# suite's own black-box tests run every connection through this copy.
cargo test --quiet --locked --lib --manifest-path vendor/lapin/Cargo.toml \
  --target-dir target/vendor-lapin
