"""What to do with an aiokafka transactional producer that another one has fenced, or that
may have been."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

__all__ = ["close_fenced", "stop_quietly"]

log = logging.getLogger(__name__)


async def close_fenced(producer: AIOKafkaProducer) -> None:
    """Close a producer after ``ProducerFenced``, leaving no error unread behind it.

    aiokafka (0.14) puts the fencing error on the transaction's internal waiter future, which
    nothing awaits once the transaction block has exited; asyncio then reports "Future exception
    was never retrieved" whenever the garbage collector finds it. That report is noise here (the
    caller has handled the fence), and on CPython 3.11 one raised from deep inside an unrelated
    call has been seen to break a later ``compile()`` ("AST constructor recursion depth
    mismatch"). So the waiter's error is read here, on purpose, through aiokafka's internals
    (guarded: if they change, this only logs less).
    """
    manager: Any = getattr(producer, "_txn_manager", None)
    waiter = getattr(manager, "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        waiter.exception()
    await stop_quietly(producer)


async def stop_quietly(producer: AIOKafkaProducer) -> None:
    """Stop a producer; a fenced one may fail to close cleanly, which is only logged."""
    try:
        await producer.stop()
    except KafkaError as exc:
        log.debug("producer stop: %r", exc)
