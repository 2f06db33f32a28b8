"""The dead-letter topic: records an agent refuses, with why and where they came from.

A record is refused when it does not decode (malformed bytes, unknown tag, unsupported wire
version, a state that breaks its type's invariants — the codec checks all of these), when it
decodes to a lattice of another type than the variable's, when joining it is impossible (two
different IVar values), or when the variable's validator rejects it (an untrusted client
writing another actor's entries). The agent sends the *original* key and value bytes to
``<topology>.dlq`` with these headers and carries on; the variable's state is not touched
(except for ``step``, below).

=========================== ==========================================================
header                      value (utf-8)
=========================== ==========================================================
``lasp.reason``             reason code (below)
``lasp.error``              the error message (at most 2,000 characters)
``lasp.variable``           the variable the record was meant for
``lasp.source.topic``       topic of the refused record
``lasp.source.partition``   its partition
``lasp.source.offset``      its offset
=========================== ==========================================================

Reason codes (also the ``reason`` label of the ``records_dead_lettered`` metric, and
:data:`lasp_streams.runtime.core.Reason`): ``decode`` — the codec refused the bytes (malformed,
unknown tag, unsupported version, or a state that breaks the type's invariants, such as a
negative count); ``wrong_type`` — a valid lattice of another type than the variable's;
``invariant`` — the delta has no join with the current state (two different IVar values);
``validation`` — the variable's record validator refused it; ``late`` — part of a windowed
delta is for windows that had already closed (that part is not merged; the
``lasp.window.starts`` header lists them); ``step`` — the record was merged, but a step it fed
raised (a threshold, map, filter or fold function; the error names the step).

The dead letters themselves are made by the replica core
(:class:`~lasp_streams.runtime.core.DeadLetter`); this module writes and reads their headers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from lasp_streams.runtime.core import DeadLetter

__all__ = ["HEADER_PREFIX", "DeadLetter", "headers_of", "late_by_window", "parse_headers"]

HEADER_PREFIX = "lasp."
_MAX_ERROR = 2_000


def headers_of(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """The Kafka headers of the dead-letter record."""
    return [
        ("lasp.reason", dead.reason.encode()),
        ("lasp.error", dead.error[:_MAX_ERROR].encode("utf-8", "replace")),
        ("lasp.variable", dead.variable.encode()),
        ("lasp.source.topic", dead.topic.encode()),
        ("lasp.source.partition", str(dead.partition).encode()),
        ("lasp.source.offset", str(dead.offset).encode()),
        *((HEADER_PREFIX + name, text.encode()) for name, text in dead.extra),
    ]


def parse_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """The ``lasp.*`` headers of a dead-letter record, decoded, without the prefix."""
    return {
        name[len(HEADER_PREFIX) :]: value.decode("utf-8", "replace")
        for name, value in headers
        if name.startswith(HEADER_PREFIX)
    }


def late_by_window(letters: Iterable[Mapping[str, str]]) -> Counter[int]:
    """Impressions reported late, per window start, over the ``late`` dead letters among
    ``letters`` (:func:`parse_headers` of each): the sum of their ``window.late`` headers
    (``"<start>:<count>,..."``, one pair per closed window the record reached)."""
    late: Counter[int] = Counter()
    for headers in letters:
        if headers.get("reason") != "late":
            continue
        for part in filter(None, headers.get("window.late", "").split(",")):
            start, count = part.split(":")
            late[int(start)] += int(count)
    return late
