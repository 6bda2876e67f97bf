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
# The brain-extraction network scripts/setup.sh converts (skull stripping); unset = classical.
if [ -z "${GMMAS_BRAIN_MODEL_PATH+x}" ] && [ -s "$GMMAS_CACHE/brain/hd-bet-fold0.pt" ]; then
  export GMMAS_BRAIN_MODEL_PATH="$GMMAS_CACHE/brain/hd-bet-fold0.pt"
fi
# The local system runs least-privileged (scripts/setup.sh prepares both): each service as its own
# NATS user over TLS on a second, secured nats-server, and as the database role gmmas_app, a member
# of gmmas_service, which has no DDL rights. GMMAS_DATABASE_URL above is the migrations role.
export GMMAS_UP_NATS_URL="${GMMAS_UP_NATS_URL:-nats://127.0.0.1:4223}"
export GMMAS_UP_NATS_SECRETS="${GMMAS_UP_NATS_SECRETS:-$GMMAS_STATE/secrets}"
export GMMAS_UP_NATS_CA="${GMMAS_UP_NATS_CA:-$GMMAS_STATE/tls/ca.pem}"
export GMMAS_UP_DATABASE_URL="${GMMAS_UP_DATABASE_URL:-postgres://gmmas_app@${GMMAS_DATABASE_URL#*@}}"
