"""``--cloud`` on ``drainer fake-imds`` and ``drainer demo``: every cloud named, and
AWS's fake used where this drainer has it (it ships with the AWS source)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from harness import DRAINER

from drainer.testing import free_port, wait_until


def drainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRAINER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_an_unknown_cloud_is_refused_naming_the_known_ones() -> None:
    for command in ("fake-imds", "demo"):
        done = drainer(command, "--cloud", "openstack", timeout=30)
        assert done.returncode == 2, done.stderr
        assert all(cloud in done.stderr for cloud in ("azure", "aws", "gcp")), done.stderr


@contextmanager
def fake_imds(cloud: str, tmp_path: Path) -> Iterator[str]:
    """``drainer fake-imds --cloud CLOUD --name vm-3`` as a process; yields its URL."""
    port = free_port()
    with (tmp_path / "fake.log").open("wb") as log:
        proc = subprocess.Popen(
            [*DRAINER, "fake-imds", "--cloud", cloud, "--port", str(port), "--name", "vm-3"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.kill()
            proc.wait(timeout=10)


def answered(request: Callable[[], httpx.Response]) -> httpx.Response:
    return wait_until(request, what="the fake answering", ignore=(httpx.HTTPError,))


def test_fake_imds_for_google_cloud(tmp_path: Path) -> None:
    google = {"Metadata-Flavor": "Google"}
    with fake_imds("gcp", tmp_path) as url:
        name = answered(
            lambda: httpx.get(f"{url}/computeMetadata/v1/instance/name", headers=google)
        )
        assert name.text == "vm-3" and name.headers["Metadata-Flavor"] == "Google"
        body = {"value": "MIGRATE_ON_HOST_MAINTENANCE"}
        assert httpx.post(f"{url}/fake/maintenance", json=body).status_code == 200
        reply = httpx.get(f"{url}/computeMetadata/v1/instance/maintenance-event", headers=google)
        assert reply.text == "MIGRATE_ON_HOST_MAINTENANCE"


def test_fake_imds_for_aws(tmp_path: Path) -> None:
    with fake_imds("aws", tmp_path) as url:
        ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        token = answered(lambda: httpx.put(f"{url}/latest/api/token", headers=ttl)).text
        reply = httpx.get(
            f"{url}/latest/meta-data/local-hostname", headers={"X-aws-ec2-metadata-token": token}
        )
        assert reply.text == "vm-3"


def test_the_demo_on_aws() -> None:
    done = drainer("demo", "--cloud", "aws", "--mock")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    steps = ["system-reboot", "draining:", "drained:", "recovering: rebooted", "in_service:"]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions), out
    assert "approved" not in out
