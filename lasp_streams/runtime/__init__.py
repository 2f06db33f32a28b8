"""Runtimes that execute a topology: :class:`~lasp_streams.runtime.local.LocalRuntime` (in
process, N replicas over a simulated network) and the Kafka runtime (``runtime.kafka``).

The seam between replicas is :class:`~lasp_streams.runtime.network.Transport`.
"""

from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import Delivery, NetworkStats, SimulatedNetwork, Transport

__all__ = ["Delivery", "LocalRuntime", "NetworkStats", "SimulatedNetwork", "Transport"]
