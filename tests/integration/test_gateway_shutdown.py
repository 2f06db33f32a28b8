"""A gateway holding many sessions stops on SIGTERM within its shutdown timeout: every device
is told to reconnect elsewhere, and the process exits 0 (before, aiohttp waited up to 60 s for
the open sockets and ~1,000 sessions kept a gateway alive for more than 20 s)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lasp_streams.client.gateway import GatewayTransport
from tests.integration.gateway_env import gateway_env, gateway_process

pytestmark = pytest.mark.integration

SESSIONS = 600
SHUTDOWN_S = 4.0


async def test_sigterm_with_hundreds_of_sessions_ends_within_the_shutdown_timeout(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("gwstop").replace(".", "_")
    async with gateway_env(bootstrap_servers, name, tmp_path, gateways=0) as env:
        proc, url = await gateway_process(
            bootstrap_servers, name, env.keys, "--shutdown-timeout", str(SHUTDOWN_S)
        )
        transports = [
            GatewayTransport(url, f"dev-{i}", env.ring.secret(f"dev-{i}"), timeout=60)
            for i in range(SESSIONS)
        ]
        try:
            for i in range(0, SESSIONS, 100):
                await asyncio.gather(*(t.start() for t in transports[i : i + 100]))
            await asyncio.gather(*(t.read_state("impressions") for t in transports))
            assert proc.stderr is not None
            proc.send_signal(signal.SIGTERM)
            # Bounded: the shutdown timeout plus the interpreter's exit; a hang fails here.
            await asyncio.wait_for(proc.wait(), SHUTDOWN_S + 20)
            assert proc.returncode == 0, await proc.stderr.read()
            said = (await proc.stderr.read()).decode()
            assert f"stopping ({SESSIONS} sessions told to reconnect)" in said, said
            assert "graceful shutdown took longer" not in said, said
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for t in transports:
                await t.stop()
