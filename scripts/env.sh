# Shared environment for the GMMAS scripts (sourced, not run).
# The venv with libtorch and cargo's target dir live outside the clone so reruns and other
# clones reuse them; GMMAS_CACHE moves them.
GMMAS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GMMAS_ROOT
export GMMAS_CACHE="${GMMAS_CACHE:-$HOME/.cache/gmmas}"
export GMMAS_STATE="${GMMAS_STATE:-$GMMAS_ROOT/.gmmas}"
export VIRTUAL_ENV="$GMMAS_CACHE/venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$GMMAS_CACHE/target}"
export GMMAS_NATS_URL="${GMMAS_NATS_URL:-nats://127.0.0.1:4222}"
export GMMAS_DATABASE_URL="${GMMAS_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/gmmas}"
export GMMAS_BIN="$CARGO_TARGET_DIR/release"
