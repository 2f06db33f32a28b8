"""The status page without a broker: the snapshot it shows, the Graphviz graph, and the aiohttp
application's routes (the browser test with a real broker is in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices.base import Lattice
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.metrics import Metrics
from lasp_streams.records import BillingEvent, Crossed
from lasp_streams.web import snapshot, status_app
from lasp_streams.web.graph import render_svg, to_dot
from lasp_streams.web.source import BillingTally
from topologies.ad_counter import build


def counter(n: int) -> GCounter:
    c = GCounter()
    c.increment("a", n)
    return c


class FakeSource:
    """A StatusSource over states held in memory (the Kafka one follows topics instead)."""

    def __init__(self) -> None:
        self._topology = build(min_impressions=100)
        self._topology.freeze()
        self.states: dict[str, dict[bytes, Lattice]] = {"impressions": {b"ad-1": counter(40)}}

    @property
    def topology(self) -> Topology:
        return self._topology

    def _states(self, var: str) -> Mapping[bytes, Lattice]:
        return self.states.get(var, {})

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self._topology, self._states, BillingTally())


def test_snapshot_shows_values_thresholds_billing_lag_and_dead_letters() -> None:
    topo = Topology("shop")
    views = topo.declare("views", GCounter, keyed=True)
    topo.declare("total", GCounter)
    topo.trigger("popular", views, Threshold.value(50), action=lambda _e: None)
    topo.freeze()
    states = {"views": {b"/home": counter(40), b"/about": counter(5)}, "total": {b"": counter(7)}}
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False)
    metrics.lag("views", 0, 120, 100)
    metrics.dead_lettered("views", "decode")
    billing = BillingTally()
    billing.add(BillingEvent("shop", "views", "popular", b"/x", 60, Crossed("value", 50)))
    data = snapshot(topo, lambda v: states.get(v, {}), billing, registry)
    by_id = {v["id"]: v for v in data["variables"]}
    assert by_id["views"]["summary"] == "2 keys, total 45"
    assert by_id["views"]["values"] == [["/home", 40], ["/about", 5]]
    assert by_id["total"]["value"] == 7
    (trigger,) = data["triggers"]
    assert trigger["fired"] == 1 and trigger["billed_total"] == 60
    assert [(k["key"], k["pct"]) for k in trigger["keys"]] == [("/home", 80.0), ("/about", 10.0)]
    assert data["billing"] == {"events": 1, "total": 60}
    assert data["lag"] == [{"variable": "views", "partition": "0", "records": 20.0}]
    assert data["dlq"] == [{"variable": "views", "reason": "decode", "records": 1.0}]
    json.dumps(data)  # all of it is JSON
    # What the Kafka source reads (every group's lag, the dead-letter topic) wins.
    group_lag = [{"variable": "views", "partition": 1, "records": 7, "group": "shop.views.agent"}]
    data = snapshot(
        topo,
        lambda v: states.get(v, {}),
        billing,
        registry,
        lag=group_lag,
        dlq={("views", "late"): 2},
    )
    assert data["lag"] == group_lag
    assert data["dlq"] == [{"variable": "views", "reason": "late", "records": 2}]


def test_the_graph_has_a_node_per_variable_with_a_value_line() -> None:
    topo = build()
    topo.freeze()
    dot = to_dot(topo)
    for var in topo.variables:
        assert f'id="var-{var}"' in dot
    svg = asyncio.run(render_svg(topo))
    assert svg.count('class="node"') == len(topo.variables) + 1  # + the trigger
    assert "var&#45;impressions" in svg


async def test_the_app_serves_page_assets_graph_status_and_events() -> None:
    source = FakeSource()
    async with TestClient(TestServer(status_app(source, interval=0.05))) as client:
        page = await client.get("/")
        assert page.status == 200 and "static/status.js" in await page.text()
        for asset in ("status.js", "status.css"):
            assert (await client.get(f"/static/{asset}")).status == 200
        assert (await client.get("/static/../app.py")).status == 404
        graph = await client.get("/graph.svg")
        assert graph.content_type == "image/svg+xml" and "<svg" in await graph.text()
        status = await (await client.get("/api/status")).json()
        assert status["topology"] == "ad_counter"
        # Server-Sent Events: one snapshot now, another when a value changes.
        events = await client.get("/events")
        assert events.headers["Content-Type"] == "text/event-stream"
        first = json.loads((await events.content.readuntil(b"\n\n"))[len(b"data: ") :])
        source.states["impressions"][b"ad-1"] = counter(90)
        second = json.loads((await events.content.readuntil(b"\n\n"))[len(b"data: ") :])
        summary = {v["id"]: v["summary"] for v in first["variables"]}["impressions"]
        assert summary == "1 keys, total 40"
        summary = {v["id"]: v["summary"] for v in second["variables"]}["impressions"]
        assert summary == "1 keys, total 90"
        events.close()
