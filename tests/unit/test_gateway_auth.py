"""Device keys and frame checks without a broker: derived secrets, rotation, revocation, the key
ring file, signatures, and the device checks of a flush (each attack of issue 10)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lasp_streams.client.protocol import ProtocolError, mac, sign, unpack
from lasp_streams.codec import encode
from lasp_streams.gateway.keys import KeyRing, KeyRingError, load_keyring, save_keyring
from lasp_streams.lattices import GCounter, GSet
from lasp_streams.server.devices import DevicePolicy, check_flush

POLICY = DevicePolicy(max_keys_per_flush=10, max_total=1_000)
KNOWN = {"ad-1", "ad-2"}


def flush(*deltas: tuple[str, bytes], var: str = "impressions") -> dict[str, object]:
    return {"op": "flush", "var": var, "deltas": [[k, p] for k, p in deltas]}


def check(device: str, body: dict[str, object]) -> tuple[str, list[tuple[str, int]]]:
    return check_flush(
        device,
        body,
        policy=POLICY,
        writable=frozenset({"impressions"}),
        known=lambda var, key: key in KNOWN,
    )


def own(device: str, n: int) -> bytes:
    return encode(GCounter().increment(device, n))


def test_secrets_are_derived_per_device_and_survive_rotation_until_retired() -> None:
    ring = KeyRing.new()
    a, b = ring.secret("phone-a"), ring.secret("phone-b")
    assert a != b and len(a) == 32 and ring.secret("phone-a") == a
    rotated = ring.rotate()
    assert rotated.current == 2 and rotated.secret("phone-a", 1) == a
    assert rotated.secret("phone-a") != a
    assert rotated.problem("phone-a", 1) is None
    retired = rotated.retire(1)
    assert "retired" in (retired.problem("phone-a", 1) or "")
    with pytest.raises(KeyRingError, match="current"):
        retired.retire(2)
    assert "revoked" in (retired.revoke("phone-a").problem("phone-a", 2) or "")
    assert retired.revoke("phone-a").unrevoke("phone-a").problem("phone-a", 2) is None


def test_the_key_ring_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing.new().rotate().revoke("bad")
    save_keyring(path, ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(path) == ring
    path.write_text(json.dumps({"format": "x"}))
    with pytest.raises(KeyRingError, match="not a version-1"):
        load_keyring(path)
    with pytest.raises(KeyRingError, match="keys init"):
        load_keyring(tmp_path / "missing.json")


def test_a_signature_binds_secret_nonce_seq_and_body() -> None:
    secret, nonce = b"s" * 32, b"n" * 16
    frame = unpack(sign(secret, nonce, "d", 1, 7, {"op": "ping"}))
    device, version, seq, body, sig = frame
    assert (device, version, seq) == ("d", 1, 7)
    assert sig == mac(secret, nonce, 7, body)
    assert sig != mac(secret, b"m" * 16, 7, body)  # another session
    assert sig != mac(secret, nonce, 8, body)  # another seq
    assert sig != mac(b"t" * 32, nonce, 7, body)  # another device's secret
    with pytest.raises(ProtocolError) as err:
        unpack(b"\xc1")
    assert err.value.code == "malformed"


@pytest.mark.parametrize(
    ("device", "body", "code"),
    [
        ("d", flush(("ad-1", own("other", 1))), "foreign_actor"),
        ("d", flush(("ad-1", own("d", 10**18))), "over_limit"),
        ("d", flush(("fake-1", own("d", 1))), "unknown_key"),
        ("d", flush(*[(f"fake-{i}", own("d", 1)) for i in range(20_000)]), "over_limit"),
        ("d", flush(("ad-1", own("d", 1)), var="contracts"), "unknown_variable"),
        ("d", flush(("ad-1", b"\xc1")), "malformed"),
        ("d", flush(("ad-1", encode(GSet().add("d", "x")))), "malformed"),
        ("d", flush(("x" * 200, own("d", 1))), "over_limit"),
        ("d", flush(("ad\x00", own("d", 1))), "malformed"),
        ("d", flush(("ad-1", own("d", 1)), ("ad-1", own("d", 2))), "malformed"),
        ("d", {"op": "flush", "var": "impressions", "deltas": "nope"}, "malformed"),
    ],
)
def test_each_attack_on_a_flush_is_refused_with_its_code(
    device: str, body: dict[str, object], code: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        check(device, body)
    assert err.value.code == code
    assert err.value.reason


def test_an_honest_flush_gives_the_totals() -> None:
    assert check("d", flush(("ad-1", own("d", 5)), ("ad-2", own("d", 1_000)))) == (
        "impressions",
        [("ad-1", 5), ("ad-2", 1_000)],
    )


def totals(*items: object, var: str = "impressions") -> dict[str, object]:
    return {"op": "flush", "var": var, "totals": list(items)}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (totals(["ad-1", 10**18]), "over_limit"),
        (totals(["ad-1", -5]), "over_limit"),
        (totals(["ad-1", True]), "malformed"),
        (totals(["ad-1", 1.5]), "malformed"),
        (totals(["ad-1", "7"]), "malformed"),
        (totals(["ad-1"]), "malformed"),
        (totals(("ad-1", 1)), "malformed"),
        (totals(["fake-1", 1]), "unknown_key"),
        (totals(*[[f"fake-{i}", 1] for i in range(20_000)]), "over_limit"),
        (totals(["ad-1", 1], var="contracts"), "unknown_variable"),
        (totals(["x" * 200, 1]), "over_limit"),
        (totals(["ad\x00", 1]), "malformed"),
        (totals([7, 1]), "malformed"),
        (totals(["ad-1", 1], ["ad-1", 2]), "malformed"),
        ({"op": "flush", "var": "impressions", "totals": {"ad-1": 1}}, "malformed"),
    ],
)
def test_each_attack_on_a_flush_of_totals_is_refused_with_its_code(
    body: dict[str, object], code: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        check("d", body)
    assert err.value.code == code
    assert err.value.reason


def test_an_honest_flush_of_totals_gives_them_without_zeros() -> None:
    assert check("d", totals(["ad-1", 5], ["ad-2", 1_000])) == (
        "impressions",
        [("ad-1", 5), ("ad-2", 1_000)],
    )
    assert check("d", totals(["ad-1", 0])) == ("impressions", [])


def test_only_the_ledgers_own_records_are_heard_early() -> None:
    from lasp_streams.gateway.ledger_tail import ledger_delta

    mine = encode(GCounter().increment("ledger-2", 40))
    assert ledger_delta([("lasp.actor", b"ledger-2")], mine) is not None
    for headers, value in [
        ([("lasp.actor", b"ledger-3")], mine),  # another actor's entry
        ([("lasp.actor", b"phone-1")], encode(GCounter().increment("phone-1", 4))),
        ([], mine),
        ([("lasp.actor", b"ledger-2"), ("lasp.actor", b"ledger-2")], mine),
        ([("lasp.actor", b"ledger-2")], b"\xc1"),
        ([("lasp.actor", b"ledger-2")], encode(GSet().add("ledger-2", "x"))),
        ([("lasp.actor", b"ledger-2")], None),
    ]:
        assert ledger_delta(headers, value) is None
