"""The budget's pure parts: how many of a pool may be out, and holders read liberally."""

from __future__ import annotations

import pytest

from drainer.budget import max_out
from drainer.budget.etcd import EtcdConfig, _holder, lease_id


@pytest.mark.parametrize(
    ("spec", "size", "count"),
    [(5, 100, 5), ("20%", 10, 2), ("20%", 4, 1), ("10%", 5, 1), ("50 %", 9, 4), ("3", 10, 3)],
)
def test_max_out_is_a_count_or_a_share_of_the_pool_never_zero(
    spec: int | str, size: int, count: int
) -> None:
    assert max_out(spec, size) == count


def test_a_holder_written_by_hand_still_holds_its_slot() -> None:
    odd = _holder("app", "vm1", "not json")
    assert (odd.node, odd.pool, odd.kind) == ("vm1", "app", "unknown")
    good = _holder("app", "vm2", '{"kind": "manual", "over_budget": true, "since": 5}')
    assert (good.kind, good.over_budget, good.since) == ("manual", True, 5.0)


def test_lease_ids_are_stable_positive_and_63_bits() -> None:
    first = lease_id("vm1", "e1")
    assert first == lease_id("vm1", "e1") != lease_id("vm2", "e1")
    assert 0 < int(first) < 2**63


def test_the_prefix_is_a_folder() -> None:
    assert EtcdConfig(endpoints=["http://127.0.0.1:2379"], prefix="/x").prefix == "/x/"
    with pytest.raises(ValueError, match="must start with /"):
        EtcdConfig(endpoints=["http://127.0.0.1:2379"], prefix="x/")
    with pytest.raises(ValueError):
        EtcdConfig(endpoints=[])
