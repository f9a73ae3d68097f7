"""deploy/cloud-init/user-data.yaml: valid for Debian's ``cloud-init schema``, and its
config step for real: drainer-render-config, taken out of the user data, asks the fake
metadata service (over HTTP) for the VM's names, as a standalone VM and as a scale-set
instance, and writes a configuration that ``drainer config check`` accepts."""

from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drainer.testing import FakeIMDS

ROOT = Path(__file__).parents[2]
USER_DATA = ROOT / "deploy" / "cloud-init" / "user-data.yaml"
CLOUD_INIT = shutil.which("cloud-init")
needs_cloud_init = pytest.mark.skipif(CLOUD_INIT is None, reason="cloud-init not installed")


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLOUD_INIT), "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_cloud_init
def test_cloud_init_schema_accepts_the_user_data() -> None:
    checked = schema(USER_DATA)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid cloud-config" in checked.stdout


@needs_cloud_init
def test_cloud_init_schema_rejects_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: the same file with a file to write that has no path."""
    data = yaml.safe_load(USER_DATA.read_text())
    del data["write_files"][0]["path"]
    broken = tmp_path / "user-data.yaml"
    broken.write_text("#cloud-config\n" + yaml.safe_dump(data))
    checked = schema(broken)
    assert checked.returncode != 0
    assert "'path' is a required property" in checked.stdout + checked.stderr


def written(path: str) -> dict[str, Any]:
    data = yaml.safe_load(USER_DATA.read_text())
    (entry,) = [f for f in data["write_files"] if f["path"] == path]
    return dict(entry)


@pytest.fixture
def render(tmp_path: Path) -> Path:
    script = tmp_path / "drainer-render-config"
    script.write_text(written("/usr/local/sbin/drainer-render-config")["content"])
    (tmp_path / "drainer.yaml.in").write_text(written("/etc/drainer/drainer.yaml.in")["content"])
    return script


def run_render(
    script: Path, imds: str, template: Path, output: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), str(template), str(output)],
        env={**os.environ, "DRAINER_IMDS": imds},
        capture_output=True,
        text=True,
        timeout=60,
    )


SCALE_SET_INSTANCE = {
    "name": "web_3",
    "vmScaleSetName": "web",
    "osProfile.computerName": "web000003",
    "resourceId": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/"
    "virtualMachineScaleSets/web/virtualMachines/3",
}


@pytest.mark.parametrize(
    ("compute", "server"),
    [({}, "web-1"), (SCALE_SET_INSTANCE, "web000003")],
    ids=["vm", "scale-set-instance"],
)
def test_the_configuration_is_written_with_this_vms_names(
    render: Path, tmp_path: Path, compute: dict[str, str], server: str
) -> None:
    fake = FakeIMDS(rate_limit=None).start()
    try:
        fake.set_compute(**compute)
        output = tmp_path / "drainer.yaml"
        done = run_render(render, fake.url, tmp_path / "drainer.yaml.in", output)
    finally:
        fake.stop()
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o640
    config = yaml.safe_load(output.read_text())
    assert config["load_balancers"][0]["server"] == server
    assert "node" not in config  # drainer asks IMDS itself for the names events use
    checked = subprocess.run(
        [sys.executable, "-m", "drainer", "config", "check", "-c", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


def test_a_placeholder_the_script_does_not_know_is_named(render: Path, tmp_path: Path) -> None:
    template = tmp_path / "bad.yaml.in"
    template.write_text("server: ${hostname}\n")
    fake = FakeIMDS(rate_limit=None).start()
    try:
        done = run_render(render, fake.url, template, tmp_path / "out.yaml")
    finally:
        fake.stop()
    assert done.returncode == 1
    assert "hostname" in done.stderr
    assert "${computer_name}" in done.stderr
    assert not (tmp_path / "out.yaml").exists()


def test_the_render_script_is_python_310() -> None:
    """It runs with the VM's own python3: Ubuntu 22.04's is 3.10."""
    script = written("/usr/local/sbin/drainer-render-config")["content"]
    ast.parse(script, feature_version=(3, 10))
