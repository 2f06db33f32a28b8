"""Edge clients: local replicas, a coalescing delta buffer, periodic flush, offline, resync.

- :class:`EdgeClient` — the client (:mod:`lasp_streams.client.edge`);
- :class:`ClientTransport` — what it needs from the network (:mod:`~.transport`), with
  :class:`LocalHub`/:class:`LocalTransport` over the LocalRuntime (:mod:`~.local`) and
  ``KafkaTransport`` over a topology's topics (:mod:`lasp_streams.client.kafka`, imported on
  its own so that local use does not load aiokafka);
- :func:`client_delta_problem` / :func:`check_client_delta` — the server's check that a client
  only writes its own entries (:mod:`~.validate`);
- :class:`RightsEscrow` — bounded-counter mode's server side (:mod:`~.escrow`).

::

    hub = LocalHub(build(), watch=["ads_with_contracts"])
    client = EdgeClient("phone-1", hub.connect("phone-1"), hub.runtime.topology,
                        keys_of=lambda pairs: {ad.id for ad, _ in pairs})
    await client.sync()                 # full state first, then deltas
    client.view(client.showing[0])      # local and instant
    await client.sync()                 # one delta per ad that was viewed
"""

from lasp_streams.client.edge import UNLIMITED, Bounded, ClientStats, EdgeClient
from lasp_streams.client.escrow import RightsEscrow
from lasp_streams.client.local import HubValidator, LocalHub, LocalTransport, Refusal
from lasp_streams.client.store import BufferFileError, load_buffer, save_buffer
from lasp_streams.client.transport import (
    ClientTransport,
    DeltaBatch,
    DeltasExpired,
    Offline,
    Position,
    Snapshot,
)
from lasp_streams.client.validate import (
    ACTOR_HEADER,
    UntrustedDelta,
    check_client_delta,
    client_delta_problem,
    record_delta_problem,
)

__all__ = [
    "ACTOR_HEADER",
    "UNLIMITED",
    "Bounded",
    "BufferFileError",
    "ClientStats",
    "ClientTransport",
    "DeltaBatch",
    "DeltasExpired",
    "EdgeClient",
    "HubValidator",
    "LocalHub",
    "LocalTransport",
    "Offline",
    "Position",
    "Refusal",
    "RightsEscrow",
    "Snapshot",
    "UntrustedDelta",
    "check_client_delta",
    "client_delta_problem",
    "load_buffer",
    "record_delta_problem",
    "save_buffer",
]
