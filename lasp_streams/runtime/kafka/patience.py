"""Waiting out a Kafka outage instead of dying, and a hard deadline on shutdown.

A worker, an agent process or the sink started (or restarted) while the cluster cannot be
reached used to exit with status 1, so only an outside supervisor brought it back. Here:

- :func:`unreachable` says whether an error means "Kafka cannot be reached now" (an aiokafka
  error, a socket error or a timeout, raised directly or as the cause of a
  :class:`~lasp_streams.errors.KafkaSetupError`) as opposed to a configuration error (a topic of
  the wrong shape, a bad topology), which still ends the process at once.
- :func:`keep_trying` runs a start-and-run coroutine again after each such failure, with
  exponential backoff (:class:`Backoff`), until it returns or ``stop`` is set. It logs the outage
  once, then a bounded reminder (at most one line a minute), and once more when Kafka is back.
- :class:`ShutdownDeadline`: after a stop signal the graceful stop gets ``timeout`` seconds;
  then the process exits anyway (a thread timer, so a stuck event loop or an aiokafka thread
  waiting on a dead broker cannot hold it). Exiting there is safe by the same argument as a
  SIGKILL: agents commit offsets only after their writes, and joins are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from aiokafka.errors import KafkaError

from lasp_streams.errors import KafkaSetupError, LaspError
from lasp_streams.runtime.kafka.topics import TopicMismatch

__all__ = ["Backoff", "ShutdownDeadline", "keep_trying", "unreachable"]

log = logging.getLogger(__name__)

T = TypeVar("T")

REMIND_EVERY_S: Final = 60.0
"""Seconds between two reminders that Kafka is still unreachable."""


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means Kafka cannot be reached now, so trying again later (with new
    clients) can succeed: an aiokafka error, a socket error or a timeout, raised directly or as
    the cause of a
    :class:`~lasp_streams.errors.KafkaSetupError`. Our own typed errors decide for themselves
    (a :class:`~.topics.TopicMismatch` or a fenced sink is final, whatever caused it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TopicMismatch):
            return False
        if isinstance(current, LaspError) and not isinstance(current, KafkaSetupError):
            return isinstance(current, TimeoutError)
        if isinstance(current, KafkaError | OSError | TimeoutError):
            return True
        if type(current).__module__ == "aiokafka.errors":
            # aiokafka's client-state errors that are not KafkaErrors (IllegalOperation: a
            # send on a producer whose transaction a fencing aborted): new clients fix them.
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass
class Backoff:
    """Exponential backoff: ``first`` seconds, doubled after each failure up to ``cap``."""

    first: float = 0.5
    cap: float = 10.0
    failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        self.failures += 1
        return float(min(self.cap, self.first * 2 ** min(self.failures - 1, 30)))

    def reset(self) -> None:
        self.failures = 0


async def keep_trying(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    stop: asyncio.Event,
    cleanup: Callable[[], Awaitable[None]] | None = None,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T | None:
    """``await attempt()``; while it fails because Kafka is unreachable, run ``cleanup``,
    wait (backoff, cut short by ``stop``) and try again. Returns its result, or None when
    ``stop`` was set first. Any other error propagates at once."""
    backoff = backoff or Backoff()
    down_since: float | None = None
    reminded = 0.0
    while not stop.is_set():
        try:
            result = await attempt()
        except Exception as exc:
            if not unreachable(exc):
                raise
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    await cleanup()
            now = clock()
            reason = _short(exc)
            if down_since is None:
                down_since = reminded = now
                log.warning("%s: Kafka unreachable (%s); waiting for it", what, reason)
            elif now - reminded >= REMIND_EVERY_S:
                reminded = now
                log.warning(
                    "%s: Kafka still unreachable after %.0f s (%s)", what, now - down_since, reason
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_delay())
            continue
        if down_since is not None:
            log.warning("%s: Kafka is back after %.0f s", what, clock() - down_since)
        return result
    return None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


class ShutdownDeadline:
    """Ends the process ``timeout`` seconds after :meth:`arm` unless it exited by then."""

    def __init__(self, timeout: float, *, what: str = "worker", exit_code: int = 0) -> None:
        if not timeout > 0:
            raise ValueError(f"shutdown timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout
        self.what = what
        self.exit_code = exit_code
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start the countdown (once; later calls do nothing)."""
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.warning(
            "%s: graceful shutdown took longer than %.0f s; exiting now (safe: offsets are "
            "committed only after their writes)",
            self.what,
            self.timeout,
        )
        logging.shutdown()
        os._exit(self.exit_code)
