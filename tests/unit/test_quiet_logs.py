"""aiokafka's repeated error logs are rate-limited (runtime/kafka/quiet.py)."""

from __future__ import annotations

import logging

import pytest

from lasp_streams.runtime.kafka.quiet import RepeatFilter, quiet_aiokafka


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_of_identical_errors_is_one_line_then_one_reminder_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    logger = logging.getLogger("test.quiet.conn")
    flt = RepeatFilter(60.0, clock)
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.quiet.conn"):
            for i in range(5000):  # 25 s of failed connects, 200 a second
                clock.now = i * 0.005
                logger.error("Unable connect to node with id %s: %s", 1, "refused")
            logger.error("Unable to update metadata from %s", [1])  # another kind passes
            logger.info("connected")  # below WARNING: never filtered
            clock.now = 61.0
            logger.error("Unable connect to node with id %s: %s", 1, "refused")
    finally:
        logger.removeFilter(flt)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Unable connect to node with id 1: refused",
        "Unable to update metadata from [1]",
        "connected",
        "Unable connect to node with id 1: refused (and 4999 more like it in the last 61s)",
    ]


def test_quiet_aiokafka_covers_the_loggers_that_flood_an_outage() -> None:
    flt = quiet_aiokafka()
    assert quiet_aiokafka() is flt  # installed once per process
    for name in ("aiokafka.conn", "aiokafka.cluster", "aiokafka.consumer.fetcher"):
        assert flt in logging.getLogger(name).filters


def test_a_client_start_sees_every_line_it_needs_to_name_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While a client starts, its failure is named from what aiokafka logs: an identical line
    logged just before must not hide it."""
    clock = _Clock()
    logger = logging.getLogger("test.quiet.start")
    flt = RepeatFilter(60.0, clock)
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.WARNING, logger="test.quiet.start"):
            logger.error("SSL: CERTIFICATE_VERIFY_FAILED")
            with flt.passing():
                logger.error("SSL: CERTIFICATE_VERIFY_FAILED")
            logger.error("SSL: CERTIFICATE_VERIFY_FAILED")  # rate-limited again
    finally:
        logger.removeFilter(flt)
    assert [r.getMessage() for r in caplog.records] == ["SSL: CERTIFICATE_VERIFY_FAILED"] * 2
