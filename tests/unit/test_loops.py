"""The event loop of the long-running processes (``--loop``): uvloop when installed, else
asyncio's; a bad name is a clear error and leaves no un-awaited coroutine behind."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from click.testing import CliRunner

from lasp_streams.cli import main
from lasp_streams.runtime.loops import loop_factory, run


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop() -> None:
    assert run(_loop_type()) is uvloop.Loop
    assert run(_loop_type(), "uvloop") is uvloop.Loop


def test_asyncio_runs_on_the_standard_loop() -> None:
    assert loop_factory("asyncio") is None
    assert not issubclass(run(_loop_type(), "asyncio"), uvloop.Loop)


def test_an_unknown_loop_is_refused_and_the_coroutine_closed() -> None:
    coro = _loop_type()
    with pytest.raises(ValueError, match="choose one of auto, uvloop, asyncio"):
        run(coro, "trio")
    assert coro.cr_frame is None  # closed: no "never awaited" warning (warnings are errors)


def test_the_cli_refuses_an_unknown_loop_by_name() -> None:
    result = CliRunner().invoke(
        main, ["loadgen", "--url", "ws://127.0.0.1:1", "--keys", "k.json", "--loop", "trio"]
    )
    assert result.exit_code == 2
    assert "'trio' is not one of 'auto', 'uvloop', 'asyncio'" in result.output
