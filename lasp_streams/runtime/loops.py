"""The event loop a long-running process runs on: uvloop when it is installed, else asyncio's.

The gateway, the device ledger and the load generator spend their time in sockets: the same
code on uvloop acknowledged 1.10x the flushes and 1.12x the signed pings per second of
asyncio's loop in one gateway process (tests/benchmarks/reports/gateway_loop.md, ``bench_gateway
--compare-loop``, medians of 3 alternating runs).
``--loop asyncio`` (or ``LASP_STREAMS_LOOP=asyncio``) keeps the standard loop, e.g. to
compare, or where uvloop is not available (it is not on Windows).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LOOPS", "loop_factory", "run"]

T = TypeVar("T")

LOOPS = ("auto", "uvloop", "asyncio")
"""``auto``: uvloop when installed, else asyncio."""


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the named loop (None: asyncio's default). ValueError for an unknown
    name, or for ``uvloop`` when it is not installed."""
    if loop not in LOOPS:
        raise ValueError(f"event loop {loop!r}: choose one of {', '.join(LOOPS)}")
    if loop == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if loop == "uvloop":
            raise ValueError("event loop 'uvloop' is not installed: pip install uvloop")
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """``asyncio.run(main)`` on the named loop (:func:`loop_factory`)."""
    try:
        factory = loop_factory(loop)
    except ValueError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
