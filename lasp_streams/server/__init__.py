"""The trusted server side that is not an agent: what checks untrusted clients, and the hubs
and services clients reach.

- :class:`LocalHub` — the server side of local mode (:mod:`~.hub`), a LocalRuntime that plays
  Kafka's part for edge clients (:class:`~lasp_streams.client.local.LocalTransport`);
- :func:`client_delta_problem` / :func:`check_client_delta` / :func:`record_delta_problem` —
  the check that a client only writes its own entries (:mod:`~.validate`);
- :class:`RightsEscrow` — bounded-counter mode's server side (:mod:`~.escrow`);
- what a gateway checks in a device's flush (:mod:`~.devices`) and the device ledger's logic
  (:mod:`~.ledger`: any number of devices, one counter entry per ledger partition).

Modules: :mod:`.validate`, :mod:`.hub`, :mod:`.escrow`, :mod:`.escrow_kafka`, :mod:`.devices`,
:mod:`.ledger`.
"""

from lasp_streams.server.escrow import RightsEscrow
from lasp_streams.server.hub import HubValidator, LocalHub, Refusal
from lasp_streams.server.validate import (
    UntrustedDelta,
    check_client_delta,
    client_delta_problem,
    record_delta_problem,
)

__all__ = [
    "HubValidator",
    "LocalHub",
    "Refusal",
    "RightsEscrow",
    "UntrustedDelta",
    "check_client_delta",
    "client_delta_problem",
    "record_delta_problem",
]
