"""Run a topology with no broker, for tests and for trying things out.

::

    from lasp_streams.testing.runtime import local_runtime, faulty_network, assert_converged

    rt = local_runtime(build(), replicas=3, network=faulty_network(3, seed=1))
    await rt.update("rovio_ads", "admin", "add", ad)
    await rt.settle()                      # deliver everything, deterministically
    assert_converged(rt)                   # every replica holds the same states

The runtime is :class:`~lasp_streams.runtime.local.LocalRuntime`; the network is
:class:`~lasp_streams.runtime.network.SimulatedNetwork` (duplicates, reordering, delays, drops
resent as full state, partitions).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lasp_streams.dataflow.steps import Var
from lasp_streams.dataflow.topology import Topology
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import SimulatedNetwork, Transport

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "assert_converged",
    "faulty_network",
    "local_runtime",
    "networks",
    "settled",
]


def local_runtime(
    topology: Topology,
    *,
    replicas: int = 1,
    network: Transport | None = None,
    sink: int = 0,
) -> LocalRuntime:
    """A LocalRuntime for ``topology`` (fault-free network unless one is given)."""
    return LocalRuntime(topology, replicas=replicas, network=network, sink=sink)


def faulty_network(
    replicas: int,
    seed: int = 0,
    *,
    max_delay: int = 4,
    duplicate: float = 0.3,
    drop: float = 0.2,
    reorder: bool = True,
) -> SimulatedNetwork:
    """A simulated network that delays, reorders, duplicates and drops (drops are resent as
    full state), deterministic for ``seed``."""
    return SimulatedNetwork(
        replicas,
        seed=seed,
        max_delay=max_delay,
        reorder=reorder,
        duplicate=duplicate,
        drop=drop,
    )


def networks(replicas: int) -> SearchStrategy[SimulatedNetwork]:
    """Hypothesis: simulated networks for ``replicas`` replicas, from fault-free to faulty
    (the only helper here that needs Hypothesis)."""
    from hypothesis import strategies as st

    return st.builds(
        SimulatedNetwork,
        st.just(replicas),
        seed=st.integers(0, 2**16),
        max_delay=st.integers(0, 4),
        reorder=st.booleans(),
        duplicate=st.sampled_from([0.0, 0.3]),
        drop=st.sampled_from([0.0, 0.2]),
    )


def assert_converged(runtime: LocalRuntime, variables: Iterable[Var | str] | None = None) -> None:
    """Raise AssertionError naming the first variable and key whose state differs between
    replicas (every variable when ``variables`` is None)."""
    names = (
        list(runtime.topology.variables)
        if variables is None
        else [runtime.topology.var(v).id for v in variables]
    )
    for name in names:
        keys = {k for r in range(runtime.replicas) for k in runtime.keys(name, replica=r)}
        for key in keys:
            if not runtime.converged(name, key=key):
                values = [runtime.query(name, key=key, replica=r) for r in range(runtime.replicas)]
                raise AssertionError(
                    f"variable {name!r} key {key!r} differs between replicas: {values!r}"
                )


async def settled(runtime: LocalRuntime) -> LocalRuntime:
    """Deliver everything in flight, then check every variable converged; returns the runtime."""
    await runtime.settle()
    assert_converged(runtime)
    return runtime
