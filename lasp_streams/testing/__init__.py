"""Public test helpers for lasp_streams: lattice law checkers (:mod:`.laws`), Hypothesis
strategies (:mod:`.strategies`, :mod:`.strategies_causal` for the dot-based types) and a
replica convergence simulator (:mod:`.replicas`).

Modules: :mod:`.laws`, :mod:`.strategies`, :mod:`.strategies_causal`, :mod:`.replicas`,
:mod:`.runtime`.

Import the Hypothesis-based submodules directly (``from lasp_streams.testing.laws import
check_lattice_laws``): this package itself imports only what runs without Hypothesis — the
LocalRuntime helpers below (:mod:`.runtime`) for running a topology with no broker.
"""

from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import SimulatedNetwork
from lasp_streams.testing.runtime import (
    assert_converged,
    faulty_network,
    local_runtime,
    settled,
)

__all__ = [
    "LocalRuntime",
    "SimulatedNetwork",
    "assert_converged",
    "faulty_network",
    "local_runtime",
    "settled",
]
