"""fleet/prometheus and fleet/alertmanager checked by the real tools (Debian's prometheus and
prometheus-alertmanager packages): rules unit tests, config syntax, the route example."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "fleet/prometheus"
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool not installed (scripts/setup.sh --test)")


def _run(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


@needs_promtool
def test_alert_rules_unit_tests_pass() -> None:
    assert PROMTOOL
    proc = _run(PROMTOOL, "test", "rules", "rules_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts >= {"ApplianceOffline", "ApplianceTelemetryStale", "ApplianceUplinkDown",
                      "ApplianceSrtLossHigh", "ApplianceThrottled", "ApplianceDiskLow"}
    tests = yaml.safe_load((PROM / "rules_test.yml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    assert fired == alerts


@needs_promtool
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The rules tests are not vacuous: a threshold moved by mistake makes them fail."""
    assert PROMTOOL
    rules = (PROM / "rules.yml").read_text()
    assert "appliance_disk_free_bytes < 1e9" in rules
    (tmp_path / "rules.yml").write_text(rules.replace("appliance_disk_free_bytes < 1e9",
                                                      "appliance_disk_free_bytes < 1e8"))
    shutil.copy(PROM / "rules_test.yml", tmp_path / "rules_test.yml")
    proc = _run(PROMTOOL, "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "ApplianceDiskLow" in proc.stdout + proc.stderr


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    assert PROMTOOL
    proc = _run(PROMTOOL, "check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 rules found" in proc.stdout  # 6 alerts + 1 recording rule


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (prometheus-alertmanager)")
def test_alertmanager_route_example_is_valid() -> None:
    assert AMTOOL
    proc = _run(AMTOOL, "check-config", str(ROOT / "fleet/alertmanager/alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # critical alerts go to the on-call receiver, warnings to ops
    for labels, receiver in (("severity=critical", "oncall"), ("severity=warning", "ops")):
        route = _run(AMTOOL, "config", "routes", "test", "--config.file",
                     str(ROOT / "fleet/alertmanager/alertmanager.yml"), "alertname=X", labels)
        assert route.stdout.strip() == receiver, route.stdout + route.stderr
