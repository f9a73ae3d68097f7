"""``drainer demo``: a whole maintenance on a simulated VM, in well under a minute.

Everything runs on loopback in a temporary directory: the fake metadata service, a
small web server playing the VM's application, a load balancer (a real HAProxy with
clients sending requests through it when ``haproxy`` is installed, otherwise the mock),
and the sidecar itself. The "reboot" stops the sidecar and the web server, changes the
boot id and starts them again, so the sidecar resumes from its state file as it would
on a real VM.

``--cloud`` picks whose maintenance: Azure (a Reboot, approved once drained), Google
Cloud (``TERMINATE_ON_HOST_MAINTENANCE``, 60 s of notice seen through the hanging GET,
no approval) or AWS (a scheduled system-reboot 45 s ahead, drained in time for it, no
approval); each cloud's fake metadata service plays it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from drainer.adapters.haproxy.client import HAProxyClient
from drainer.config import adapter_plugins, parse_config
from drainer.core import Phase
from drainer.daemon import assemble, loop
from drainer.errors import AdapterError
from drainer.store import Store
from drainer.testing.fake_aws import FakeAWS
from drainer.testing.fake_gcp import FakeGCP
from drainer.testing.fake_imds import FakeIMDS
from drainer.testing.haproxy import haproxy_available, start_haproxy_in_front
from drainer.testing.lab import LoadClient, WebServer
from drainer.testing.ports import free_port

VM = "demo-web-1"


class Timeline(logging.Handler):
    """Prints drainer's own log lines and the demo's narration with elapsed seconds."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.start = time.monotonic()

    def say(self, who: str, text: str) -> None:
        print(f"{time.monotonic() - self.start:6.1f}s  {who:<8} {text}", flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        self.say("drainer", record.getMessage())


class Sidecar:
    """``drainer run`` in a thread, so the demo can stop it for the reboot."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.config = parse_config(raw, origin="demo")
        self.stopping = threading.Event()
        self.node = assemble(self.config, self.stopping)
        for lb in self.node.lbs.values():
            lb.serve()
        self.thread = threading.Thread(
            target=loop, args=(self.node, self.stopping), name="drainer-loop", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.node.close()


def _watch_haproxy(admin: str, say: Timeline, stopping: threading.Event) -> None:
    """Say how HAProxy itself sees the node, each time that changes."""
    client = HAProxyClient(admin, timeout=1.0)
    last = ""
    while not stopping.wait(0.05):
        try:
            rows = [r for r in client.stat("app") if r.server == VM]
        except AdapterError:
            continue
        now = f"{rows[0].status}, {rows[0].scur} sessions" if rows else "?"
        if now.split(",")[0] != last.split(",")[0]:
            say.say("haproxy", f"{VM} is {now}")
            last = now


def _wait(store: Store, *phases: Phase, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while store.load().phase not in phases:
        if time.monotonic() > deadline:
            names = " or ".join(p.value for p in phases)
            raise TimeoutError(f"demo: the node did not reach {names} in {timeout:.0f}s")
        time.sleep(0.1)


class _Azure:
    """Azure's part: a Reboot scheduled 15 minutes ahead, started early by the approval."""

    def __init__(self, stack: ExitStack, say: Timeline) -> None:
        self.fake = stack.enter_context(FakeIMDS(rate_limit=None))
        self.fake.set_compute(name=VM)
        self.say = say
        self.event_id = ""

    def source(self) -> dict[str, Any]:
        return {"endpoint": self.fake.url, "poll_interval": "0.5s", "approve": "sole"}

    def notice(self, store: Store) -> None:
        self.event_id = self.fake.schedule("Reboot", [VM], not_before_in=900, end_after=None)
        self.say.say("azure", f"Reboot {self.event_id} scheduled for {VM}, not before 15 minutes")
        _wait(store, Phase.IN_MAINTENANCE)
        self.say.say("azure", "the event started early, because drainer approved it once drained")

    def rebooting(self) -> None:
        pass

    def over(self) -> None:
        self.fake.end_event(self.event_id)
        self.say.say("azure", "the maintenance is over: the event is gone from Scheduled Events")


class _Gcp:
    """Google Cloud's part: a terminate-and-restart 60 s ahead; nothing to approve."""

    def __init__(self, stack: ExitStack, say: Timeline) -> None:
        instance = {"instance/name": VM, "instance/hostname": f"{VM}.c.drainer-demo.internal"}
        self.fake = stack.enter_context(FakeGCP(instance=instance))
        self.say = say

    def source(self) -> dict[str, Any]:
        return {
            "type": "gcp",
            "endpoint": self.fake.url,
            "poll_interval": "0.5s",
            "gone_after": "2s",
        }

    def notice(self, store: Store) -> None:
        self.fake.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
        self.say.say("gcp", "maintenance-event: TERMINATE_ON_HOST_MAINTENANCE, 60 s ahead")
        _wait(store, Phase.DRAINED, Phase.IN_MAINTENANCE)
        self.say.say("gcp", "drained within the notice; Compute Engine stops the VM")

    def rebooting(self) -> None:
        self.fake.set_maintenance("NONE")  # the VM restarts on another host, the key reset

    def over(self) -> None:
        self.say.say("gcp", "the maintenance is over: maintenance-event reads NONE")


class _Aws:
    """AWS's part: a system-reboot 45 s ahead; nothing to approve, so drained in time."""

    def __init__(self, stack: ExitStack, say: Timeline) -> None:
        self.fake = stack.enter_context(FakeAWS(local_hostname=VM))
        self.say = say
        self.event_id = ""

    def source(self) -> dict[str, Any]:
        return {"type": "aws", "endpoint": self.fake.url, "poll_interval": "0.5s"}

    def notice(self, store: Store) -> None:
        self.event_id = self.fake.schedule("system-reboot", not_before_in=45)
        self.say.say("aws", f"system-reboot {self.event_id} scheduled, NotBefore in 45 s")
        _wait(store, Phase.DRAINED, Phase.IN_MAINTENANCE)
        self.say.say("aws", "drained in time for NotBefore (AWS cannot approve from the VM)")

    def rebooting(self) -> None:
        self.fake.complete(self.event_id)  # listed as completed once the reboot is done

    def over(self) -> None:
        self.say.say("aws", "the maintenance is over: the event is completed")


def _cloud(name: str, stack: ExitStack, say: Timeline) -> _Azure | _Aws | _Gcp:
    if name == "gcp":
        return _Gcp(stack, say)
    if name == "aws":
        return _Aws(stack, say)
    return _Azure(stack, say)


@contextmanager
def _quiet_then_timeline() -> Iterator[Timeline]:
    timeline = Timeline()
    logger = logging.getLogger("drainer")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [timeline]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield timeline
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def run_demo(*, use_haproxy: bool = True, cloud: str = "azure") -> int:
    with ExitStack() as stack, _quiet_then_timeline() as say:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="drainer-demo-")))
        boot = tmp / "boot_id"
        boot.write_text("boot-1\n")
        maintenance = _cloud(cloud, stack, say)
        web = WebServer(free_port(), name=VM)
        web.start()
        stack.callback(web.stop)
        say.say("demo", f"web server for {VM} on 127.0.0.1:{web.port}")

        stopping = threading.Event()
        lb: dict[str, Any] = {"type": "mock", "sessions": 4, "drain_seconds": 3}
        client: LoadClient | None = None
        if use_haproxy and haproxy_available() and "haproxy" in adapter_plugins():
            peer = WebServer(free_port(), name="demo-web-2").start()
            stack.callback(peer.stop)
            proxy = start_haproxy_in_front(
                tmp, backends={VM: web.port, "demo-web-2": peer.port}, redispatch=True
            )
            stack.callback(proxy.stop)
            lb = {"type": "haproxy", "instances": [proxy.admin], "backend": "app", "server": VM}
            client = LoadClient(f"http://127.0.0.1:{proxy.port}/", workers=4)
            client.start()
            stack.callback(client.stop)
            say.say("demo", f"HAProxy on 127.0.0.1:{proxy.port}, 4 clients sending requests")
            watcher = threading.Thread(
                target=_watch_haproxy,
                args=(proxy.admin, say, stopping),
                name="demo-watch",
                daemon=True,
            )
            watcher.start()
            stack.callback(watcher.join, 2)
            stack.callback(stopping.set)
        else:
            say.say("demo", "load balancer: the mock (install haproxy to see a real one)")

        raw = {
            "node": {"boot_id_path": str(boot)},
            "state_dir": str(tmp / "state"),
            "source": maintenance.source(),
            "drain": {"timeout": "20s"},
            "health": {
                "http": {"url": f"http://127.0.0.1:{web.port}/healthz"},
                "interval": "0.5s",
                "successes": 3,
            },
            "load_balancers": [lb],
            "metrics": {"listen": None},
        }
        store = Store(tmp / "state")
        sidecar = Sidecar(raw)
        time.sleep(1.5)

        maintenance.notice(store)

        say.say("demo", "the VM reboots: sidecar and web server stop, a new boot id")
        sidecar.stop()
        web.stop()
        maintenance.rebooting()
        time.sleep(2.0)
        boot.write_text("boot-2\n")
        web = WebServer(web.port, name=VM)
        web.start()
        stack.callback(web.stop)
        say.say("demo", "the VM is up again; the sidecar starts and reads its state from disk")
        sidecar = Sidecar(raw)
        stack.callback(sidecar.stop)
        time.sleep(2.0)
        maintenance.over()
        _wait(store, Phase.IN_SERVICE)
        time.sleep(1.0)
        if client is not None:
            client.stop()
            ok, failed = client.counts()
            say.say("demo", f"clients: {ok} requests served, {failed} failed")
        say.say("demo", f"done: {VM} was drained, rebooted, health-checked and put back")
        return 0 if client is None or client.counts()[1] == 0 else 1
