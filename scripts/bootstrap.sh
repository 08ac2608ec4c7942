#!/usr/bin/env bash
# Create .venv with the app and its test tools, at the versions pinned in requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [[ ! -x .venv/bin/python ]]; then
    echo "[bootstrap] creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
echo "[bootstrap] installing the app and its test tools (pinned by requirements.lock)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements.lock -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
touch .venv/.optengine-installed
