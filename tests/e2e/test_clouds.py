"""``--cloud`` on ``drainer fake-imds`` and ``drainer demo``: every cloud named, and
AWS's fake used where this drainer has it (it ships with the AWS source)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import httpx
from harness import DRAINER

from drainer.testing import free_port, wait_until

HAS_AWS = importlib.util.find_spec("drainer.testing.fake_aws") is not None


def drainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRAINER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_an_unknown_cloud_is_refused_naming_the_known_ones() -> None:
    for command in ("fake-imds", "demo"):
        done = drainer(command, "--cloud", "openstack", timeout=30)
        assert done.returncode == 2, done.stderr
        assert all(cloud in done.stderr for cloud in ("azure", "aws", "gcp")), done.stderr


def test_fake_imds_for_aws(tmp_path: Path) -> None:
    port = free_port()
    if not HAS_AWS:
        done = drainer("fake-imds", "--cloud", "aws", "--port", str(port), timeout=30)
        assert done.returncode == 1
        assert "no fake AWS metadata service" in done.stderr and "Traceback" not in done.stderr
        return
    log = (tmp_path / "fake.log").open("wb")
    proc = subprocess.Popen(
        [*DRAINER, "fake-imds", "--cloud", "aws", "--port", str(port), "--name", "vm-3"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        token = wait_until(
            lambda: (
                httpx.put(
                    f"{url}/latest/api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                ).text
            ),
            what="the fake answering",
            ignore=(httpx.HTTPError,),
        )
        reply = httpx.get(
            f"{url}/latest/meta-data/local-hostname", headers={"X-aws-ec2-metadata-token": token}
        )
        assert reply.text == "vm-3"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def test_the_demo_on_aws() -> None:
    done = drainer("demo", "--cloud", "aws", "--mock")
    if not HAS_AWS:
        assert done.returncode == 1 and "no fake AWS metadata service" in done.stderr
        return
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    steps = ["system-reboot", "draining:", "drained:", "recovering: rebooted", "in_service:"]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions), out
    assert "approved" not in out
