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
    examples = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert examples, "configs/ has no example"
    for path in examples:
        load_config(path)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:80a/h",
        "ftp://host/x",
        "/healthz",
        "http://host:99999/",
        "http://[::1/x",
        "http://exa mple/",
        "http:///path",
    ],
)
def test_health_url_must_be_an_http_url(url: str) -> None:
    message = errors_of({**MINIMAL, "health": {"http": {"url": url}}})
    assert "health.http.url:" in message


# -- issue 7, finding 13: what config check must refuse, and what it must accept -------------


def test_an_unknown_source_type_fails_config_check_naming_the_known_ones() -> None:
    message = errors_of({**MINIMAL, "source": {"type": "bogus"}})
    known = "(known: auto, aws, azure, gcp)"
    assert f"drainer.yaml: source.type: unknown source 'bogus' {known}" in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"source": {"timeout": 0}}, "source.timeout"),
        ({"source": {"poll_interval": "0s"}}, "source.poll_interval"),
        ({"drain": {"timeout": "0ms"}}, "drain.timeout"),
        ({"health": {"tcp": {"port": 80}, "deadline": 0}}, "health.deadline"),
        ({"health": {"tcp": {"port": 80}, "interval": "0s"}}, "health.interval"),
        ({"health": {"tcp": {"port": 80, "timeout": 0}}}, "health.tcp.timeout"),
        ({"health": {"http": {"url": "http://127.0.0.1/", "timeout": 0}}}, "health.http.timeout"),
    ],
)
def test_a_zero_timeout_interval_or_deadline_is_refused(
    override: dict[str, object], key: str
) -> None:
    message = errors_of({**MINIMAL, **override})
    assert f"drainer.yaml: {key}: must be more than 0" in message


def test_durations_where_zero_means_something_still_accept_it() -> None:
    config = parse_config({**MINIMAL, "drain": {"margin": 0}, "events": {"Freeze": "drain"}})
    assert config.drain.margin == 0


@pytest.mark.parametrize("listen", ["localhost", "9464", "::1:9464", "127.0.0.1:70000"])
def test_a_metrics_listen_address_without_a_usable_port_is_refused(listen: str) -> None:
    message = errors_of({**MINIMAL, "metrics": {"listen": listen}})
    assert "drainer.yaml: metrics.listen: not host:port" in message


@pytest.mark.parametrize("listen", ["[::1]:9464", "localhost:9464", "127.0.0.1:9464", None])
def test_metrics_listen_accepts_what_every_other_listen_key_accepts(listen: str | None) -> None:
    assert parse_config({**MINIMAL, "metrics": {"listen": listen}}).metrics.listen == listen


def test_the_haproxy_agent_listen_key_goes_through_the_same_parser() -> None:
    entry = {"type": "haproxy-agent", "service_port": 80}
    message = errors_of({**MINIMAL, "load_balancers": [{**entry, "listen": "localhost"}]})
    assert "load_balancers[0].listen: not host:port" in message
    config = parse_config({**MINIMAL, "load_balancers": [{**entry, "listen": "[::1]:5555"}]})
    assert config.load_balancers[0].listen == "[::1]:5555"  # type: ignore[attr-defined]


def test_a_config_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "drainer.yaml"
    path.write_bytes(b"health:\n  tcp: {port: 80}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 text \\(byte 31: 0xe9\\)"):
        load_config(path)
