#!/usr/bin/env bash
# Shared pieces of the run scripts (ssl-real, ssl-table, v2-fold0): option parsing, the gmmas
# binary, a timestamped log and the phantom set the configs name. Sourced, never run.

# opts SCRIPT "a b-c ..." ARGS...: for each `--a V` / `--b-c V` in ARGS sets $a / $b_c to V;
# any other argument (or a flag without its value) stops the script with a message naming it.
opts() {
  local script="$1" allowed="$2"
  shift 2
  while [ $# -gt 0 ]; do
    local flag="${1#--}"
    if [ "$flag" = "$1" ] || [[ " $allowed " != *" $flag "* ]] || [ $# -lt 2 ]; then
      echo "$script: unknown argument or missing value: $1 (expected --${allowed// / VALUE, --} VALUE)" >&2
      exit 2
    fi
    printf -v "${flag//-/_}" '%s' "$2"
    shift 2
  done
}

# use_gmmas ROOT: $gmmas (the release binary, env.sh sourced when GMMAS_BIN is unset) and
# $shared (the shared data folder beside the checkout).
use_gmmas() {
  if [ -z "${GMMAS_BIN:-}" ]; then
    # shellcheck source=scripts/env.sh
    source "$1/scripts/env.sh"
  fi
  gmmas="$GMMAS_BIN/gmmas"
  shared="$(cd "$1/../shared/data" && pwd)"
}

# log_as TAG: defines log, which prints "[TAG HH:MM:SS] message" on stderr.
log_as() {
  eval "log() { printf '[%s %s] %s\n' '$1' \"\$(date -u +%H:%M:%S)\" \"\$*\" >&2; }"
}

# config_phantoms ROOT: the 24 phantoms (seed 1) the configs in models/configs train with, made
# in ROOT/out/phantoms when missing.
config_phantoms() {
  [ -f "$1/out/phantoms/labels.csv" ] && return 0
  log "making the configs' phantoms (out/phantoms)"
  "$gmmas" phantom --n 24 --seed 1 --out "$1/out/phantoms" >/dev/null
}

# fold0_split ROOT OUT DEVICE: OUT/split.csv, fold 0's split of the supervised config (its k-fold
# assignment), read off a one-step run when missing; the run's log goes to OUT/logs/.
fold0_split() {
  [ -f "$2/split.csv" ] && return 0
  mkdir -p "$2/logs"
  "$gmmas" train --config "$1/models/configs/release-small-cpu.toml" --fold 0 --steps 1 --out "$2/split-run" \
    --device "$3" --quiet > /dev/null 2> "$2/logs/split-run.log"
  cp "$2/split-run/split.csv" "$2/split.csv"
  rm -rf "$2/split-run"
}
