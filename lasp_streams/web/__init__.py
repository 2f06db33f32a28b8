"""The live status page: the topology's graph, values, thresholds, billing, lag, dead letters.

``status_app(source)`` is an aiohttp application to mount (a gateway does); ``serve_status``
serves one from a thread (``lasp-streams worker --status-port``). See :mod:`.app`.
"""

from lasp_streams.web.app import StatusServer, serve_status, serve_worker_status, status_app
from lasp_streams.web.source import KafkaStatusSource, StatusSource, snapshot

__all__ = [
    "KafkaStatusSource",
    "StatusServer",
    "StatusSource",
    "serve_status",
    "serve_worker_status",
    "snapshot",
    "status_app",
]
