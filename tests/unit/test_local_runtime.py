"""LocalRuntime: Lasp's runtime test cases, threshold reads, triggers, streams, faults."""

from __future__ import annotations

import pytest

from lasp_streams.dataflow import Topology, TriggerEvent, Update
from lasp_streams.errors import InvalidTopology, MutatorError, ReadTimeout, StepError
from lasp_streams.lattices.awset import AWSet
from lasp_streams.lattices.counters import GCounter
from lasp_streams.lattices.sets import GSet
from lasp_streams.lattices.threshold import Threshold
from lasp_streams.runtime.core import event_id
from lasp_streams.runtime.local import LocalRuntime
from lasp_streams.runtime.network import SimulatedNetwork


def faulty(replicas: int, seed: int = 7) -> SimulatedNetwork:
    return SimulatedNetwork(replicas, seed=seed, max_delay=4, reorder=True, duplicate=0.3, drop=0.2)


async def test_map_doubles_then_grows() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    doubled = topo.map("doubled", s, lambda x: x * 2)
    rt = LocalRuntime(topo, replicas=3, network=faulty(3))
    await rt.update(s, "a", "add_all", [1, 2, 3])
    assert await rt.read(doubled, Threshold.cardinality(3), replica=2) == {2, 4, 6}
    await rt.update(s, "b", "add_all", [4, 5, 6], replica=1)
    await rt.settle()
    for r in range(3):
        assert rt.query(doubled, replica=r) == {2, 4, 6, 8, 10, 12}


async def test_filter_keeps_evens() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    evens = topo.filter("evens", s, lambda x: x % 2 == 0)
    rt = LocalRuntime(topo, replicas=2, network=faulty(2))
    await rt.update(s, "a", "add_all", range(1, 11))
    await rt.settle()
    assert rt.query(evens, replica=1) == {2, 4, 6, 8, 10}


async def test_union_and_intersection() -> None:
    topo = Topology("t")
    a = topo.declare("a", AWSet)
    b = topo.declare("b", AWSet)
    u = topo.union("u", a, b)
    i = topo.intersection("i", a, b)
    rt = LocalRuntime(topo, replicas=3, network=faulty(3, seed=3))
    await rt.update(a, "x", "add_all", [1, 2, 3])
    await rt.update(b, "y", "add_all", [3, 4, 5], replica=2)
    await rt.settle()
    for r in range(3):
        assert rt.query(u, replica=r) == {1, 2, 3, 4, 5}
        assert rt.query(i, replica=r) == {3}
    await rt.update(b, "y", "remove", 3, replica=1)
    await rt.settle()
    for r in range(3):
        assert rt.query(u, replica=r) == {1, 2, 3, 4, 5}  # 3 is still in a
        assert rt.query(i, replica=r) == frozenset()


async def test_product_has_nine_pairs() -> None:
    topo = Topology("t")
    a = topo.declare("a", AWSet)
    b = topo.declare("b", AWSet)
    p = topo.product("p", a, b)
    rt = LocalRuntime(topo, replicas=2)
    await rt.update(a, "x", "add_all", [1, 2, 3])
    await rt.update(b, "y", "add_all", ["a", "b", 3], replica=1)
    pairs = await rt.read(p, Threshold.cardinality(9), timeout=1.0)
    assert len(pairs) == 9
    assert (3, 3) in pairs and (1, "a") in pairs


async def test_strict_reads_are_monotonic() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter)
    rt = LocalRuntime(topo)
    await rt.update(c, "a", "increment")
    assert await rt.read(c, Threshold.value(1)) == 1
    with pytest.raises(ReadTimeout):
        await rt.read(c, Threshold.value(1, strict=True), timeout=0.01)
    first = rt.state(c)
    await rt.update(c, "a", "increment")
    assert await rt.read(c, Threshold.state(first, strict=True), timeout=0.01) == 2
    assert await rt.read(c, Threshold.value(1, strict=True), timeout=0.01) == 2


