"""``--pace`` on the command line: refused with a reason where nothing decides locally (so
nothing would be paced), accepted silently at its default there."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lasp_streams.cli import main


@pytest.mark.parametrize(
    ("args", "this"),
    [
        (["--local"], "--local"),
        (["--mode", "bounded"], "--mode bounded"),
        (["--mode", "hybrid"], "--mode hybrid"),
        (["--transport", "kafka"], "--transport kafka"),
    ],
)
def test_the_demo_refuses_a_pace_it_cannot_apply(args: list[str], this: str) -> None:
    result = CliRunner().invoke(main, ["demo", "ad-counter", *args, "--pace", "0.5"])
    assert result.exit_code == 2, result.output
    assert "--pace paces the clients that decide locally" in result.output
    assert f"this run is {this}" in result.output


def test_the_demo_refuses_a_pace_out_of_range() -> None:
    result = CliRunner().invoke(main, ["demo", "ad-counter", "--pace", "0"])
    assert result.exit_code == 2
    assert "0<x<=1" in result.output


def test_loadgen_refuses_pace_with_bounded_and_pace_without_near(tmp_path: Path) -> None:
    ring = str(tmp_path / "missing-ring")
    base = ["loadgen", "--url", "http://127.0.0.1:9/v1/ws", "--keys", ring]
    bounded = CliRunner().invoke(main, [*base, "--bounded", "--pace", "0.3"])
    assert bounded.exit_code == 2
    assert "not with --bounded" in bounded.output
    no_near = CliRunner().invoke(main, [*base, "--near", "0"])
    assert no_near.exit_code == 2
    assert "needs --near above 0" in no_near.output
    # At its default, --pace gives way to --bounded: the next complaint is the missing ring.
    default = CliRunner().invoke(main, [*base, "--bounded"])
    assert default.exit_code == 1
    assert "key ring" in default.output
