"""The status page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
protocol: the page loads, Graphviz's graph renders, and a value on it changes while deltas
flow. A screenshot is saved as a test artefact (its path is printed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.topics import delta_topic
from lasp_streams.web import serve_status
from tests.integration.test_kafka_ad_counter import running, settings_for
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

pytestmark = pytest.mark.integration

WAIT_S = 60.0


class DevTools:
    """A page of a headless Chromium, over the DevTools protocol's WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), WAIT_S)
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def until(self, expression: str, what: str) -> Any:
        """Evaluate ``expression`` until it is truthy (the page updates on its own)."""
        deadline = time.monotonic() + WAIT_S
        while not (value := await self.js(expression)):
            if time.monotonic() > deadline:
                html = await self.js("document.body.innerText")
                raise AssertionError(f"{what}: not seen within {WAIT_S:.0f} s; page: {html!r}")
            await asyncio.sleep(0.1)
        return value


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    binary = shutil.which("chromium")
    assert binary is not None, "Debian's chromium is missing: run ops/install-system-deps.sh"
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, f"chromium exited with {process.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t["type"] == "page"]
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_the_status_page_draws_the_graph_and_shows_values_change(
    bootstrap_servers: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    name = unique_topic("status")
    registry = CollectorRegistry()
    settings = settings_for(bootstrap_servers)
    rt = KafkaRuntime(build(min_impressions=100), settings, name=name, metrics=Metrics(registry))
    async with running(rt):
        ads = [Ad(f"ad-{i}", "rovio" if i % 2 else "riot") for i in range(3)]
        for ad in ads:
            await rt.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await rt.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        await rt.read("ads_with_contracts", Threshold.cardinality(3), timeout=30)
        await rt.update("impressions", "c0", "increment", 5, key="ad-0")
        server = await asyncio.to_thread(
            serve_status, rt.topology, settings, port=0, name=name, registry=registry
        )
        try:
            async with chromium(tmp_path) as page:
                await page.call("Page.enable")
                await page.call("Page.navigate", url=server.url)
                # The graph rendered: Graphviz's SVG, with a node per variable.
                nodes = await page.until(
                    "document.querySelectorAll('#graph svg g.node').length", "the graph"
                )
                assert nodes >= len(rt.topology.variables)
                assert await page.js("!!document.getElementById('var-impressions')")
                cell = "document.querySelector('#row-impressions td.value')?.textContent"
                before = await page.until(f"({cell} || '').includes('total')", "impressions")
                before = await page.js(cell)
                assert "total 5" in before, before

                # Deltas flow: the value on the page changes without a reload.
                for client in range(3):
                    await rt.update("impressions", f"c{client}", "increment", 20, key="ad-1")
                after = await page.until(
                    f"({cell} || '').includes('total 65') && {cell}", "the new total"
                )
                assert after != before
                graph_line = await page.js(
                    "[...document.getElementById('var-impressions')"
                    ".querySelectorAll('text')].pop().textContent"
                )
                assert "total 65" in graph_line
                assert await page.js("document.querySelector('#connection').textContent") == "live"

                # Consumer lag of the deployment's groups, and a dead letter as it happens.
                await page.until(
                    "[...document.querySelectorAll('#lag tbody td')]"
                    ".some(td => td.textContent === 'impressions')",
                    "the impressions agent's lag row",
                )
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
                await producer.start()
                try:
                    await producer.send_and_wait(
                        delta_topic(name, "impressions"), key=b"ad-2", value=b"\xc1garbage"
                    )
                finally:
                    await producer.stop()
                await page.until(
                    "document.querySelector('#dlq tbody')?.textContent.includes('decode')",
                    "the dead letter",
                )

                shot = await page.call("Page.captureScreenshot", format="png")
                path = tmp_path / "status-page.png"
                path.write_bytes(base64.b64decode(shot["data"]))
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                print(f"status page screenshot: {path}")
        finally:
            await asyncio.to_thread(server.close)
