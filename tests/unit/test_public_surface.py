"""The curated public surface (STYLE.md #7) and a codec that works in a fresh process."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import lasp_streams

EXPECTED = {
    "AWMap", "AWSet", "BCounter", "Boolean", "CodecError", "ConflictingMerge", "DWFlag",
    "DecodeError", "EWFlag", "EdgeClient", "EncodeError", "Folded", "GCounter", "GMap", "GSet",
    "IVar", "IncompatibleLattices", "InsufficientRights", "InvalidTopology", "KafkaSetupError",
    "LWWRegister", "LaspError", "LateDelta", "Lattice", "LatticeError", "LexCounter",
    "LocalHub", "LocalRuntime", "MVMap", "MVRegister", "MaxInt", "MutatorError", "ORSet",
    "PNCounter", "Pair", "ProvenanceSet", "ReadTimeout", "StepError", "Threshold", "Topology",
    "TriggerEvent", "TwoPSet", "Update", "Var", "WindowClosed", "WindowSpec", "__version__",
    "count_distinct", "decode", "encode", "register_record", "sum_by", "threshold_met",
}  # fmt: skip

#: The sub-package façades: what users import from each (the rest from its module).
FACADES = {
    "lasp_streams.runtime.kafka": {
        "BillingEvent", "ClosedWindow", "KafkaRuntime", "KafkaSettings", "TopicMismatch",
        "build_faust_app", "load_topology", "plan_worker", "read_billing_events",
        "read_closed_windows", "run_faust_worker", "run_worker",
    },
    "lasp_streams.server": {
        "HubValidator", "LocalHub", "Refusal", "RightsEscrow", "UntrustedDelta",
        "check_client_delta", "client_delta_problem", "record_delta_problem",
    },
    "lasp_streams.client": {
        "ACTOR_HEADER", "UNLIMITED", "Bounded", "BufferFileError", "ClientStats",
        "ClientTransport", "DeltaBatch", "DeltasExpired", "EdgeClient", "LocalTransport",
        "Offline", "Position", "Snapshot", "load_buffer", "save_buffer",
    },
}  # fmt: skip


def test_exported_members_are_pinned() -> None:
    assert set(lasp_streams.__all__) == EXPECTED
    for name in lasp_streams.__all__:
        assert hasattr(lasp_streams, name), name


@pytest.mark.parametrize("package", sorted(FACADES))
def test_sub_package_facades_are_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == FACADES[package]
    for name in module.__all__:
        assert hasattr(module, name), name


def test_errors_share_one_root() -> None:
    for name in lasp_streams.__all__:
        obj = getattr(lasp_streams, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, lasp_streams.LaspError), name


def test_fresh_process_decodes_every_registered_tag() -> None:
    """A process that imports only the codec (an audit tool, an edge client) must decode
    every lattice type, including those the dataflow package defines (fold, windows)."""
    import asyncio

    topo = lasp_streams.Topology("fresh")
    src = topo.declare("src", lasp_streams.AWSet)
    topo.filter("kept", src, bool)
    topo.fold("count", src, lasp_streams.GCounter, lasp_streams.count_distinct())
    rt = lasp_streams.LocalRuntime(topo, replicas=1)

    async def fill() -> None:
        await rt.update("src", "a", "add", 1)
        await rt.settle()

    asyncio.run(fill())
    encoded = [lasp_streams.encode(rt.state(var)) for var in ("kept", "count")]
    script = textwrap.dedent(
        f"""
        from lasp_streams.codec import decode
        print(*(type(decode(data)).__name__ for data in {encoded!r}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["ProvenanceSet", "Folded"]
