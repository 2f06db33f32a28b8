"""Serve a worker's metrics registry over HTTP, for Prometheus to scrape.

::

    handle = serve_metrics(registry, 9400)     # http://127.0.0.1:9400/metrics
    ...
    handle.close()

The server is prometheus_client's own (``start_http_server``: a threaded WSGI server on a
daemon thread), so the exposition format, content negotiation (text or OpenMetrics) and gzip
are exactly what Prometheus expects. It binds 127.0.0.1 unless told otherwise: metrics name the
topology's variables and topics, which need not leave the machine. ``port=0`` lets the kernel
choose a free port; the handle reports the one bound.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsServer", "serve_metrics"]


@dataclass
class MetricsServer:
    """A running metrics endpoint: ``url`` is what a Prometheus scrape config targets."""

    host: str
    port: int
    _server: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def target(self) -> str:
        """``host:port``, as written in a Prometheus ``static_configs`` target list."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The full URL of the metrics page."""
        return f"http://{self.target}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()  # returns once serve_forever has left its loop
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` (any path answers) until closed.

    Raises ``OSError`` naming the address and the fix when the port cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port} is out of range; use 0..65535 (0: any free port)")
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        hint = (
            "another process listens there; choose another --metrics-port (or 0 for any free "
            f"port), or find it with `ss -ltnp 'sport = :{port}'`"
            if exc.errno == errno.EADDRINUSE
            else "check the host address and port"
        )
        raise OSError(
            exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}; {hint}"
        ) from exc
    bound_port: int = server.server_address[1]
    return MetricsServer(host, bound_port, server, thread)
