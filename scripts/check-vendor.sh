#!/usr/bin/env bash
# Every crate under vendor/ is that crate as published on crates.io plus
# vendor/<name>.patch and nothing else (vendor/README.md says why each is
# there), and the patch's own tests pass. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check NAME VERSION SHA256 [FILES LEFT OUT OF THE COPY...]
check() {
  local name=$1 version=$2 sha256=$3
  shift 3
  local crate
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -1 || true)
  if [ -z "$crate" ]; then
    crate=$tmp/$name-$version.crate
    curl -fsSL --retry 3 -o "$crate" "https://static.crates.io/crates/$name/$name-$version.crate"
  fi
  echo "$sha256  $crate" | sha256sum --check --quiet -
  tar -xzf "$crate" -C "$tmp"
  local upstream=$tmp/$name-$version
  patch --quiet -d "$upstream" -p1 < "vendor/$name.patch"
  local excludes=(--exclude=.cargo-ok --exclude=.cargo_vcs_info.json --exclude=target)
  for f in "$@"; do excludes+=(--exclude="$f"); done
  if ! diff -r "${excludes[@]}" "$upstream" "vendor/$name"; then
    echo "vendor/$name differs from $name $version + vendor/$name.patch (above)." >&2
    echo "Change $name only through the patch: edit, then regenerate it (vendor/README.md)." >&2
    exit 1
  fi
  echo "vendor/$name = $name $version + vendor/$name.patch"
  # The crate's unit tests, the patch's among them. Integration tests that
  # need a broker are left out (lapin's leave queues behind); the suite's
  # own black-box tests run every connection through these copies.
  cargo test --quiet --locked --lib --manifest-path "vendor/$name/Cargo.toml" \
    --target-dir "target/vendor-$name"
}

# lapin: its I/O rings keep only the pages they use.
check lapin 4.12.3 3212643cc0031d982f81a62360998106268587237d81d6e8501a0a323e13b656 \
  .editorconfig .github .gitignore AGENTS.md CHANGELOG.md clippy.toml logo.jpg regen-code.sh
# amq-protocol-types: field tables and arrays nest at most 64 deep.
check amq-protocol-types 10.6.3 8a268a50e97bd5d52292a8b96636f6436215def6f3d128fb8218318f5feb4c33
