#!/usr/bin/env bash
# Parameter counts of every profile and the seconds per training step of each at its own
# patch on this machine, written to models/results/profiles/ with the commands.
#   scripts/profile-bench.sh [--steps 3] [--threads 2]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
steps=3
threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "profile-bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
source "$root/scripts/env.sh"
out="$root/models/results/profiles"
mkdir -p "$out"
cd "$root"
{
  echo "# cargo run --release -p gmmas-models --example bench_infer -- --params"
  cargo run --release -q -p gmmas-models --example bench_infer -- --params
} > "$out/params.txt"
{
  echo "# $(nproc) cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
  for p in tiny small medium; do
    echo "# cargo run --release -p gmmas-models --example bench_step -- $p $steps $threads"
    cargo run --release -q -p gmmas-models --example bench_step -- "$p" "$steps" "$threads"
  done
} > "$out/steps.txt"
cat "$out/params.txt" "$out/steps.txt"
