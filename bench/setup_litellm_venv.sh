#!/usr/bin/env bash
# Creates bench/.venv-litellm: LiteLLM's proxy (the comparison in gateway_overhead.py)
# and py-spy (its --profile), kept apart from the app's venv because LiteLLM pins its
# own fastapi/pydantic/openai ranges. Also installs wrk, the load generator.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
if ! command -v wrk >/dev/null; then
    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
fi
if [ ! -x "$here/.venv-litellm/bin/python" ]; then
    "$python" -m venv "$here/.venv-litellm"
fi
"$here/.venv-litellm/bin/pip" install -q --upgrade pip
"$here/.venv-litellm/bin/pip" install -q -r "$here/requirements-litellm.txt"
"$here/.venv-litellm/bin/python" -c "import importlib.metadata as m; print('litellm', m.version('litellm'))"
