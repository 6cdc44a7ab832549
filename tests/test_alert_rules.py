"""The alert rules under Prometheus' own tool: `promtool check rules` on the PrometheusRule's
groups, and `promtool test rules` (tests/promtool/alerts_test.yaml: synthetic series, each
alert firing where it should and silent where it should not), for every alert in
manifests/monitoring. Debian's prometheus package brings promtool (.ci/run installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from test_monitoring import monitoring, needs_kubectl, rule_expressions

from harness import needs

TESTS = Path(__file__).resolve().parent / "promtool" / "alerts_test.yaml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        needs.missing("no promtool: install Debian's prometheus package (.ci/run does)")
    return found


def rules_file(directory: Path) -> Path:
    """The PrometheusRule's spec (groups) as a plain Prometheus rules file."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(monitoring()["PrometheusRule"]["spec"], sort_keys=False))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


@needs_kubectl
def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    done = run(promtool(), "check", "rules", str(rules_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = len(rule_expressions(monitoring()["PrometheusRule"]))
    assert f"SUCCESS: {alerts} rules found" in done.stdout, done.stdout


@needs_kubectl
def test_promtool_unit_tests_fire_and_silence_every_alert(tmp_path: Path) -> None:
    rules_file(tmp_path)
    shutil.copyfile(TESTS, tmp_path / TESTS.name)
    done = run(promtool(), "test", "rules", str(tmp_path / TESTS.name))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == set(rule_expressions(monitoring()["PrometheusRule"]))