async def test_bind_to_follows_before_and_after_an_update() -> None:
    topo = Topology("t")
    src = topo.declare("src", GSet)
    dst = topo.declare("dst", GSet)
    topo.bind_to("follow", dst, src)
    rt = LocalRuntime(topo, replicas=2)
    await rt.update(src, "a", "add", 1)
    assert await rt.read(dst, Threshold.cardinality(1), replica=1, timeout=1.0) == {1}
    await rt.update(src, "a", "add", 2, replica=1)
    await rt.settle()
    assert rt.query(dst) == {1, 2} == rt.query(dst, replica=1)


async def test_bind_joins_a_whole_state() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter)
    rt = LocalRuntime(topo)
    other = GCounter()
    other.increment("z", 5)
    assert await rt.bind(c, other)
    assert not await rt.bind(c, other)
    assert rt.query(c) == 5


async def test_stream_sees_each_inflation() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter)
    seen: list[Update] = []
    topo.stream("watch", c, seen.append)
    rt = LocalRuntime(topo)
    await rt.update(c, "a", "increment")
    await rt.update(c, "a", "increment")
    assert [u.value for u in seen] == [1, 2]
    assert all(u.var == "c" and u.key is None for u in seen)


async def test_enforce_once_fires_once_and_never_again() -> None:
    topo = Topology("t")
    s = topo.declare("s", GSet)
    fired: list[TriggerEvent] = []
    topo.enforce_once("enough", s, Threshold.cardinality(2), fired.append)
    rt = LocalRuntime(topo, replicas=3, network=faulty(3, seed=11))
    for r, x in enumerate([1, 2, 3]):
        await rt.update(s, f"actor{r}", "add", x, replica=r)
    await rt.settle()
    for x in range(4, 10):
        await rt.update(s, "late", "add", x, replica=x % 3)
        await rt.settle()
    assert len(fired) == 1
    assert fired[0].trigger == "enough" and len(fired[0].value) >= 2
    assert rt.fired == fired


async def test_trigger_fires_once_per_key_and_action_may_update() -> None:
    topo = Topology("t")
    hits = topo.declare("hits", GCounter, keyed=True)
    done = topo.declare("done", AWSet)

    async def retire(event: TriggerEvent) -> None:
        await event.runtime.update("done", "server", "add", event.key)

    topo.trigger("retire", hits, Threshold.value(3), retire)
    rt = LocalRuntime(topo, replicas=2, network=faulty(2, seed=5))
    for n in range(5):
        for key in ("ad1", "ad2"):
            await rt.update(hits, f"client{n % 2}", "increment", key=key, replica=n % 2)
    await rt.settle()
    assert sorted(e.key for e in rt.fired) == ["ad1", "ad2"]
    assert rt.query(done, replica=1) == {"ad1", "ad2"}
    # The event id is the Kafka sink's: a function of (topology, trigger, key) only.
    assert [e.event_id for e in rt.fired] == [event_id("t", "retire", e.key) for e in rt.fired]
    assert rt.fired[0].event_id != rt.fired[1].event_id


async def test_per_key_threshold_function_waits_for_its_input() -> None:
    topo = Topology("t")
    hits = topo.declare("hits", GCounter, keyed=True)
    limits = topo.declare("limits", AWSet)
    fired: list[object] = []

    def limit_for(key: object, view: object) -> Threshold | None:
        for name, n in view.query("limits"):  # type: ignore[attr-defined]
            if name == key:
                return Threshold.value(n)
        return None

    topo.trigger("cap", hits, limit_for, lambda e: fired.append(e.key), watch=(limits,))
    rt = LocalRuntime(topo)
    for _ in range(4):
        await rt.update(hits, "c", "increment", key="ad1")
    assert fired == []  # no limit known yet
    await rt.update(limits, "admin", "add", ("ad1", 3))
    assert fired == ["ad1"]


async def test_read_timeout_says_what_was_awaited() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter, keyed=True)
    rt = LocalRuntime(topo)
    with pytest.raises(ReadTimeout, match=r"'c' key 'k'.*Threshold.value\(5\) not met.*0"):
        await rt.read(c, Threshold.value(5), key="k", timeout=0.01)


async def test_read_returns_when_a_concurrent_writer_meets_it() -> None:
    import asyncio

    topo = Topology("t")
    c = topo.declare("c", GCounter)
    rt = LocalRuntime(topo, replicas=2)

    async def writer() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            await rt.update(c, "w", "increment")

    task = asyncio.create_task(writer())
    assert await rt.read(c, Threshold.value(3), replica=1, timeout=2.0) == 3
    await task


