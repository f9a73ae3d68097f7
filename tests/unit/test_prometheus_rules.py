"""deploy/prometheus/drainer-rules.yml: checked and unit-tested by Debian's ``promtool``.

``promtool test rules`` runs drainer-rules.test.yml, where every alert fires on the
series of a story and stays quiet where it must. Here also: every alert has such a
test, a runbook and a section in docs/operations.md, and every drainer series a rule
reads is one drainer exports. tests/e2e/test_fleet_dashboard.py runs the same
expressions against a real Prometheus scraping real sidecars.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from drainer.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "drainer-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "drainer-rules.test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# Added by the notifications work (drainer/notify.py); read by the rules already.
NOTIFICATION_SERIES = {"drainer_notifications_total", "drainer_notification_queue"}

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="needs promtool (Debian's prometheus package)"
)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same tests against rules whose held alert also fires for an operator's drain."""
    changed = RULES.read_text().replace(" unless on (instance, job) drainer_manual_drain == 1", "")
    assert changed != RULES.read_text()
    (tmp_path / RULES.name).write_text(changed)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "DrainerNodeHeld" in done.stdout + done.stderr


def test_every_alert_fires_in_a_unit_test_and_has_a_runbook() -> None:
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tested
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for rule in rules():
        name = rule["alert"]
        assert name in fired, f"{name}: no unit test where it fires"
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name


def test_every_drainer_series_the_rules_read_is_exported() -> None:
    exported = set()
    for family in Metrics().registry.collect():  # a family without a series yet counts too
        suffix = "_total" if family.type == "counter" else ""
        exported |= {family.name + suffix} | {sample.name for sample in family.samples}
    read = {name for rule in rules() for name in re.findall(r"\bdrainer_\w+", rule["expr"])}
    assert read - exported <= NOTIFICATION_SERIES, sorted(read - exported)


def test_every_counter_an_increase_reads_is_exposed_at_zero_from_the_start() -> None:
    # increase() takes a series' first sample as its start: a series that first appears
    # at 1 (the first error of its kind since drainer started) raises no alert
    exposed = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in Metrics().registry.collect()
        for sample in family.samples
        if sample.value == 0
    }
    read = set()
    for rule in rules():
        for name, matchers in re.findall(r"increase\((drainer_\w+)\{([^}]*)\}", rule["expr"]):
            choices = [
                [(label, value) for value in values.split("|")]
                for label, values in re.findall(r'(\w+)=~?"([^"]*)"', matchers)
            ]
            read |= {(name, tuple(sorted(labels))) for labels in itertools.product(*choices)}
    assert read, "no increase() read"
    assert read - exposed == set(), sorted(read - exposed)
