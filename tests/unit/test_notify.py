"""Notifications in-process: the ``notify:`` section, the notice and its bodies, the
outbox's queue and its file. Delivery goes through ``httpx.MockTransport`` here; the
real HTTP receiver (failing, stalling, recovering) is in
tests/integration/test_notify_delivery.py and tests/e2e/test_notify_daemon.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from drainer.config import dump_config, load_config, parse_config
from drainer.core import Phase, Record
from drainer.errors import ConfigError
from drainer.metrics import Metrics
from drainer.notify.config import TRIGGERS, NotifyConfig, Webhook
from drainer.notify.notice import Notice, alert_notice, body, transition_notice
from drainer.notify.outbox import FILE, Outbox, send_once, url_key
from drainer.testing import maintenance, wait_until

BASE: dict[str, Any] = {
    "health": {"tcp": {"port": 8080}},
    "load_balancers": [{"type": "mock", "name": "lb1"}],
}
URL = "http://127.0.0.1:9/hook"


def config(notify: dict[str, Any], tmp_path: Path | None = None) -> Any:
    raw = {**BASE, "notify": notify}
    if tmp_path is not None:
        raw["state_dir"] = str(tmp_path)
    return parse_config(raw, origin="drainer.yaml")


def count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("drainer_notifications_total", {"result": result})
    return value or 0.0


# -- configuration -----------------------------------------------------------------------


def test_the_triggers_are_the_core_phases_and_alert() -> None:
    assert set(TRIGGERS) == {p.value for p in Phase} | {"alert"}


def test_a_webhook_is_configured_with_headers_triggers_and_format() -> None:
    notify = config(
        {
            "webhooks": [
                {
                    "url": URL,
                    "headers": {"X-Team": "web", "Authorization": {"env": "TOKEN"}},
                    "on": ["held", "alert"],
                    "format": "slack",
                }
            ],
            "timeout": "2s",
            "retry_for": "1m",
        }
    ).notify
    hook = notify.webhooks[0]
    assert (hook.on, hook.format, notify.timeout, notify.retry_for) == (
        ["held", "alert"],
        "slack",
        2.0,
        60.0,
    )
    assert hook.label == "http://127.0.0.1:9"  # never the path: a Slack URL's is a token
    assert config({}).notify == NotifyConfig()  # no webhook: nothing is sent


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ({"url": URL, "on": ["drainedd"]}, "notify.webhooks[0].on: unknown 'drainedd'"),
        ({"url": URL, "on": []}, "notify.webhooks[0].on: name at least one of"),
        ({"url": URL, "fromat": "slack"}, "notify.webhooks[0].fromat: unknown key"),
        ({"url": URL, "format": "teams"}, "notify.webhooks[0].format:"),
        ({"url": "ftp://x/"}, "notify.webhooks[0].url: not an http(s) URL"),
        ({"url": URL, "headers": {"A": {"file": "/x", "env": "Y"}}}, "set exactly one of"),
        ({"url": URL, "headers": {"A": {}}}, "notify.webhooks[0].headers.A.secret"),
        ({"url": URL, "headers": {"A": {"fil": "/x"}}}, "headers.A.secret.fil: unknown key"),
        ({"url": URL, "headers": {"A": "a\nB: b"}}, "headers.A.plain: holds a line break"),
    ],
)
def test_a_wrong_webhook_is_named_by_its_key_path(hook: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config({"webhooks": [hook]})
    assert message in str(caught.value)
    assert str(caught.value).startswith("drainer.yaml: ")


@pytest.mark.parametrize(
    "url",
    [
        "htps://hooks.example.com/services/T0/B0/SECRETTOKEN",
        "https://[::1/T0/SECRETTOKEN",
        "hooks.example.com/SECRETTOKEN",
    ],
)
def test_a_wrong_webhook_url_is_shown_without_its_path(url: str) -> None:
    # the error goes to the journal (ExecStartPre runs `drainer config check`)
    with pytest.raises(ConfigError) as caught:
        config({"webhooks": [{"url": url}]})
    assert "notify.webhooks[0].url: not an http(s) URL with a host" in str(caught.value)
    assert "SECRETTOKEN" not in str(caught.value)


def test_two_webhooks_with_one_url_are_refused_naming_both() -> None:
    # their notices would share one queue (and one file in state_dir), keyed by the URL
    slack = "https://hooks.example.com/services/T0/B0/SECRETTOKEN"
    hooks = [{"url": slack, "on": ["held"]}, {"url": URL}, {"url": slack, "name": "ops"}]
    with pytest.raises(ConfigError) as caught:
        config({"webhooks": hooks})
    message = str(caught.value)
    assert "notify.webhooks: entries [0] (https://hooks.example.com) and [2] (ops)" in message
    assert "make them one entry" in message and "SECRETTOKEN" not in message
    assert config({"webhooks": hooks[:2]}).notify.webhooks[1].url == URL


def test_a_secret_header_is_read_when_sent_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("s3cret-from-file\n")
    monkeypatch.setenv("DRAINER_TEST_TOKEN", "s3cret-from-env")
    loaded = config(
        {
            "webhooks": [
                {
                    "url": URL,
                    "headers": {
                        "Authorization": {"file": str(secret_file)},
                        "X-Key": {"env": "DRAINER_TEST_TOKEN"},
                    },
                }
            ]
        }
    )
    shown = dump_config(loaded)
    assert "s3cret" not in shown and str(secret_file) in shown
    headers = loaded.notify.webhooks[0].resolved_headers()
    assert headers == {"Authorization": "s3cret-from-file", "X-Key": "s3cret-from-env"}

    monkeypatch.delenv("DRAINER_TEST_TOKEN")
    with pytest.raises(ValueError, match="header X-Key: the environment variable"):
        loaded.notify.webhooks[0].resolved_headers()


@pytest.mark.parametrize("secret", ["Bearer s3cret\nX-Other: 1", "Bearer s3cr\u00e9t"])
def test_a_secret_a_header_cannot_carry_fails_without_showing_it(
    tmp_path: Path, secret: str
) -> None:
    # h11 would refuse it with the value in its message, logged at every attempt
    (tmp_path / "token").write_text(secret, encoding="utf-8")
    hook = Webhook(url=URL, headers={"Authorization": {"file": str(tmp_path / "token")}})
    with pytest.raises(ValueError) as caught:
        hook.resolved_headers()
    assert "header Authorization:" in str(caught.value)
    assert "a line break, a control character or a non-ASCII one" in str(caught.value)
    assert "s3cr" not in str(caught.value)
    with httpx.Client(transport=mock_transport([200], [])) as client:
        outcome = send_once(client, hook, notice(Phase.HELD), timeout=1.0)
    assert not outcome.ok and "s3cr" not in outcome.detail


# -- the notice ---------------------------------------------------------------------------


def held_pair() -> tuple[Record, Record]:
    event = maintenance("e-1", not_before=1_800_000_000.0)
    old = Record(phase=Phase.RECOVERING, event=event, owned=frozenset({"lb1"}))
    new = replace(old, phase=Phase.HELD, note="health deadline passed", alert="not healthy")
    return old, new


def test_a_transition_notice_has_the_documented_json_body() -> None:
    old, new = held_pair()
    notice = transition_notice(old, new, node="web-1", lbs=("lb1", "lb2"), at=1.5, id="n-1")
    assert body(notice, "json") == {
        "id": "n-1",
        "type": "transition",
        "node": "web-1",
        "phase": "held",
        "previous_phase": "recovering",
        "note": "health deadline passed",
        "alert": "not healthy",
        "manual": False,
        "event": {
            "id": "e-1",
            "type": "Reboot",
            "status": "Scheduled",
            "not_before": "2027-01-15T08:00:00.000Z",
        },
        "load_balancers": ["lb1", "lb2"],
        "out_of": ["lb1"],
        "timestamp": "1970-01-01T00:00:01.500Z",
    }
    # an alert the record already had is not the transition's
    again = transition_notice(
        new, replace(new, phase=Phase.RECOVERING), node="w", lbs=(), at=0, id="x"
    )
    assert again.alert == ""


def test_the_slack_body_is_one_text() -> None:
    old, new = held_pair()
    notice = transition_notice(old, new, node="web-1", lbs=("lb1",), at=0, id="n")
    assert body(notice, "slack") == {
        "text": "drainer on web-1: recovering -&gt; held [Reboot e-1]: health deadline passed"
        " (out of lb1)\nnot healthy"
    }
    alert = alert_notice(new, "lb1: drain: refused", node="web-1", lbs=(), at=0, id="a")
    assert body(alert, "slack") == {
        "text": "drainer on web-1 (held) [Reboot e-1]: lb1: drain: refused"
    }


def test_the_slack_text_escapes_what_slack_would_read_as_markup() -> None:
    # Slack reads <...> as a link or a mention (<!channel> pings everyone) and & as an
    # entity: a load balancer's error page or a note must arrive as written
    old, new = held_pair()
    alert = alert_notice(
        new, "lb1: drain: <html>502 & <!channel> <https://x|y>", node="web-1", lbs=(), at=0, id="a"
    )
    text = body(alert, "slack")["text"]
    assert "<" not in text and ">" not in text
    assert text.endswith("lb1: drain: &lt;html&gt;502 &amp; &lt;!channel&gt; &lt;https://x|y&gt;")
    moved = transition_notice(old, new, node="web-1", lbs=("lb1",), at=0, id="n")
    assert body(moved, "slack")["text"].startswith("drainer on web-1: recovering -&gt; held ")


def test_a_notice_survives_its_json() -> None:
    old, new = held_pair()
    notice = transition_notice(old, new, node="web-1", lbs=("lb1",), at=3.25, id="n")
    assert Notice.from_json(json.loads(json.dumps(notice.to_json()))) == notice
    with pytest.raises(ValueError):
        Notice.from_json({**notice.to_json(), "kind": "gossip"})


# -- the outbox: queue and file -------------------------------------------------------------


def outbox(tmp_path: Path, notify: dict[str, Any], **kwargs: Any) -> Outbox:
    return Outbox(config(notify).notify, tmp_path, Metrics(), **kwargs)


def notice(phase: Phase, id: str = "n") -> Notice:
    old, new = Record(), Record(phase=phase)
    return transition_notice(old, new, node="web-1", lbs=("lb1",), at=0, id=id)


def test_a_webhook_gets_only_what_its_on_names(tmp_path: Path) -> None:
    box = outbox(tmp_path, {"webhooks": [{"url": URL, "on": ["held"]}, {"url": URL + "2"}]})
    box.submit(notice(Phase.DRAINING))
    box.submit(notice(Phase.HELD))
    got = [(letter.webhook == url_key(URL), letter.notice.phase) for letter in box.pending()]
    assert got == [(False, "draining"), (True, "held"), (False, "held")]


def test_a_full_queue_drops_the_oldest_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = outbox(tmp_path, {"webhooks": [{"url": URL}], "queue_size": 2})
    with caplog.at_level(logging.WARNING, logger="drainer"):
        for i in range(5):
            box.submit(notice(Phase.DRAINING, id=f"n{i}"))
    assert [letter.notice.id for letter in box.pending()] == ["n3", "n4"]
    assert count(box.metrics, "dropped") == 3
    assert box.metrics.registry.get_sample_value("drainer_notification_queue") == 2
    assert "notification queue full (2): dropped the oldest" in caplog.text
    assert "(3 dropped so far)" in caplog.text


def test_a_full_queue_drops_alerts_before_a_transition(tmp_path: Path) -> None:
    # the receiver is down, then alerts keep coming: the held notice stays
    box = outbox(tmp_path, {"webhooks": [{"url": URL}], "queue_size": 3})
    box.submit(notice(Phase.HELD, id="held"))
    held = Record(phase=Phase.HELD)
    for i in range(5):
        box.alert(held, f"lb1: put back: refused ({i})")
    kept = box.pending()
    assert (kept[0].notice.id, kept[0].notice.kind) == ("held", "transition")
    assert [x.notice.alert for x in kept[1:]] == [
        "lb1: put back: refused (3)",
        "lb1: put back: refused (4)",
    ]
    assert count(box.metrics, "dropped") == 3


def test_alerts_taking_turns_are_each_sent_once(tmp_path: Path) -> None:
    # an approval retried every turn that fails one way, then another (an HTTP 500, a
    # time-out): only the same alert as the last was held back, so every turn sent one
    box = outbox(tmp_path, {"webhooks": [{"url": URL}]})
    draining = Record(phase=Phase.DRAINING)
    for _ in range(10):
        box.alert(draining, "approving event e1 failed: HTTP 500")
        box.alert(draining, "approving event e1 failed: timed out")
    assert [letter.notice.alert for letter in box.pending()] == [
        "approving event e1 failed: HTTP 500",
        "approving event e1 failed: timed out",
    ]


def test_what_is_queued_is_on_disk_and_read_back_by_the_next_process(tmp_path: Path) -> None:
    hooks = {"webhooks": [{"url": URL}]}
    first = outbox(tmp_path, hooks)
    first.submit(notice(Phase.DRAINING, id="a"))
    first.submit(notice(Phase.HELD, id="b"))
    saved = json.loads((tmp_path / FILE).read_text())
    assert [item["notice"]["id"] for item in saved["pending"]] == ["a", "b"]
    assert URL not in (tmp_path / FILE).read_text()  # a hash names the webhook
    assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o600

    second = outbox(tmp_path, hooks)  # a restart: never started, nothing sent
    assert [letter.notice for letter in second.pending()] == [
        letter.notice for letter in first.pending()
    ]


def test_a_transition_the_last_process_saved_but_never_queued_is_told_at_start(
    tmp_path: Path,
) -> None:
    # killed between saving the record and queueing its notice (or `drainer drain` run
    # while drainer was stopped): the record moved on, and no notice said so
    hooks = {"webhooks": [{"url": URL, "on": ["held"]}]}
    first = outbox(tmp_path, hooks)
    draining = Record(phase=Phase.DRAINING, since=10.0)
    first.changed(Record(), draining)  # not a trigger of the webhook: nothing queued
    assert first.pending() == []

    held = Record(phase=Phase.HELD, since=20.0, manual=True, note="drainer drain")
    second = outbox(tmp_path, hooks)  # the next drainer run, the record on disk held
    second.catch_up(held)
    (letter,) = second.pending()
    assert (letter.notice.previous_phase, letter.notice.phase) == ("draining", "held")
    assert (letter.notice.at, letter.notice.note) == (20.0, "drainer drain")

    third = outbox(tmp_path, hooks)  # told already: not again
    third.catch_up(held)
    assert len(third.pending()) == 1


def test_a_damaged_outbox_file_is_reported_and_not_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE).write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="drainer"):
        box = outbox(tmp_path, {"webhooks": [{"url": URL}]})
    assert box.pending() == []
    assert "cannot be read" in caplog.text
    # kept for a person to read: the next notice no longer overwrites what it held
    assert f"kept as {tmp_path / FILE}.damaged" in caplog.text
    box.submit(notice(Phase.HELD))
    assert (tmp_path / f"{FILE}.damaged").read_text() == "{not json"


@pytest.mark.parametrize("damage", ["deep", "binary", "directory"])
def test_an_outbox_file_drainer_cannot_read_is_set_aside(tmp_path: Path, damage: str) -> None:
    if damage == "deep":  # json.loads: RecursionError, no ValueError
        (tmp_path / FILE).write_text("[" * 100_000)
    elif damage == "binary":  # the file was set aside only when it was not JSON
        (tmp_path / FILE).write_bytes(b"\xff\xfe\x00")
    else:  # and a directory there kept every later write from happening
        (tmp_path / FILE).mkdir()
    box = outbox(tmp_path, {"webhooks": [{"url": URL}]})
    assert box.pending() == []
    box.submit(notice(Phase.HELD))
    assert (tmp_path / f"{FILE}.damaged").exists()
    assert len(json.loads((tmp_path / FILE).read_text())["pending"]) == 1


def mock_transport(answers: list[int], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers.pop(0) if len(answers) > 1 else answers[0])

    return httpx.MockTransport(handle)


def test_delivered_letters_leave_the_file_and_are_counted(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    box = outbox(
        tmp_path,
        {"webhooks": [{"url": URL}]},
        transport=mock_transport([503, 503, 204], seen),
        backoff=(0.001, 0.002),
    )
    box.submit(notice(Phase.DRAINING))
    box.start()
    try:
        wait_until(lambda: count(box.metrics, "delivered") == 1, what="delivered")
    finally:
        box.close()
    assert len(seen) == 3  # two 503s retried, the 204 counts as delivered
    assert json.loads((tmp_path / FILE).read_text())["pending"] == []
    assert count(box.metrics, "failed") == 0


@pytest.mark.parametrize(
    ("status", "again"),
    [(200, False), (299, False), (404, False), (408, True), (429, True), (502, True)],
)
def test_which_answers_are_retried(status: int, again: bool) -> None:
    hook = Webhook(url=URL)
    with httpx.Client(transport=mock_transport([status], [])) as client:
        outcome = send_once(client, hook, notice(Phase.HELD), timeout=1.0)
    assert (outcome.ok, outcome.again) == (200 <= status < 300, again)
    assert outcome.detail.startswith(f"HTTP {status}")


def test_a_redirect_is_not_followed_and_says_so() -> None:
    # following it would send the body (and the secret headers) where the answer says;
    # the operator is told to configure the new URL instead
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(308, headers={"Location": "https://elsewhere.example/t0k3n"})

    hook = Webhook(url=URL)
    with httpx.Client(transport=httpx.MockTransport(handle)) as client:
        outcome = send_once(client, hook, notice(Phase.HELD), timeout=1.0)
    assert (outcome.ok, outcome.again) == (False, False)
    assert outcome.detail == (
        "HTTP 308 Permanent Redirect: a redirect, not followed: configure the URL it names"
    )
    assert "t0k3n" not in outcome.detail


def test_a_letter_whose_webhook_is_gone_fails_once_started(tmp_path: Path) -> None:
    first = outbox(tmp_path, {"webhooks": [{"url": URL}]})
    first.submit(notice(Phase.HELD))
    box = outbox(
        tmp_path, {"webhooks": [{"url": URL + "-new"}]}, transport=mock_transport([200], [])
    )
    box.start()
    try:
        wait_until(lambda: count(box.metrics, "failed") == 1, what="given up")
    finally:
        box.close()
    assert box.pending() == []


def test_a_reload_that_removes_a_webhook_ends_the_retries_to_it(tmp_path: Path) -> None:
    # SIGHUP after the operator removed (or rotated the URL of) a failing webhook: its
    # letter under way was retried with the old URL for retry_for (10 minutes)
    seen: list[httpx.Request] = []
    box = outbox(
        tmp_path,
        {"webhooks": [{"url": URL}]},
        transport=mock_transport([503], seen),
        backoff=(0.001, 0.002),
    )
    box.submit(notice(Phase.HELD))
    box.submit(notice(Phase.RECOVERING))
    box.start()
    try:
        wait_until(lambda: len(seen) >= 2, what="retries")
        box.configure(config({"webhooks": [{"url": URL + "-rotated"}]}).notify)
        wait_until(lambda: count(box.metrics, "failed") == 2, what="both given up")
    finally:
        box.close()
    assert box.pending() == []


def test_a_notify_section_survives_config_show(tmp_path: Path) -> None:
    loaded = config(
        {
            "webhooks": [
                {"url": URL, "headers": {"A": {"env": "X"}, "B": "b"}, "on": ["held"]},
            ],
            "retry_for": "2m",
        }
    )
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(loaded))
    assert load_config(path) == loaded


def test_a_secret_that_cannot_be_read_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = {"url": URL, "headers": {"Authorization": {"file": str(tmp_path / "nope")}}}
    box = outbox(tmp_path, {"webhooks": [hook]})
    with caplog.at_level(logging.ERROR, logger="drainer"):
        box.start()
    box.close()
    assert (
        "notify.webhooks[0] (http://127.0.0.1:9): header Authorization: cannot read" in caplog.text
    )
