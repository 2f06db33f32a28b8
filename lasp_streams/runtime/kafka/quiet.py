"""Rate-limited aiokafka error logs: an outage is a few lines, not thousands.

While a broker is down aiokafka logs every failed connect, metadata refresh and fetch, from
every client, several times a second: a 25 s outage once wrote 14,803 ERROR lines from one
worker. :class:`RepeatFilter` lets the first record of each kind (logger and message template)
through, drops the repeats, and at most every ``remind_every`` seconds lets one more through
with how many were dropped since. :func:`quiet_aiokafka` installs one on every aiokafka logger;
:mod:`lasp_streams.runtime.kafka.clients` calls it when it builds the first client, so every
process of ours that talks to Kafka gets it. Records below WARNING pass untouched; the outage
itself (when it starts, a reminder, when it ends) is logged by
:mod:`lasp_streams.runtime.kafka.patience`.
"""

from __future__ import annotations

import contextlib
import logging
import pkgutil
import time
from collections.abc import Callable, Iterator

__all__ = ["RepeatFilter", "quiet_aiokafka"]

#: Seconds between two records of the same kind that are let through.
REMIND_EVERY = 60.0


class RepeatFilter(logging.Filter):
    """Pass the first WARNING-or-worse record of each (logger, template), then one per
    ``remind_every`` seconds carrying the count of those dropped in between."""

    def __init__(
        self, remind_every: float = REMIND_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.remind_every = remind_every
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}
        self._passing = 0

    @contextlib.contextmanager
    def passing(self) -> Iterator[None]:
        """Let every record through meanwhile: a client's start reads what aiokafka logs to
        name the cause of a failure (a refused login, an untrusted certificate), and an
        earlier, identical line must not hide it."""
        self._passing += 1
        try:
            yield
        finally:
            self._passing -= 1

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self._passing:
            return True
        kind = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.remind_every:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return False
        self._last[kind] = now
        dropped = self._dropped.pop(kind, 0)
        if dropped and last is not None:
            record.msg = f"{record.msg} (and {dropped} more like it in the last {now - last:.0f}s)"
        return True


_installed: RepeatFilter | None = None


def quiet_aiokafka(remind_every: float = REMIND_EVERY) -> RepeatFilter:
    """Install one :class:`RepeatFilter` on every aiokafka logger (once per process)."""
    global _installed
    if _installed is None:
        import aiokafka

        _installed = RepeatFilter(remind_every)
        names = ["aiokafka"] + [
            m.name for m in pkgutil.walk_packages(aiokafka.__path__, "aiokafka.")
        ]
        for name in names:
            logging.getLogger(name).addFilter(_installed)
    return _installed
