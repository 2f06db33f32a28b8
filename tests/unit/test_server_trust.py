"""Attacks on the server's check of client deltas (lasp_streams.server.validate) that the GMap
with per-key types opens: a client must not give a key a type of its choosing."""

from __future__ import annotations

from lasp_streams.codec import encode
from lasp_streams.dataflow.topology import Topology
from lasp_streams.lattices import BCounter, GCounter, GMap, PNCounter
from lasp_streams.server import LocalHub, client_delta_problem


def test_a_client_gmap_delta_must_hold_the_maps_own_type() -> None:
    honest = GMap(GCounter).apply("eve", "ad1", "increment")
    assert client_delta_problem(honest, "eve") is None
    # Only eve's own entries, but a B-Counter where the map holds G-Counters.
    forged = GMap(GCounter).apply("eve", "ad1", BCounter, "increment", 10)
    problem = client_delta_problem(forged, "eve")
    assert problem is not None
    assert "GMap key 'ad1'" in problem and "GCounter" in problem and "BCounter" in problem
    other = GMap(GCounter).apply("eve", "ad2", PNCounter(), "decrement", 3)
    assert "must hold the map's type" in str(client_delta_problem(other, "eve"))


async def test_a_forged_key_type_cannot_poison_a_key_at_the_hub() -> None:
    """Attack: eve writes first to key 'ad1' with another nested type; had it been joined,
    'ad1' would hold that type for good and every honest client's counts on it would have no
    join. The hub refuses it whole, and honest deltas keep counting."""
    topo = Topology("trust")
    topo.declare("clicks", GMap(GCounter))
    hub = LocalHub(topo)
    forged = GMap(GCounter).apply("eve", "ad1", BCounter, "increment", 10)
    assert await hub.receive("eve", "clicks", [(None, encode(forged))]) == 0
    assert len(hub.refused) == 1 and "must hold the map's type" in hub.refused[0].reason
    honest = GMap(GCounter).apply("bob", "ad1", "increment", 2)
    assert await hub.receive("bob", "clicks", [(None, encode(honest))]) == 1
    await hub.runtime.settle()
    assert hub.runtime.state("clicks", replica=hub.runtime.sink).value() == {"ad1": 2}


async def test_a_delta_with_no_join_is_refused_not_raised() -> None:
    """Defence in depth: a delta that passes the checks but has no join with the state (here
    a trusted write made 'ad1' a B-Counter key) is refused whole; the hub keeps serving."""
    topo = Topology("trust2")
    clicks = topo.declare("clicks", GMap(GCounter))
    hub = LocalHub(topo)
    await hub.runtime.bind(
        clicks,
        GMap(GCounter).apply("server", "ad1", BCounter, "increment", 5),
        replica=hub.runtime.sink,
    )
    honest = GMap(GCounter).apply("bob", "ad1", "increment")
    assert await hub.receive("bob", "clicks", [(None, encode(honest))]) == 0
    assert "cannot merge" in hub.refused[0].reason
    assert (
        await hub.receive(
            "bob", "clicks", [(None, encode(GMap(GCounter).apply("bob", "ad2", "increment")))]
        )
        == 1
    )
