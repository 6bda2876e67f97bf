#!/usr/bin/env bash
# The main job: set up, start every GMMAS service locally, analyze the example case, serve
# until Ctrl-C. Extra arguments go to `gmmas up` (e.g. --case-dir DIR, --once).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$GMMAS_ROOT/scripts/setup.sh"
cd "$GMMAS_ROOT"
# The report service's local LLM (OpenAI-compatible llama-server); without it reports come from
# the deterministic fallback.
if "$GMMAS_ROOT/scripts/llm.sh" start; then
  trap '"$GMMAS_ROOT/scripts/llm.sh" stop' EXIT
  export GMMAS_LLM_BACKEND="${GMMAS_LLM_BACKEND:-openai}"
  export GMMAS_LLM_URL="${GMMAS_LLM_URL:-http://127.0.0.1:${GMMAS_LLM_PORT:-8090}}"
  if [ "$("$GMMAS_ROOT/scripts/llm.sh" status | awk '/^embed/ {print $2}')" != missing ]; then
    export GMMAS_EMBED_BACKEND="${GMMAS_EMBED_BACKEND:-openai}"
    export GMMAS_EMBED_URL="${GMMAS_EMBED_URL:-http://127.0.0.1:${GMMAS_EMBED_PORT:-8091}}"
    export GMMAS_EMBED_MODEL="${GMMAS_EMBED_MODEL:-all-minilm:l6-v2}"
  fi
else
  echo "[up] no local LLM: reports come from the deterministic fallback" >&2
  export GMMAS_LLM_BACKEND="${GMMAS_LLM_BACKEND:-none}"
fi
"$GMMAS_BIN/gmmas" up --state-dir "$GMMAS_STATE" "$@"
