#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv on first use, then runs what you ask for.
#   bash run.sh demo         the offline demo (guardnet demo)
#   bash run.sh test [ARGS]  the test suite (pytest ARGS)
#   bash run.sh guardnet …   any guardnet command
set -euo pipefail
cd "$(dirname "$0")"
VENV="${GUARDNET_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  local stamp="$VENV/.guardnet-installed" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[run.sh] installing guardnet and its dependencies into $VENV (first run: a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev,eval]"
    echo "$want" > "$stamp"
  fi
}

cmd="${1:-demo}"
shift || true
setup
case "$cmd" in
  demo) exec "$VENV/bin/guardnet" demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  guardnet) exec "$VENV/bin/guardnet" "$@" ;;
  *) echo "usage: bash run.sh {demo|test|guardnet} [args]" >&2; exit 2 ;;
esac
