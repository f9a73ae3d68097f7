"""Fail-safe events: ``drainer run`` against the fake metadata service's quirks, over HTTP.

What Microsoft's own mock server and a re-enabled metadata service send beyond the
documentation: ISO 8601 ``NotBefore``, a broken event of a neighbour, statuses and types
nobody documented, an empty answer with ``DocumentIncarnation`` reset after an outage,
a new ``EventId`` on every change of status. Each test proves from the mock load
balancer's calls, the fake's approvals and the record on disk that the node is taken
out in time and never put back while its maintenance may still be on.
"""

from __future__ import annotations

from harness import NODE, World


def log(world: World) -> str:
    return world.log_path.read_text() if world.log_path.exists() else ""


def test_iso_not_before_reboot_is_drained_and_approved_before_it_starts(world: World) -> None:
    world.fake.set_quirks(iso_not_before=True)
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=120)
    world.start()
    world.wait(lambda: world.approvals() == [eid], "the approval of the Reboot")
    assert world.calls() == ["drain", "take_out"]  # out of the pool before the approval
    world.wait_phase("in_maintenance")
    world.fake.end_event(eid)
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]


def test_a_malformed_neighbour_event_does_not_hide_this_vms_reboot(world: World) -> None:
    world.fake.set_quirks(malformed_neighbour=True)
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=600)
    world.start()
    world.wait(lambda: world.approvals() == [eid], "the approval of this VM's Reboot")
    assert world.calls() == ["drain", "take_out"]
    world.wait_phase("in_maintenance")
    assert "skipped unless it names this VM" in log(world)  # the neighbour's is said, once
    assert log(world).count("skipped unless it names this VM") == 1


def test_an_unknown_status_drains_at_once_and_is_never_approved(world: World) -> None:
    world.fake.set_quirks(unknown_values=True)
    eid = world.fake.schedule("Reboot", [NODE], status="InProgress", not_before_in=600)
    world.start()
    world.wait_phase("drained")
    world.wait_call("take_out")
    assert world.calls() == ["drain", "take_out"] and world.lb_status() == "out"
    world.wait_polls(5)
    assert world.approvals() == []  # nobody knows what InProgress allows
    assert world.record()["event"]["raw_status"] == "InProgress"
    assert "InProgress" in log(world)
    listed = world.cli("events")
    assert listed.returncode == 0, listed.stderr
    assert "InProgress" in listed.stdout and eid in listed.stdout and "-> drain" in listed.stdout
    world.fake.end_event(eid)
    world.wait_phase("in_service")


def test_an_unknown_event_type_drains_by_default(world: World) -> None:
    world.fake.set_quirks(unknown_values=True)
    world.fake.schedule("HotPatch", [NODE], not_before_in=600)
    world.start()
    world.wait(lambda: len(world.approvals()) == 1, "the approval of the HotPatch")
    assert world.calls() == ["drain", "take_out"]
    assert world.record()["event"]["raw_type"] == "HotPatch"


def test_an_empty_answer_after_an_outage_does_not_put_the_node_back(world: World) -> None:
    world.configure(source={"gone_after": "1s", "gone_after_doubt": "30s"})
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=600)
    world.start()
    world.wait_phase("in_maintenance")
    listed = world.fake.snapshot()["DocumentIncarnation"]
    assert listed > 1  # so that 1 is a step back
    # an outage, then the re-enabled service lists nothing, incarnation 1, for ~3 s:
    # longer than gone_after, shorter than gone_after_doubt
    world.fake.inject("500", count=6)
    world.fake.inject("reenabled", count=15)
    world.wait_polls(6 + 15 + 5)  # every fault served, then the event listed again
    world.wait_record(lambda r: r.get("missing_since") is None, "the event followed again")
    assert world.phase() == "in_maintenance"
    assert world.calls() == ["drain", "take_out"] and world.lb_status() == "out"
    assert f"{listed} -> 1" in log(world) and "listed again" in log(world)
    # a real end is still believed, after gone_after
    world.fake.end_event(eid)
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]


def test_a_reissued_started_id_is_the_same_maintenance(world: World) -> None:
    world.fake.set_quirks(reissue_ids=True)
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=600)
    world.start()
    world.wait(lambda: world.approvals() == [eid], "the approval")
    started = world.fake.snapshot()["Events"][0]
    assert started["EventStatus"] == "Started" and started["EventId"] != eid
    world.wait_record(
        lambda r: (r.get("event") or {}).get("event_id") == started["EventId"],
        "the Started id followed",
    )
    world.wait_polls(5)
    assert world.phase() == "in_maintenance"
    assert world.calls() == ["drain", "take_out"]  # no recovery, no second drain
    assert "recovering" not in log(world)
    world.fake.end_event(eid)
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]
    assert world.approvals() == [eid]
