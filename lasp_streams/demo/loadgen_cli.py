"""``lasp-streams loadgen …``: drive simulated devices at gateways (:mod:`.loadgen`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lasp_streams.cli_config import given, loop_option
from lasp_streams.runtime.loops import run as run_on

__all__ = ["loadgen"]


@click.command()
@click.option(
    "--url",
    "urls",
    multiple=True,
    required=True,
    help="A gateway's WebSocket URL, http://HOST:PORT/v1/ws (repeatable).",
)
@click.option(
    "--keys",
    "keys_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The gateways' key ring (the generator plays every device).",
)
@click.option("--topology", "topology_ref", default="topologies.ad_counter", show_default=True)
@click.option(
    "--mode", type=click.Choice(["clients", "flood"]), default="clients", show_default=True
)
@click.option("--devices", type=click.IntRange(1), default=1_000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=64.0,
    show_default=True,
    help="clients: views per second per device.",
)
@click.option(
    "--flush-interval", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True
)
@click.option(
    "--seconds",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="At most this long.",
)
@click.option(
    "--min-impressions",
    type=click.IntRange(1),
    default=50_000,
    show_default=True,
    help="clients: the contract minimum when a contract names none.",
)
@click.option("--key", default="rovio-0", show_default=True, help="flood: the ad flushed.")
@click.option(
    "--window",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="flood: flushes in flight per device.",
)
@click.option(
    "--op",
    type=click.Choice(["flush", "ping"]),
    default="flush",
    show_default=True,
    help="flood: what each frame asks (ping: auth and checks only, no Kafka).",
)
@click.option("--prefix", default="dev", show_default=True, help="Device ids: PREFIX-<i>.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--step",
    type=click.FloatRange(0.001),
    default=0.01,
    show_default=True,
    help="clients: seconds between a device's wake-ups.",
)
@click.option(
    "--hear-at-sync",
    is_flag=True,
    help="clients: merge the gateway's pushes only when a device syncs, not as they arrive "
    "(a benchmark baseline: how devices behaved before EdgeClient.hear).",
)
@click.option(
    "--bounded",
    is_flag=True,
    help="clients: count only with rights the gateway leases (the gateway runs with "
    "--bounded, an escrow grants it rights); a view refused for want of rights goes to "
    "another ad the device holds rights for.",
)
@click.option(
    "--near",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.05,
    show_default=True,
    help="clients: the last part of an ad's minimum (a fraction) in which a device flushes "
    "at once, and paces its views with --pace.",
)
@click.option(
    "--pace",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="clients: within --near of an ad's minimum, a device shows the ad in only this "
    "fraction of the slots it would (the other slots go to ads not that near, or to none); "
    "1: no pacing. Lower: less overcount, the last part of each minimum filled more slowly.",
)
@loop_option
def loadgen(
    urls: tuple[str, ...],
    keys_path: Path,
    topology_ref: str,
    mode: str,
    devices: int,
    rate: float,
    flush_interval: float,
    seconds: float,
    min_impressions: int,
    key: str,
    window: int,
    op: str,
    prefix: str,
    seed: int,
    step: float,
    hear_at_sync: bool,
    bounded: bool,
    near: float,
    pace: float,
    loop: str,
) -> None:
    """Simulated devices over real sockets; prints a JSON report on stdout."""
    if bounded:
        if pace < 1 and given("pace"):
            raise click.UsageError(
                "--pace paces devices that decide locally: not with --bounded (leased rights "
                "bound a bounded device's views)"
            )
        pace = 1.0
    if pace < 1 and not near > 0:
        raise click.UsageError(
            "--pace below 1 paces the views near an ad's minimum: it needs --near above 0 "
            "(--pace 1: no pacing)"
        )
    import resource

    from lasp_streams.demo.loadgen import flood, run_clients
    from lasp_streams.gateway.keys import KeyRingError, load_keyring
    from lasp_streams.runtime.kafka.worker import load_topology

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        ring = load_keyring(keys_path)
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    if mode == "flood":
        report = run_on(
            flood(
                urls,
                ring,
                devices=devices,
                seconds=seconds,
                key=key,
                window=window,
                prefix=prefix,
                op=op,
            ),
            loop,
        )
    else:
        report = run_on(
            run_clients(
                urls,
                ring,
                load_topology(topology_ref),
                devices=devices,
                rate=rate,
                flush_interval=flush_interval,
                seconds=seconds,
                default_minimum=min_impressions,
                prefix=prefix,
                seed=seed,
                step=step,
                hear=not hear_at_sync,
                bounded=bounded,
                near=near,
                pace=pace,
            ),
            loop,
        )
    click.echo(json.dumps(report.summary()))
