#!/usr/bin/env bash
# The whole test suite, against real components. PostgreSQL: the machine's server on
# 127.0.0.1:5432 when one runs, else the tests start a throwaway cluster (they need the
# server binaries, installed here when missing). Redis: throwaway redis-server processes.
# vLLM: one CPU worker on a tiny locally built model, started once by the test session.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres_server() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
have_postgres_binaries() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; }
if ! have_postgres_server && ! have_postgres_binaries; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[test] installing PostgreSQL server binaries for a throwaway test cluster"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "[test] no PostgreSQL on 127.0.0.1:5432 and no server binaries: install postgresql" >&2
        exit 1
    fi
fi

# Redis: the cache tests start throwaway redis-server processes (and kill them mid-traffic).
if ! command -v redis-server >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[test] installing redis-server for the cache tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "[test] redis-server is not installed: install it (apt-get install redis-server)" >&2
        exit 1
    fi
fi

# docker-compose validates infra/docker-compose.yml (`config`: no daemon, nothing pulled).
if ! command -v docker-compose >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[test] installing docker-compose to check infra/docker-compose.yml"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
    else
        echo "[test] docker-compose is not installed: install it (apt-get install docker-compose)" >&2
        exit 1
    fi
fi

# Chromium (Debian's): the dashboard's browser tests drive it with Playwright, which
# cannot download browsers of its own here.
if ! command -v chromium >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[test] installing chromium for the dashboard's browser tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "[test] chromium is not installed: install it (apt-get install chromium)" >&2
        exit 1
    fi
fi

# promtool: the Prometheus rules under infra/prometheus are checked and unit-tested.
if ! command -v promtool >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[test] installing prometheus (promtool) for the alert rules tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends prometheus >/dev/null
    else
        echo "[test] promtool is not installed: install it (apt-get install prometheus)" >&2
        exit 1
    fi
fi

echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
exec .venv/bin/python -m pytest "$@"
