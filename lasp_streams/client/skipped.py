"""Records a client could not use (garbage on a topic it reads), counted and logged bounded.

A client reads topics that others write (``ads_with_contracts.deltas``, state topics); a record
there that does not decode, or does not join its replica, must not stop the client's syncs for
ever. It is skipped and counted here. The log is bounded twice: each line is cut to
:data:`MAX_LINE` characters, and a source is logged at its 1st, 10th, 100th ... skip only, so a
flood of garbage costs a handful of lines.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["MAX_LINE", "SkippedRecords", "clip"]

log = logging.getLogger(__name__)

MAX_LINE: Final = 400
"""Most characters of one logged reason."""


def clip(text: str, limit: int = MAX_LINE) -> str:
    """``text`` cut to ``limit`` characters (with a marker saying how much was cut)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


class SkippedRecords:
    """How many records were skipped per source (e.g. ``"ads_with_contracts deltas"``)."""

    __slots__ = ("by_source", "owner")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.by_source: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def skip(self, source: str, exc: BaseException) -> None:
        """Count one skipped record of ``source`` that raised ``exc``; log it if its count is
        a power of ten."""
        n = self.by_source.get(source, 0) + 1
        self.by_source[source] = n
        if _power_of_ten(n):
            log.warning(
                "%s: skipped an unusable record of %s (%d so far): %s",
                self.owner,
                clip(source, 100),
                n,
                clip(f"{type(exc).__name__}: {exc}"),
            )


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1
