#!/usr/bin/env bash
# Lays out an installation of GMMAS under PREFIX, exactly as the container image holds it:
#   PREFIX/bin/            gmmas and the gmmas-<service> binaries
#   PREFIX/share/weights/  the bundled models (safetensors + their JSON and card)
#   PREFIX/share/configs/  the training and learning-loop run configs
#   PREFIX/share/templates the anatomy template of the phantom generator (when TEMPLATE is given)
# Used by the Dockerfile and by the test that runs the binaries from this layout
# (tests/tests/image_layout.rs), so both see the same paths.
#
# usage: deploy/docker/install.sh BIN_DIR PREFIX [TEMPLATE_FILE]
set -euo pipefail
bin_dir=${1:?usage: install.sh BIN_DIR PREFIX [TEMPLATE_FILE]}
prefix=${2:?usage: install.sh BIN_DIR PREFIX [TEMPLATE_FILE]}
template=${3:-}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# The binaries the image ships; a missing one is an error, not a smaller image.
bins=(gmmas gmmas-ingest gmmas-preprocess gmmas-infer gmmas-api gmmas-report gmmas-curate gmmas-train)
mkdir -p "$prefix/bin" "$prefix/share/weights" "$prefix/share/configs" "$prefix/share/templates"
for b in "${bins[@]}"; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "install.sh: $bin_dir/$b is missing (build with: cargo build --release --workspace --bins)" >&2
    exit 1
  fi
  install -m 0755 "$bin_dir/$b" "$prefix/bin/$b"
done
install -m 0644 "$src"/models/weights/*.safetensors "$src"/models/weights/*.json "$src"/models/weights/*.md \
  "$prefix/share/weights/"
cp -R "$src/models/configs/." "$prefix/share/configs/"
if [ -n "$template" ]; then
  install -m 0644 "$template" "$prefix/share/templates/$(basename "$template")"
fi
echo "installed GMMAS into $prefix ($(du -sh "$prefix" | cut -f1))"
