"""infra/prometheus/optengine-rules.yml: valid for promtool, behaves as its unit tests
say (firing after ``for:``, hysteresis), and names only metrics the gateway exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.caching.cache import CacheMetrics
from services.telemetry.metrics import GatewayMetrics

RULES_DIR = Path(__file__).resolve().parents[2] / "infra" / "prometheus"
RULES = RULES_DIR / "optengine-rules.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (scripts/test.sh does)"
    return subprocess.run([tool, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=120)


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout


def test_the_rules_fire_and_hold_as_their_unit_tests_expect() -> None:
    tested = promtool("test", "rules", "optengine-rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_gateway_metric_the_rules_name_is_exported() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    CacheMetrics(registry)
    exported = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(family.type, [""]):
            exported.add(family.name + suffix)
    named = set(re.findall(r"\boptengine_[a-z_]+\b", RULES.read_text()))
    assert named and named <= exported, named - exported
