"""Waiting in tests for a condition that no event announces (a broker's state, another
process's output): poll it, bounded, and fail naming what never came; and awaiting something
that may hang, bounded, failing with where every task was stuck."""

from __future__ import annotations

import asyncio
import inspect
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


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


async def within(what: str, awaitable: Awaitable[T], timeout: float) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds. If it is not done by then, fail
    naming ``what`` and showing where every task of the loop was waiting at that moment (a
    hang inside a library is then found in the test's output, not guessed at later)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if task in done:
        return task.result()
    stacks = []
    for other in asyncio.all_tasks():
        out = io.StringIO()
        other.print_stack(limit=12, file=out)
        stacks.append(out.getvalue())
    task.cancel()
    await asyncio.wait([task], timeout=30)
    raise AssertionError(
        f"{what} did not finish within {timeout} s; the loop's tasks then:\n" + "\n".join(stacks)
    )