async def test_step_error_names_step_function_and_element() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)

    def invert(x: int) -> float:
        return 1 / x

    topo.map("inverse", s, invert)
    rt = LocalRuntime(topo)
    with pytest.raises(
        StepError, match=r"map step 'inverse'.*invert.*ZeroDivisionError.*element 0"
    ):
        await rt.update(s, "a", "add", 0)


async def test_failing_action_is_reported() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter)

    def boom(event: TriggerEvent) -> None:
        raise RuntimeError("billing down")

    topo.trigger("bill", c, Threshold.value(1), boom)
    rt = LocalRuntime(topo)
    with pytest.raises(StepError, match=r"trigger step 'bill'.*boom.*billing down"):
        await rt.update(c, "a", "increment")


async def test_update_misuse_is_refused() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    m = topo.map("m", s, str)
    k = topo.declare("k", GCounter, keyed=True)
    rt = LocalRuntime(topo)
    with pytest.raises(MutatorError, match="made by step 'm'"):
        await rt.update(m, "a", "add", 1)
    with pytest.raises(MutatorError, match="keyed: pass key"):
        await rt.update(k, "a", "increment")
    with pytest.raises(MutatorError, match="no mutator 'explode'"):
        await rt.update(s, "a", "explode")
    with pytest.raises(InvalidTopology, match="frozen"):
        topo.declare("late", AWSet)


async def test_partition_then_heal_converges() -> None:
    topo = Topology("t")
    s = topo.declare("s", AWSet)
    size = topo.filter("big", s, lambda x: x > 10)
    net = SimulatedNetwork(3, seed=2)
    rt = LocalRuntime(topo, replicas=3, network=net)
    await rt.update(s, "a", "add_all", [5, 50])
    await rt.settle()
    net.partition({0}, {1, 2})
    await rt.update(s, "a", "remove", 50)
    await rt.update(s, "b", "add", 60, replica=1)
    await rt.settle()
    assert rt.query(size, replica=0) == frozenset()  # 60 was added across the partition
    assert rt.query(size, replica=1) == {50, 60}
    net.heal()
    await rt.settle()
    for r in range(3):
        assert rt.query(size, replica=r) == {60}
    assert rt.converged(size) and rt.converged(s)
    assert net.stats.resent_as_state > 0


async def test_keyed_set_operators_work_key_by_key() -> None:
    topo = Topology("t")
    a = topo.declare("a", AWSet, keyed=True)
    b = topo.declare("b", AWSet, keyed=True)
    both = topo.intersection("both", a, b)
    shifted = topo.map("shifted", both, lambda x: x + 100)
    rt = LocalRuntime(topo, replicas=2, network=faulty(2, seed=4))
    await rt.update(a, "x", "add_all", [1, 2], key="k1")
    await rt.update(b, "y", "add_all", [2, 3], key="k1", replica=1)
    await rt.update(b, "y", "add_all", [1], key="k2", replica=1)
    await rt.settle()
    for r in range(2):
        assert rt.query(shifted, key="k1", replica=r) == {102}
        assert rt.query(shifted, key="k2", replica=r) == frozenset()


async def test_timeout_message_mentions_a_partition_and_copies_mode_works() -> None:
    topo = Topology("t")
    c = topo.declare("c", GCounter)
    net = SimulatedNetwork(2)
    rt = LocalRuntime(topo, replicas=2, network=net, use_codec=False)
    net.partition({0}, {1})
    await rt.update(c, "a", "increment")
    with pytest.raises(ReadTimeout, match=r"1 message\(s\) in flight, network partitioned"):
        await rt.read(c, Threshold.value(1), replica=1, timeout=0.01)
    net.heal()
    assert await rt.read(c, Threshold.value(1), replica=1, timeout=1.0) == 1


def test_network_size_must_match() -> None:
    topo = Topology("t")
    topo.declare("c", GCounter)
    with pytest.raises(ValueError, match="connects 2 replicas but the runtime has 3"):
        LocalRuntime(topo, replicas=3, network=SimulatedNetwork(2))
