"""The public test helpers around the LocalRuntime."""

from __future__ import annotations

import pytest

from lasp_streams.dataflow import Topology
from lasp_streams.lattices.awset import AWSet
from lasp_streams.testing.runtime import (
    assert_converged,
    faulty_network,
    local_runtime,
    settled,
)


async def test_settled_checks_convergence() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    topo.map("m", s, lambda x: x + 1)
    rt = local_runtime(topo, replicas=3, network=faulty_network(3, seed=9))
    await rt.update(s, "a", "add_all", [1, 2])
    await rt.update(s, "b", "remove", 1, replica=1)
    with pytest.raises(AssertionError, match="variable 's' key None differs"):
        assert_converged(rt)
    await settled(rt)
    assert rt.query("m", replica=2) == rt.query("m")
    assert faulty_network(3, seed=9).stats.published == 0
