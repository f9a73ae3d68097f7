"""docs/operations.md stays true: its transitions are the core's, and it names every
metric drainer exports and every alert of deploy/prometheus/drainer-rules.yml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from drainer.core import TRANSITIONS, Phase
from drainer.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text()


def test_the_transition_table_is_the_cores() -> None:
    section = DOC[DOC.index("## Phases") : DOC.index("## A held node")]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| ", section, re.MULTILINE)
    documented: dict[Phase, set[Phase]] = {}
    for source, target in rows:
        documented.setdefault(Phase(source), set()).add(Phase(target))
    assert documented == {phase: set(targets) for phase, targets in TRANSITIONS.items()}


def test_every_metric_is_documented() -> None:
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in DOC, f"{name} is not in docs/operations.md"


def test_every_alert_has_its_section() -> None:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "drainer-rules.yml").read_text())
    alerts = {rule["alert"] for group in groups["groups"] for rule in group["rules"]}
    sections = set(re.findall(r"^### `(\w+)`$", DOC, re.MULTILINE))
    assert sections == alerts


def test_the_readme_links_it() -> None:
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()
