"""deploy/grafana/drainer.json as Grafana reads it (its queries run against a real
Prometheus in tests/e2e/test_fleet_dashboard.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drainer.metrics import ERROR_KINDS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD: dict[str, Any] = json.loads((ROOT / "deploy" / "grafana" / "drainer.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_queries_the_chosen_prometheus_on_the_chosen_jobs() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["allValue"] == ".+"
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            expr = target["expr"]
            # every selector keeps to the chosen jobs (joined series follow by instance, job)
            assert expr.count("{") == expr.count('job=~"$job"'), (panel["title"], expr)


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = {panel["title"] for panel in DASHBOARD["panels"]}
    assert {
        "Nodes per phase",
        "Nodes out per backend",
        "Events by type",
        "Time out of service per maintenance",
        "Errors by kind",
        "Notification failures",
    } <= titles


def test_errors_by_kind_describes_every_kind() -> None:
    panel = next(p for p in DASHBOARD["panels"] if p["title"] == "Errors by kind")
    described = {
        kind
        for part in panel["description"].split(";")
        for kind in part.split(":")[0].strip().split("/")
    }
    assert set(ERROR_KINDS) <= described, set(ERROR_KINDS) - described
