"""``make demo --keep-running`` leaves the dashboard up over the demo's store and prints
its URL (the gateway here is a stand-in process: the demo's own run needs vLLM)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import httpx
from rich.console import Console

from services.demo.run import _keep_running
from tests.support.gateway import wait_for


def test_keep_running_serves_the_dashboard_until_the_gateway_stops(seeded_store, make_settings,  # type: ignore[no-untyped-def]
                                                                  tmp_path) -> None:
    url, _, _ = seeded_store
    settings = make_settings(database_url=url)
    # stands in for the gateway: lives until the test has seen the dashboard answer
    gateway = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    console = Console(record=True, width=200)
    seen: dict[str, int] = {}
    runner = threading.Thread(target=_keep_running, args=(settings, gateway, tmp_path, console))
    runner.start()
    try:
        assert wait_for(lambda: "dashboard at" in console.export_text(clear=False), 90)
        found = re.search(r"dashboard at (http://\S+)", console.export_text(clear=False))
        assert found is not None
        seen["status"] = httpx.get(f"{found.group(1)}/_stcore/health", timeout=10).status_code
    finally:
        assert gateway.stdin is not None
        gateway.stdin.close()
        runner.join(60)
    assert seen["status"] == 200
    assert not runner.is_alive()
    assert "did not start" not in console.export_text()
