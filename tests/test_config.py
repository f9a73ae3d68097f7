"""Configuration: defaults, durations, and errors that name the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from drainer.config import dump_config, load_config, parse_config
from drainer.core import Approve, Reaction
from drainer.errors import ConfigError
from drainer.model import EventType, format_duration, parse_duration

MINIMAL = {
    "health": {"tcp": {"port": 8080}},
    "load_balancers": [{"type": "mock"}],
}


def errors_of(raw: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, origin="drainer.yaml")
    return str(info.value)


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.source.endpoint == "http://169.254.169.254"
    assert config.source.poll_interval == 1.0
    assert config.source.approve is Approve.SOLE
    assert config.drain.timeout == 300.0
    assert config.health.deadline == 45 * 60
    assert config.state_dir == Path("/var/lib/drainer")
    policy = config.policy(node_names=frozenset({"web-1"}), lbs=("mock",))
    assert policy.rules[EventType.PREEMPT].reaction is Reaction.REMOVE
    assert policy.rules[EventType.FREEZE].min_duration == 10.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (12, 12)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-3s", "", "1d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_durations_print_back_as_written() -> None:
    assert [format_duration(s) for s in (30, 300, 3600, 0.25)] == ["30s", "5m", "1h", "250ms"]


def test_event_rules_accept_the_short_and_the_long_form() -> None:
    config = parse_config(
        {
            **MINIMAL,
            "events": {"Reboot": "ignore", "Freeze": {"action": "drain", "min_duration": "30s"}},
        }
    )
    policy = config.policy(node_names=frozenset({"w"}), lbs=("mock",))
    assert policy.rules[EventType.REBOOT].reaction is Reaction.IGNORE
    assert policy.rules[EventType.FREEZE].min_duration == 30.0
    assert policy.rules[EventType.TERMINATE].reaction is Reaction.REMOVE  # default kept


def test_missing_field_names_the_key_path() -> None:
    message = errors_of({"health": {"tcp": {}}, "load_balancers": [{"type": "mock"}]})
    assert "drainer.yaml: health.tcp.port: field required" in message


def test_unknown_key_is_an_error_at_every_level() -> None:
    assert "drainer.yaml: drian: unknown key" in errors_of({**MINIMAL, "drian": {}})
    message = errors_of({**MINIMAL, "source": {"poll_intervall": "1s"}})
    assert "source.poll_intervall: unknown key" in message


def test_adapter_entries_are_validated_by_their_own_schema() -> None:
    message = errors_of({**MINIMAL, "load_balancers": [{"type": "mock", "drain_seconds": "soon"}]})
    assert "load_balancers[0].drain_seconds: not a duration: 'soon'" in message
    message = errors_of({**MINIMAL, "load_balancers": [{"type": "mock", "backnd": "x"}]})
    assert "load_balancers[0].backnd: unknown key" in message


def test_unknown_adapter_type_lists_the_known_ones() -> None:
    message = errors_of({**MINIMAL, "load_balancers": [{"type": "f5"}]})
    assert "load_balancers[0].type: unknown type 'f5'" in message and "mock" in message


def test_no_load_balancer_is_an_error() -> None:
    assert "load_balancers: field required" in errors_of({"health": {"tcp": {"port": 1}}})
    assert "load_balancers" in errors_of({**MINIMAL, "load_balancers": []})


def test_health_needs_exactly_one_check() -> None:
    message = errors_of({**MINIMAL, "health": {}})
    assert "health: set exactly one of http or tcp" in message


def test_every_problem_is_reported_at_once() -> None:
    message = errors_of({"health": {}, "load_balancers": [{"type": "nope"}], "x": 1})
    assert len(message.splitlines()) == 3


def test_duplicate_lb_names_are_refused() -> None:
    lbs = [{"type": "mock", "name": "a"}, {"type": "mock", "name": "a"}]
    assert "names must be unique" in errors_of({**MINIMAL, "load_balancers": lbs})


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "drainer.yaml"
    path.write_text("health: [oops\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "absent.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_show_round_trips(tmp_path: Path) -> None:
    config = parse_config({**MINIMAL, "drain": {"timeout": "2m"}})
    text = dump_config(config)
    assert "timeout: 2m" in text
    path = tmp_path / "again.yaml"
    path.write_text(text)
    assert load_config(path) == config


def test_example_configs_are_valid() -> None:
    examples = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert examples, "configs/ has no example"
    for path in examples:
        load_config(path)


@pytest.mark.parametrize("url", ["http://localhost:80a/h", "ftp://host/x", "/healthz"])
def test_health_url_must_be_an_http_url(url: str) -> None:
    message = errors_of({**MINIMAL, "health": {"http": {"url": url}}})
    assert "health.http.url:" in message
