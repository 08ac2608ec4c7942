#!/usr/bin/env bash
# The whole test suite, against real components. PostgreSQL: the machine's server on
# 127.0.0.1:5432 when one runs, else the tests start a throwaway cluster (they need the
# server binaries, installed here when missing). Redis: throwaway redis-server processes.
# vLLM: one CPU worker on a tiny locally built model, started once by the test session.
set -euo pipefail
cd "$(dirname "$0")/.."

# need PACKAGE WHY [APT-OPTION...]: install a Debian package when root; otherwise say
# what is missing and stop.
need() {
    local package=$1 why=$2
    shift 2
    if [[ $(id -u) -eq 0 ]]; then
        echo "[test] installing $package $why"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq "$@" "$package" >/dev/null
    else
        echo "[test] $package is not installed ($why): install it (apt-get install $package)" >&2
        exit 1
    fi
}

have_postgres_server() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
have_postgres_binaries() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; }
if ! have_postgres_server && ! have_postgres_binaries; then
    need postgresql "for a throwaway test cluster (no server on 127.0.0.1:5432)"
fi
# throwaway redis-server processes for the cache tests (killed mid-traffic)
command -v redis-server >/dev/null || need redis-server "for the cache tests"
# `docker-compose config` checks infra/docker-compose.yml (no daemon, nothing pulled)
command -v docker-compose >/dev/null || need docker-compose "to check infra/docker-compose.yml"
# Debian's Chromium, driven by Playwright (which cannot download browsers here)
command -v chromium >/dev/null || need chromium "for the dashboard's browser tests"
# promtool checks and unit-tests the Prometheus rules under infra/prometheus
command -v promtool >/dev/null || need prometheus "(promtool) for the alert rules tests" \
    --no-install-recommends

echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
exec .venv/bin/python -m pytest "$@"
