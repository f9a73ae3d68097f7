"""``source.type: auto``: find, at start, which cloud this VM runs on, and use its source.

Each metadata service is asked for its identity at the same time, with a short timeout,
the way only that service answers:

- Azure: ``GET /metadata/instance/compute`` with ``Metadata: true`` -> a JSON object
  with a ``name``;
- AWS: ``PUT /latest/api/token`` (IMDSv2), then ``GET /latest/meta-data/instance-id``
  with the token -> an instance id;
- Google Cloud: ``GET /computeMetadata/v1/instance/id`` with ``Metadata-Flavor:
  Google`` -> an answer that says ``Metadata-Flavor: Google`` back.

On a real VM all three live at 169.254.169.254 and only one answers this way. The
first of Azure, AWS, Google Cloud that does is used, and the log says which (and what
the others said); none answering is an error naming each address and what it said. The
keys every source has (``poll_interval``, ``timeout``, ``approve``, the ``gone_after``
windows) are passed on; ``approve`` defaults to ``never`` here, since only Azure can
approve: set ``sole`` or ``always`` only for Azure (on another cloud that is an error).
A source's own keys beyond its endpoint need ``source.type`` set to that cloud.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from drainer._types import HttpUrl, PositiveDuration
from drainer.errors import ConfigError, SourceError
from drainer.model import Approve
from drainer.sources.base import EventSource, SourceConfig, SourcePlugin

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("drainer")

DEFAULT_ENDPOINT = "http://169.254.169.254"
CLOUDS = {"azure": "Azure", "aws": "AWS", "gcp": "Google Cloud"}
_COMMON = ("poll_interval", "timeout", "approve", "gone_after", "gone_after_doubt")


class AutoConfig(SourceConfig):
    """The ``source:`` section of ``type: auto``: where to look for each cloud."""

    type: str = "auto"
    approve: Approve = Approve.NEVER  # only Azure can approve
    azure_endpoint: HttpUrl = DEFAULT_ENDPOINT
    aws_endpoint: HttpUrl = DEFAULT_ENDPOINT
    gcp_endpoint: HttpUrl = DEFAULT_ENDPOINT
    detect_timeout: PositiveDuration = 1.0  # each identity question


def _client(url: str, timeout: float, transport: httpx.BaseTransport | None) -> httpx.Client:
    import httpx

    return httpx.Client(
        base_url=url,
        timeout=httpx.Timeout(timeout),
        trust_env=False,
        follow_redirects=False,
        transport=transport,
    )


def _azure(client: httpx.Client) -> str:
    reply = client.get(
        "/metadata/instance/compute",
        params={"api-version": "2021-02-01"},
        headers={"Metadata": "true"},
    )
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}"
    try:
        doc = reply.json()
    except ValueError:
        return "not JSON"
    return "" if isinstance(doc, dict) and doc.get("name") else "no VM name"


def _aws(client: httpx.Client) -> str:
    token = client.put("/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    if token.status_code != 200 or not token.text.strip():
        return f"token: HTTP {token.status_code}"
    reply = client.get(
        "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token.text.strip()}
    )
    if reply.status_code != 200 or not reply.text.strip():
        return f"instance-id: HTTP {reply.status_code}"
    return ""


def _gcp(client: httpx.Client) -> str:
    reply = client.get("/computeMetadata/v1/instance/id", headers={"Metadata-Flavor": "Google"})
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}"
    if reply.headers.get("Metadata-Flavor") != "Google":
        return "no Metadata-Flavor: Google in the answer"
    return ""


_PROBES: dict[str, Callable[[httpx.Client], str]] = {"azure": _azure, "aws": _aws, "gcp": _gcp}


def detect(config: AutoConfig, transport: httpx.BaseTransport | None = None) -> dict[str, str]:
    """What each cloud's metadata service said: "" for an identity answer, else why not."""
    import httpx

    def ask(cloud: str) -> str:
        url = getattr(config, f"{cloud}_endpoint")
        try:
            with _client(url, config.detect_timeout, transport) as client:
                return _PROBES[cloud](client)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    with ThreadPoolExecutor(len(_PROBES), thread_name_prefix="detect") as pool:
        answers = dict(zip(_PROBES, pool.map(ask, _PROBES), strict=True))
    return answers


def _plugin(cloud: str) -> SourcePlugin[Any] | None:
    try:
        module = importlib.import_module(f"drainer.sources.{cloud}")
    except ModuleNotFoundError:  # a cloud whose source this drainer does not have
        return None
    plugin = getattr(module, "PLUGIN", None)
    return plugin if isinstance(plugin, SourcePlugin) else None


def choose(config: AutoConfig, answers: dict[str, str]) -> tuple[str, SourceConfig]:
    """The cloud that answered, and its source's configuration. ConfigError when the
    configuration does not suit it; SourceError when none answered."""
    said = "; ".join(
        f"{CLOUDS[c]} at {getattr(config, f'{c}_endpoint')}: {why or 'answered'}"
        for c, why in answers.items()
    )
    for cloud, why in answers.items():
        if why:
            continue
        plugin = _plugin(cloud)
        if plugin is None:
            raise ConfigError(
                f"source.type auto: this VM runs on {CLOUDS[cloud]}, but this drainer has no"
                f" {cloud} source ({said})"
            )
        section = {key: getattr(config, key) for key in _COMMON}
        section.update(type=cloud, endpoint=getattr(config, f"{cloud}_endpoint"))
        try:
            return cloud, plugin.config_model.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(
                f"source.{'.'.join(str(p) for p in e['loc'])}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ConfigError(f"source.type auto found {CLOUDS[cloud]}: {problems}") from exc
    raise SourceError(
        f"source.type auto: no cloud metadata service answered ({said}); is this a cloud VM?"
        " Set source.type (azure, aws, gcp) or the *_endpoint keys"
    )


def create(config: AutoConfig, stopping: threading.Event) -> EventSource:
    answers = detect(config)
    cloud, chosen = choose(config, answers)
    others = ", ".join(f"{CLOUDS[c]}: {why}" for c, why in answers.items() if c != cloud)
    log.info(
        "source auto: this VM runs on %s (metadata at %s; %s)",
        CLOUDS[cloud],
        getattr(config, f"{cloud}_endpoint"),
        others,
    )
    plugin = _plugin(cloud)
    assert plugin is not None
    source: EventSource = plugin.create(chosen, stopping)
    return source


PLUGIN = SourcePlugin(config_model=AutoConfig, create=create)
