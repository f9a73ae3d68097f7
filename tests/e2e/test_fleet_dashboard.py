"""The fleet dashboard and the alert rules against a real Prometheus scraping real sidecars.

Debian's ``prometheus`` (drainer.testing.prometheus) scrapes, every second, four
``drainer run`` processes, each with its own fake metadata service (tests/harness.py),
and one address where no sidecar answers; it loads deploy/prometheus/drainer-rules.yml.
The story, driven through the fakes:

- ``web-a`` goes through a whole Freeze (after three 500s and a malformed answer of its
  metadata service) and is back in service;
- ``web-b`` gets a Reboot, its drain ends at the deadline with sessions left, its load
  balancer refuses the take-out, and the node, unhealthy after the maintenance, is held;
- ``web-c`` cannot read its load balancer;
- ``web-d`` cannot reach its metadata service, so it never learns its name or turns;
- ``down`` is a port where no sidecar answers.

Then every query of deploy/grafana/drainer.json and every alert expression runs over
Prometheus's HTTP API: each must parse and return data, except those named in
``MAY_BE_EMPTY`` and ``QUIET`` with the reason; Prometheus's own evaluation of every
rule must succeed, and the alerts the story causes must be active.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import NODE, World

from drainer.metrics import Metrics
from drainer.testing import free_port, wait_until
from drainer.testing.prometheus import Prometheus, prometheus_available

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "drainer-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "drainer.json"

pytestmark = pytest.mark.skipif(
    not prometheus_available(), reason="needs prometheus (Debian's prometheus package)"
)

# Grafana's variables, as the dashboard is opened on this job over the last minutes.
VARIABLES = {"$__rate_interval": "5m", "$__range": "5m", "$__interval": "5m", "$job": "drainer"}

# Alerts whose expression returns data here, and on which sidecars.
FIRES = {
    "DrainerSidecarDown": {"down"},
    "DrainerNotTurning": {"web-d"},
    "DrainerMetadataServiceUnreachable": {"web-d"},
    "DrainerNodeHeld": {"web-b"},
    "DrainerDrainDeadlinePassed": {"web-b"},
    "DrainerLoadBalancerUnreachable": {"web-c"},
    "DrainerLoadBalancerRefusing": {"web-b"},
}
# Alerts that must stay quiet here, and why; the drainer series they read must exist.
QUIET = {
    "DrainerRestarting": "no sidecar restarts here (promtool tests it)",
    "DrainerLoadBalancerReadsFailing": "reads fail only where the load balancer is down (web-c)",
    "DrainerOutOfServiceTooLong": "its budgets are 15 minutes and more (promtool tests them)",
    "DrainerStateNotSaved": "needs a full disk (tests/e2e/test_full_disk.py drives it)",
    "DrainerApprovalFailing": "the fake metadata service accepts every approval",
    "DrainerInternalErrors": "only a bug in drainer counts one",
    "DrainerNotificationsFailing": "no webhook is configured here",
    "DrainerNotificationsQueued": "no webhook is configured here",
    "DrainerOverBudget": "no budget is configured here (promtool tests it)",
    "DrainerBudgetUnanswered": "no budget is configured here",
}
# Notifications are counted only by builds with drainer/notify.py and a webhook; none is
# configured here, so their series may be missing (the expressions must still parse).
NOTIFICATION_SERIES = ("drainer_notifications_total", "drainer_notification_queue")
# Counted per budget pool: a sidecar without a budget (all of them here) has none.
# tests/unit/test_fleet_metrics.py shows each configured pool's series starts at 0.
POOL_SERIES = ("drainer_budget_over_budget_total",)


@dataclass
class Sidecar:
    name: str
    world: World
    instance: str


@dataclass
class Fleet:
    sidecars: dict[str, Sidecar]
    prometheus: Prometheus
    down: str  # the instance where nothing answers

    def instance(self, name: str) -> str:
        return self.down if name == "down" else self.sidecars[name].instance

    def name_of(self, instance: str) -> str:
        return next((n for n, s in self.sidecars.items() if s.instance == instance), "down")

    def describe(self) -> str:
        return "\n\n".join(
            [f"prometheus log:\n{self.prometheus.log()[-2000:]}"]
            + [f"{n}:\n{s.world.describe()}" for n, s in self.sidecars.items()]
        )


def sidecar(tmp_path: Path, name: str, **override: Any) -> Sidecar:
    directory = tmp_path / name
    directory.mkdir()
    world = World(directory)
    port = free_port()
    world.configure(metrics={"listen": f"127.0.0.1:{port}"}, **override)
    return Sidecar(name, world, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The story, driven once for the tests of this file."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    quick = {"source": {"gone_after": "1s"}}
    slow = {"source": {"poll_interval": "1s"}}
    sidecars = {
        "web-a": sidecar(tmp_path, "web-a", **quick),
        "web-b": sidecar(
            tmp_path,
            "web-b",
            **quick,
            drain={"timeout": "1s"},
            health={"deadline": "2s"},
        ),
        "web-c": sidecar(tmp_path, "web-c", **slow),
        "web-d": sidecar(tmp_path, "web-d", **slow),
    }
    a, b, c, d = (sidecars[n].world for n in ("web-a", "web-b", "web-c", "web-d"))
    a.configure_lb(sessions=0, name="shop")
    b.configure_lb(sessions=2, drain_seconds="60s", name="shop")
    b.fail_lb("take_out", "refused: not allowed")
    b.health.status = 503
    c.configure_lb(name="edge")
    c.fail_lb("state", "connection refused")
    d.fake.stop()  # its metadata service is unreachable from the start
    prometheus: Prometheus | None = None
    try:
        for each in sidecars.values():
            each.world.start()
        down = f"127.0.0.1:{free_port()}"
        directory = tmp_path / "prometheus"
        directory.mkdir()
        prometheus = Prometheus(
            directory,
            targets=[s.instance for s in sidecars.values()] + [down],
            rule_files=[RULES],
        )
        driven = Fleet(sidecars, prometheus, down)
        drive(driven)
        yield driven
    finally:
        if prometheus is not None:
            prometheus.stop()
        for each in sidecars.values():
            each.world.close()


def values(result: list[dict[str, Any]]) -> dict[str, float]:
    """One query's result, keyed by its labels (without job) as text."""
    out = {}
    for sample in result:
        labels = {k: v for k, v in sample["metric"].items() if k != "job"}
        out[json.dumps(labels, sort_keys=True)] = float(sample["value"][1])
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, Grafana's variables set."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not set: {expr}"
            queries.append((panel["title"], expr))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def drive(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    wait = lambda probe, what: wait_until(  # noqa: E731
        probe, timeout=30, interval=0.2, what=what, describe=fleet.describe
    )
    # every sidecar scraped, with its counters at 0, before anything happens
    wait(lambda: len(prometheus.query("drainer_build_info")) == 4, "four sidecars scraped")
    wait(lambda: prometheus.query("sum(up)")[0]["value"][1] == "4", "the down target seen")

    a = fleet.sidecars["web-a"].world
    a.fake.inject("500", count=3, delay=0)  # three attempts per poll: one failed poll
    a.fake.inject("malformed", delay=0)
    a.wait_polls(6)
    freeze = a.fake.schedule("Freeze", [NODE], status="Started")
    a.wait_phase("in_maintenance")
    a.fake.end_event(freeze)
    a.wait_phase("in_service")

    b = fleet.sidecars["web-b"].world
    reboot = b.fake.schedule("Reboot", [NODE], status="Started")
    b.wait_phase("in_maintenance")
    b.fake.end_event(reboot)
    b.wait_phase("held")

    a_instance, b_instance = fleet.instance("web-a"), fleet.instance("web-b")
    back = f'drainer_out_of_service_seconds_count{{type="Freeze", instance="{a_instance}"}} == 1'
    wait(lambda: prometheus.query(back), "web-a's time out of service scraped")
    held = f'drainer_phase{{phase="held", instance="{b_instance}"}} == 1'
    wait(lambda: prometheus.query(held), "web-b held, scraped")
    # an idle sidecar reads its load balancers for the metrics every 15 s (LB_METRICS_EVERY)
    put_back = f'drainer_lb_status{{status="in_service", instance="{a_instance}"}} == 1'
    wait(lambda: prometheus.query(put_back), "web-a in service at its load balancer, scraped")


# What the story must show in some panels, beyond "returns data".
def shows(fleet: Fleet) -> dict[str, Callable[[dict[str, float]], bool]]:
    one = '{"type": "Freeze"}'
    return {
        "Sidecars up": lambda v: list(v.values()) == [4],
        "Sidecars down": lambda v: list(v.values()) == [1],
        "Nodes held": lambda v: list(v.values()) == [1],
        "Load balancers unreachable": lambda v: list(v.values()) == [1],
        "Nodes out per backend": lambda v: v.get('{"backend": "shop"}') == 1,
        "Events by type": lambda v: v[one] > 0 and v['{"type": "Reboot"}'] > 0,
        "Time out of service per maintenance": lambda v: v.get(one, 0) > 0,
        "Drains by result": lambda v: (
            v['{"result": "deadline"}'] > 0 and v['{"result": "drained"}'] > 0
        ),
        "Errors by kind": lambda v: all(
            v[f'{{"kind": "{kind}"}}'] > 0
            for kind in ("adapter", "adapter_read", "source", "payload")
        ),
        "Out of service now": lambda v: (
            set(v) == {json.dumps({"instance": fleet.instance("web-b")})}
        ),
    }


def test_every_dashboard_query_and_alert_expression_returns_data(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    exported = {family.name for family in Metrics().registry.collect()}
    notifying = any(name.removesuffix("_total") in exported for name in NOTIFICATION_SERIES)

    checks = shows(fleet)
    seen_titles = set()
    for title, expr in dashboard_queries():
        result = prometheus.query(expr)  # raises PromQLError if Prometheus refuses it
        if not result and not notifying and any(s in expr for s in NOTIFICATION_SERIES):
            continue  # this build counts no notifications
        assert result, f"{title}: no data for {expr}\n{fleet.describe()}"
        if title in checks and title not in seen_titles:
            seen_titles.add(title)
            assert checks[title](values(result)), f"{title}: {values(result)} from {expr}"
    assert seen_titles == set(checks)

    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == set(FIRES) | set(QUIET)
    for rule in rules:
        name, expr = rule["alert"], rule["expr"]
        result = prometheus.query(expr)
        if name in FIRES:
            where = {fleet.name_of(sample["metric"]["instance"]) for sample in result}
            assert where == FIRES[name], f"{name}: fires on {where} ({expr})"
            continue
        assert result == [], f"{name} fires, but {QUIET[name]}: {result}"
        for selector in re.findall(r"\bdrainer_\w+(?:\{[^}]*\})?", expr):
            if selector.startswith(NOTIFICATION_SERIES) and not notifying:
                continue
            if selector.startswith(POOL_SERIES):
                continue
            assert prometheus.query(selector), f"{name}: no series {selector}"


def test_prometheus_evaluates_every_rule_and_the_story_raises_its_alerts(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    driven = time.time()

    def evaluated() -> list[dict[str, Any]]:
        groups = prometheus.api("rules")["groups"]
        evaluated = [rule for group in groups for rule in group["rules"]]
        latest = min(_when(rule["lastEvaluation"]) for rule in evaluated)
        return evaluated if latest > driven else []

    rules = wait_until(evaluated, timeout=30, interval=0.2, what="the rules evaluated again")
    assert len(rules) == len(alert_rules())
    for rule in rules:
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule
    active: dict[str, set[str]] = {}
    for alert in prometheus.api("alerts")["alerts"]:
        name = alert["labels"]["alertname"]
        active.setdefault(name, set()).add(fleet.name_of(alert["labels"]["instance"]))
    assert active == FIRES  # pending or firing: a `for` of minutes is not waited for


def _when(text: str) -> float:
    """An RFC 3339 time as Prometheus writes it (nanoseconds, Z) in epoch seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    assert match, text
    base = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    fraction = float("0" + (match.group(2) or ".0")[:7])
    offset = match.group(3)
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        base -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return base + fraction
