"""Waiting in tests for a condition that no event announces (a broker's state, another
process's output): poll it, bounded, and fail naming what never came."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    what: str, check: Callable[[], bool | Awaitable[bool]], timeout: float, *, every: float = 0.1
) -> None:
    """Call ``check`` (plain or async) every ``every`` seconds until it returns true; fail
    after ``timeout`` seconds, naming ``what`` was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(every)
