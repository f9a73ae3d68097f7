"""``drainer check``: the whole setup checked live, changing nothing anywhere.

The metadata service (this VM's names, the events document), every load balancer
(each adapter's own ``preflight``), the health check, the state directory and the boot
id: one ``Check`` each, a failure a ``Check`` with ``ok=False`` rather than an error, so
that one run shows every problem.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from drainer._files import make_private_dir
from drainer.adapters.base import Check, preflight
from drainer.config import Config
from drainer.engine import build_lbs, read_boot_id
from drainer.errors import ConfigError, SourceError
from drainer.health import check_health
from drainer.node import build_source

__all__ = ["check_setup"]


def check_setup(config: Config) -> list[Check]:
    """Every check ``drainer check`` prints; changes nothing anywhere."""
    source = build_source(config, threading.Event())
    checks: list[Check] = []
    try:
        names: frozenset[str] = frozenset()
        try:
            names = source.node_names()
        except SourceError as exc:
            checks.append(Check("metadata: this VM", False, str(exc)))
        else:
            wanted = config.node.name
            if wanted and wanted not in names:
                checks.append(
                    Check(
                        "metadata: this VM",
                        False,
                        f"the metadata service calls this VM {', '.join(sorted(names))}, not"
                        f" {wanted} (node.name): events for this VM would not be recognised",
                    )
                )
            else:
                checks.append(Check("metadata: this VM", True, ", ".join(sorted(names))))
        try:
            listing = source.events()
            if listing.partial:  # a path that keeps failing hides its notices for good
                why = "answered in part: some notices could not be read (see the log)"
                checks.append(Check("metadata: scheduled events", False, why))
            else:
                checks.append(Check("metadata: scheduled events", True, "readable"))
        except SourceError as exc:
            checks.append(Check("metadata: scheduled events", False, str(exc)))
        node = config.node.name or min(names, default="")
        if not node:
            checks.append(
                Check(
                    "load balancers",
                    False,
                    "not checked: this VM's name is unknown (set node.name)",
                )
            )
        else:
            lbs = build_lbs(config, node)
            try:
                for lb in lbs.values():
                    checks += preflight(lb)
            finally:
                for lb in lbs.values():
                    lb.close()
    finally:
        source.close()
    ok, detail = check_health(config.health)
    checks.append(Check("health check", ok, detail))
    checks.append(_check_state_dir(config.state_dir))
    try:
        checks.append(Check("boot id", True, read_boot_id(config.node.boot_id_path)))
    except ConfigError as exc:
        checks.append(Check("boot id", False, str(exc)))
    return checks


def _check_state_dir(state_dir: Path) -> Check:
    """The state directory takes a new file (as a save does: write, fsync, remove)."""
    probe = state_dir / f".check.{os.getpid()}.tmp"
    try:
        make_private_dir(state_dir)
        with open(probe, "w") as out:
            out.write("drainer check\n")
            out.flush()
            os.fsync(out.fileno())
        probe.unlink()
        free = os.statvfs(state_dir)
    except OSError as exc:
        probe.unlink(missing_ok=True)
        return Check("state directory", False, f"cannot write in {state_dir}: {exc.strerror}")
    mib = free.f_bavail * free.f_frsize / 2**20
    return Check("state directory", True, f"{state_dir} writable, {mib:.0f} MiB free")
