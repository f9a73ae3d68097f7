"""``source.type: auto`` against each cloud's fake metadata service over real HTTP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from drainer.config import parse_config
from drainer.errors import ConfigError, SourceError
from drainer.model import Approve
from drainer.sources.auto import AutoConfig, choose, create, detect
from drainer.sources.azure import AzureSource
from drainer.sources.gcp import GcpSource
from drainer.testing import FakeAWS, FakeIMDS, free_port
from drainer.testing.fake_gcp import FakeGCP


@pytest.fixture
def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


@pytest.fixture
def gce() -> Iterator[FakeGCP]:
    with FakeGCP() as server:
        yield server


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS(rate_limit=None) as server:
        yield server


def test_google_cloud_is_found(
    gce: FakeGCP, imds: FakeIMDS, nowhere: str, caplog: pytest.LogCaptureFixture
) -> None:
    # every other service is there too, at the address of another cloud: only GCE's
    # identity answer counts
    config = AutoConfig(azure_endpoint=gce.url, aws_endpoint=imds.url, gcp_endpoint=gce.url)
    answers = detect(config)
    assert answers["gcp"] == "" and answers["azure"] and answers["aws"]
    with caplog.at_level(logging.INFO, logger="drainer"):
        source = create(config, threading.Event())
    try:
        assert isinstance(source, GcpSource)
        assert source.node_names() == {"web-1", "web-1.c.drainer-demo.internal"}
    finally:
        source.close()
    assert "this VM runs on Google Cloud" in caplog.text


def test_azure_is_found(imds: FakeIMDS, gce: FakeGCP, nowhere: str) -> None:
    config = AutoConfig(
        azure_endpoint=imds.url, aws_endpoint=nowhere, gcp_endpoint=imds.url, approve="sole"
    )
    source = create(config, threading.Event())
    try:
        assert isinstance(source, AzureSource)
        assert source.node_names() == {"web-1"}
    finally:
        source.close()


def test_the_common_keys_are_passed_on(gce: FakeGCP, nowhere: str) -> None:
    config = AutoConfig(
        azure_endpoint=nowhere, aws_endpoint=nowhere, gcp_endpoint=gce.url, gone_after=9
    )
    cloud, chosen = choose(config, detect(config))
    assert cloud == "gcp" and chosen.gone_after == 9 and chosen.approve is Approve.NEVER


def test_aws_is_found(nowhere: str) -> None:
    with FakeAWS() as aws:
        config = AutoConfig(azure_endpoint=aws.url, aws_endpoint=aws.url, gcp_endpoint=nowhere)
        answers = detect(config)
        assert answers["aws"] == "" and answers["azure"]
        source = create(config, threading.Event())
        source.close()


def test_none_answering_is_a_clear_error(imds: FakeIMDS, nowhere: str) -> None:
    config = AutoConfig(
        azure_endpoint=nowhere, aws_endpoint=imds.url, gcp_endpoint=imds.url, detect_timeout=0.5
    )
    with pytest.raises(SourceError, match="no cloud metadata service answered") as caught:
        create(config, threading.Event())
    message = str(caught.value)
    assert "Azure at" in message and "AWS at" in message and "Google Cloud at" in message
    assert "Set source.type" in message


def test_a_configuration_the_found_cloud_refuses(gce: FakeGCP, nowhere: str) -> None:
    config = AutoConfig(
        azure_endpoint=nowhere, aws_endpoint=nowhere, gcp_endpoint=gce.url, approve="sole"
    )
    with pytest.raises(ConfigError, match=r"found Google Cloud: source\.approve"):
        create(config, threading.Event())


def test_auto_in_a_configuration() -> None:
    base = {"health": {"tcp": {"port": 80}}, "load_balancers": [{"type": "mock"}]}
    config = parse_config({**base, "source": {"type": "auto", "detect_timeout": "300ms"}})
    assert isinstance(config.source, AutoConfig)
    assert config.source.approve is Approve.NEVER and config.source.detect_timeout == 0.3
    with pytest.raises(ConfigError, match=r"source\.gcp_endpoint"):
        parse_config({**base, "source": {"type": "auto", "gcp_endpoint": "nope"}})
