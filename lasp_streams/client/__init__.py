"""Edge clients: local replicas, a coalescing delta buffer, periodic flush, offline, resync.

- :class:`EdgeClient` — the client (:mod:`lasp_streams.client.edge`);
- :class:`ClientTransport` — what it needs from the network (:mod:`~.transport`), with
  :class:`LocalTransport` to a :class:`~lasp_streams.server.hub.LocalHub` over the
  LocalRuntime (:mod:`~.local`) and ``KafkaTransport`` over a topology's topics
  (:mod:`lasp_streams.client.kafka`, imported on its own so that local use does not load
  aiokafka);
- :func:`load_buffer` / :func:`save_buffer` — the persisted delta buffer (:mod:`~.store`).

The server's side (the hub, the checks of client deltas, the escrow) is
:mod:`lasp_streams.server`; this package imports nothing of it.

::

    hub = LocalHub(build(), watch=["ads_with_contracts"])
    client = EdgeClient("phone-1", hub.connect("phone-1"), hub.runtime.topology,
                        keys_of=lambda pairs: {ad.id for ad, _ in pairs})
    await client.sync()                 # full state first, then deltas
    client.view(client.showing[0])      # local and instant
    await client.sync()                 # one delta per ad that was viewed
"""

from lasp_streams.client.edge import UNLIMITED, Bounded, ClientStats, EdgeClient
from lasp_streams.client.local import LocalTransport
from lasp_streams.client.store import BufferFileError, load_buffer, save_buffer
from lasp_streams.client.transport import (
    ClientTransport,
    DeltaBatch,
    DeltasExpired,
    Offline,
    Position,
    Snapshot,
)
from lasp_streams.codec import ACTOR_HEADER

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
    "LocalTransport",
    "Offline",
    "Position",
    "Snapshot",
    "load_buffer",
    "save_buffer",
]
