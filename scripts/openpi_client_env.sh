#!/usr/bin/env bash
# Create (idempotently) a separate Python environment holding the REAL PyPI `openpi-client`
# package, and print the path of its python interpreter on stdout (last line).
#
# openpi-client pins numpy<2, so it cannot live in the project environment (numpy 2.x).
# It is used by tests/serving to check wire compatibility with the genuine client, and with gym-aloha
# (MuJoCo via dm_control) it runs openpi's ALOHA-sim client loop, examples/aloha_sim/main.py.
#
# Usage:  scripts/openpi_client_env.sh            # -> prints e.g. /work/main/.cache/openpi-client-env/bin/python
# Env:    OPENPI_CLIENT_ENV      directory of the env  (default: <repo>/.cache/openpi-client-env)
#         OPENPI_CLIENT_VERSION  version to install    (default: 0.1.2, the latest on PyPI)
#         OPENPI_CLIENT_PYTHON   interpreter request for `uv venv` (default: 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${OPENPI_CLIENT_ENV:-$ROOT/.cache/openpi-client-env}"
VERSION="${OPENPI_CLIENT_VERSION:-0.1.2}"
PYREQ="${OPENPI_CLIENT_PYTHON:-3.11}"
PY="$ENV_DIR/bin/python"
STAMP="$ENV_DIR/.openpi-client-$VERSION-aloha.ok"

CHECK="from openpi_client import action_chunk_broker, msgpack_numpy, websocket_client_policy; import gym_aloha"

log() { echo "[openpi_client_env] $*" >&2; }

if [[ -x "$PY" && -f "$STAMP" ]] && "$PY" -c "$CHECK" >/dev/null 2>&1; then
    echo "$PY"
    exit 0
fi

command -v uv >/dev/null 2>&1 || { log "uv is required (https://docs.astral.sh/uv/)"; exit 2; }

# Build in a temp dir beside the target and move it into place, so an interrupted run never
# leaves a half-built env that looks complete; a lock serialises concurrent callers.
mkdir -p "$(dirname "$ENV_DIR")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$ENV_DIR.lock"
    flock 9
    if [[ -x "$PY" && -f "$STAMP" ]] && "$PY" -c "$CHECK" >/dev/null 2>&1; then
        echo "$PY"  # built by another caller while we waited
        exit 0
    fi
fi
TMP_DIR="$ENV_DIR.tmp.$$"
trap 'rm -rf "$TMP_DIR"' EXIT
rm -rf "$TMP_DIR"
log "creating $ENV_DIR (python $PYREQ, openpi-client==$VERSION, gym-aloha)"
uv venv --quiet --relocatable --python "$PYREQ" "$TMP_DIR" >&2
# The venv is moved into place after install, hence --relocatable; console scripts are not
# needed anyway, only `python -c "import openpi_client"`.
# openpi-client 0.1.2 imports typing_extensions without declaring it as a dependency; add it explicitly.
uv pip install --quiet --python "$TMP_DIR/bin/python" "openpi-client==$VERSION" typing_extensions \
    "gym-aloha==0.1.5" "mujoco<4" >&2
rm -rf "$ENV_DIR"
mv "$TMP_DIR" "$ENV_DIR"
trap - EXIT
"$PY" -c "$CHECK; import numpy, sys; print('openpi-client ok, numpy', numpy.__version__, file=sys.stderr)" >&2
touch "$STAMP"
echo "$PY"
