"""The status page as an aiohttp application: mount it anywhere, or serve it from a thread.

Routes (relative to where it is mounted)::

    /              the page (HTML; its script and style are served from /static, nothing
                   from a CDN: the page works offline)
    /graph.svg     the topology drawn by Graphviz (see :mod:`.graph`)
    /api/status    the current snapshot as JSON (see :func:`.source.snapshot`)
    /events        the snapshot as Server-Sent Events, sent whenever it changes

``status_app(source)`` returns the application (a gateway adds it with
``app.add_subapp("/status/", status_app(source))``); :func:`serve_status` runs one with a
:class:`~.source.KafkaStatusSource` on a thread of its own, for a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from lasp_streams.dataflow.topology import Topology
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.web.graph import render_svg
from lasp_streams.web.source import KafkaStatusSource, StatusSource

__all__ = ["StatusServer", "serve_status", "serve_worker_status", "status_app"]

log = logging.getLogger(__name__)

_STATIC = {
    "status.js": "text/javascript",
    "status.css": "text/css",
}
#: A comment line every this many seconds keeps idle proxies from closing the stream.
_HEARTBEAT_S = 15.0


def _asset(name: str) -> str:
    return files("lasp_streams.web").joinpath("static", name).read_text(encoding="utf-8")


def status_app(source: StatusSource, *, interval: float = 0.5) -> web.Application:
    """The status page of ``source``'s topology; snapshots are checked every ``interval`` s."""
    app = web.Application()
    svg: list[str] = []
    svg_lock = asyncio.Lock()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=_asset("index.html"), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(text=_asset(name), content_type=_STATIC[name])

    async def graph(request: web.Request) -> web.Response:
        async with svg_lock:
            if not svg:
                svg.append(await render_svg(source.topology))
        return web.Response(text=svg[0], content_type="image/svg+xml")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(source.snapshot(), dumps=_dumps)

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        last = ""
        quiet = 0.0
        try:
            while True:
                data = source.snapshot()
                data.pop("updated", None)
                body = _dumps(data)
                if body != last:
                    await response.write(f"data: {body}\n\n".encode())
                    last, quiet = body, 0.0
                elif quiet >= _HEARTBEAT_S:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                await asyncio.sleep(interval)
                quiet += interval
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away, or the server is stopping
        return response

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/graph.svg", graph)
    app.router.add_get("/api/status", status)
    app.router.add_get("/events", events)
    return app


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, sort_keys=True)


@dataclass
class StatusServer:
    """A status page served from its own thread and event loop; ``url`` is its address."""

    host: str
    port: int
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _stop: asyncio.Event = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def close(self) -> None:
        """Stop serving and reading; safe to call more than once."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)


def serve_status(
    topology: Topology,
    settings: KafkaSettings,
    *,
    port: int,
    host: str = "127.0.0.1",
    name: str | None = None,
    registry: CollectorRegistry | None = None,
    timeout: float = 60.0,
) -> StatusServer:
    """Serve ``topology``'s status page on ``http://host:port/`` from a daemon thread with its
    own event loop (so it runs beside any host, a faust worker included) until closed.
    Returns once the page answers; raises what went wrong otherwise (a taken port, say)."""
    loop = asyncio.new_event_loop()
    ready: list[Any] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        source = KafkaStatusSource(topology, settings, name=name, registry=registry)
        runner = web.AppRunner(status_app(source), shutdown_timeout=2.0)
        try:
            await source.start(timeout)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1] if runner.addresses else port
            ready.append(bound)
            started.set()
            await stop.wait()
        except BaseException as exc:
            ready.append(exc)
            started.set()
            if not isinstance(exc, Exception):
                raise
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()
            with contextlib.suppress(Exception):
                await source.stop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="lasp-status-page", daemon=True)
    thread.start()
    if not started.wait(timeout + 10):
        raise TimeoutError(f"the status page did not start within {timeout + 10:.0f} s")
    outcome = ready[0]
    if isinstance(outcome, BaseException):
        thread.join(timeout=10)
        if isinstance(outcome, OSError):
            raise OSError(
                outcome.errno,
                f"cannot serve the status page on {host}:{port}: {outcome.strerror}; choose "
                "another --status-port (0: any free port)",
            ) from outcome
        raise outcome
    return StatusServer(host, int(outcome), loop, thread, stop)


def serve_worker_status(
    topology: Topology,
    settings: KafkaSettings,
    *,
    port: int,
    host: str = "127.0.0.1",
    name: str | None = None,
    registry: CollectorRegistry | None = None,
) -> StatusServer:
    """What ``lasp-streams worker --status-port`` runs: deploy the topology's topics first (the
    page reads them; an incompatible topic is refused with its fix, as by ``deploy``), then
    :func:`serve_status`."""
    from lasp_streams.deploy import apply_plan, plan_deploy
    from lasp_streams.errors import KafkaSetupError

    plan = plan_deploy(topology, settings, name=name)
    report = asyncio.run(apply_plan(plan, settings))
    if report.mismatches:
        raise KafkaSetupError("; ".join(f"{s.problem} Fix: {s.fix}" for s in report.mismatches))
    return serve_status(topology, settings, port=port, host=host, name=name, registry=registry)
