"""``lasp-streams gateway …``: run a gateway, manage device keys, run the device ledger.

``lasp-streams gateway MODULE[:ATTR] --bootstrap … --listen 127.0.0.1:PORT`` runs a gateway
(the ``serve`` subcommand, implied when the first argument is not a subcommand).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import click

from lasp_streams.cli_config import KafkaFlags, kafka_options, loop_option
from lasp_streams.runtime.loops import run as run_on

__all__ = ["gateway"]

_DEFAULT_KEYS = "gateway-keys.json"


class _DefaultToServe(click.Group):
    """``gateway MODULE …`` means ``gateway serve MODULE …``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToServe)
def gateway() -> None:
    """The client gateway: `gateway MODULE[:ATTR] --listen …`, `gateway keys …`,
    `gateway ledger …`."""


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _keys_of(ref: str) -> Any:
    import importlib

    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"--keys-of {ref!r}: {exc}") from None


@gateway.command("serve")
@click.argument("topology_ref", metavar="MODULE[:ATTR]")
@kafka_options
@click.option("--listen", default="127.0.0.1:8470", show_default=True, help="HOST:PORT")
@click.option("--name", default=None, help="The topology's topic name (default: its own).")
@click.option(
    "--keys",
    "keys_path",
    type=click.Path(path_type=Path),
    default=_DEFAULT_KEYS,
    show_default=True,
    help="Key ring file (`gateway keys init`).",
)
@click.option(
    "--writes",
    multiple=True,
    default=("impressions",),
    show_default=True,
    help="A keyed GCounter variable devices may flush (repeatable).",
)
@click.option(
    "--keys-from",
    default="ads_with_contracts",
    show_default=True,
    help="The variable whose value lists the keys devices may write.",
)
@click.option(
    "--keys-of",
    default="lasp_streams.demo.simulate:ad_ids",
    show_default=True,
    help="MODULE:FUNC turning that value into keys.",
)
@click.option(
    "--partitions",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Partitions of the topology's topics.",
)
@click.option("--ledger-partitions", type=click.IntRange(1), default=3, show_default=True)
@click.option("--max-sessions", type=click.IntRange(1), default=20_000, show_default=True)
@click.option(
    "--max-total",
    type=click.IntRange(1),
    default=10**9,
    show_default=True,
    help="Largest running total one device may claim for one key.",
)
@click.option(
    "--push-budget",
    type=click.FloatRange(min=1.0),
    default=2_500.0,
    show_default=True,
    help="Frames per second this gateway pushes to its devices in all, about: pushes go out "
    "every 20 ms while few devices listen and less often as more do (up to "
    "--max-push-interval).",
)
@click.option(
    "--max-push-interval",
    type=click.FloatRange(min=0.02),
    default=0.25,
    show_default=True,
    help="Seconds between pushes at most, however many devices listen (tens of thousands of "
    "devices on one gateway need more than 0.25 to stay within --push-budget). A key that "
    "meets a trigger's threshold is pushed at once whatever the interval.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="Seconds a graceful stop may take after SIGTERM (sessions told to reconnect "
    "elsewhere, pending batches written) before the gateway exits anyway: safe, a device's "
    "flush is acknowledged only after Kafka took it, so an unacknowledged one is sent again.",
)
@click.option(
    "--bounded",
    is_flag=True,
    help="Bounded and hybrid modes: this gateway asks the escrow for impression rights and "
    "leases them to its devices (signed caps on their totals; a total beyond its lease is "
    "refused). Run the escrow with counter rights_leased (python -m "
    "lasp_streams.server.escrow_kafka --leases).",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="--bounded: a device's lease covers that many seconds of its demand rate.",
)
@loop_option
def serve(
    topology_ref: str,
    kafka: KafkaFlags,
    listen: str,
    name: str | None,
    keys_path: Path,
    writes: tuple[str, ...],
    keys_from: str,
    keys_of: str,
    partitions: int,
    ledger_partitions: int,
    max_sessions: int,
    max_total: int,
    push_budget: float,
    max_push_interval: float,
    shutdown_timeout: float,
    bounded: bool,
    lease_seconds: float,
    loop: str,
) -> None:
    """Run a gateway for MODULE[:ATTR] until Ctrl-C/SIGTERM."""
    import resource

    from prometheus_client import CollectorRegistry

    from lasp_streams.errors import InvalidTopology
    from lasp_streams.gateway.config import GatewayConfig
    from lasp_streams.gateway.metrics import GatewayMetrics
    from lasp_streams.gateway.server import Gateway
    from lasp_streams.runtime.kafka.patience import ShutdownDeadline, keep_trying
    from lasp_streams.runtime.kafka.settings import KafkaSettings
    from lasp_streams.runtime.kafka.worker import load_topology
    from lasp_streams.server.devices import DevicePolicy

    # Every device is a socket: allow as many as the system lets this process have.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = _listen(listen)
    try:
        topology = load_topology(topology_ref)
    except InvalidTopology as exc:
        raise click.ClickException(str(exc)) from None
    fn = _keys_of(keys_of)
    leases = None
    if bounded:
        from lasp_streams.gateway.rights import BoundedGateway

        if len(writes) != 1:
            raise click.UsageError("--bounded: devices write exactly one counter (--writes)")
        leases = BoundedGateway(counter=writes[0], lease_seconds=lease_seconds)
        leases.declare(topology)
    config = GatewayConfig(
        keys=keys_path,
        writable={w: (keys_from, fn) for w in writes},
        policy=DevicePolicy(max_total=max_total),
        ledger_partitions=ledger_partitions,
        max_sessions=max_sessions,
        push_budget=push_budget,
        max_push_interval=max_push_interval,
        bounded=leases,
    )
    settings = kafka.settings(base=KafkaSettings(client_id="lasp-gateway"), partitions=partitions)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        made: list[Gateway] = []

        async def started() -> Gateway:
            gw = Gateway(
                topology, settings, config, name=name, metrics=GatewayMetrics(CollectorRegistry())
            )
            made.append(gw)
            await gw.start()
            return gw

        async def discard() -> None:
            await made[-1].stop()

        # Started, or restarted, while a broker is down: wait for it, as workers do.
        gw = await keep_trying(
            started, what=f"gateway for {name or topology.name!r}", stop=stop, cleanup=discard
        )
        if gw is None:
            return
        # aiohttp waits for open sockets' handlers when it shuts down (60 s by default, and
        # thousands of sessions took longer): half the deadline, then they are cut.
        runner = web_runner(gw, shutdown_timeout=shutdown_timeout / 2)
        await runner.setup()
        site = _site(runner, host, port)
        await site.start()
        click.echo(f"gateway {gw.id} listening on http://{host}:{port} for {gw.name}", err=True)
        await stop.wait()
        deadline = ShutdownDeadline(shutdown_timeout, what=f"gateway {gw.id}")
        deadline.arm()
        click.echo(
            f"gateway {gw.id}: stopping ({len(gw.sessions)} sessions told to reconnect)", err=True
        )
        await gw.stop()
        await runner.cleanup()
        deadline.disarm()

    try:
        run_on(main(), loop)
    except OSError as exc:
        raise click.ClickException(f"gateway: {exc}") from None


def web_runner(gw: Any, *, shutdown_timeout: float = 5.0) -> Any:
    from aiohttp import web

    return web.AppRunner(
        gw.app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
    )


def _site(runner: Any, host: str, port: int) -> Any:
    from aiohttp import web

    return web.TCPSite(runner, host, port, backlog=4096)


@gateway.command("ledger")
@click.argument("topology_ref", metavar="MODULE[:ATTR]")
@kafka_options
@click.option("--name", default=None, help="The topology's topic name (default: its own).")
@click.option("--partitions", type=click.IntRange(1), default=3, show_default=True)
@click.option("--ledger-partitions", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--view-cap",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Most views one device may add per key per --cap-interval.",
)
@click.option(
    "--cap-interval", type=click.FloatRange(0.001), default=60.0, show_default=True, help="Seconds."
)
@loop_option
def ledger(
    topology_ref: str,
    kafka: KafkaFlags,
    name: str | None,
    partitions: int,
    ledger_partitions: int,
    view_cap: int,
    cap_interval: float,
    loop: str,
) -> None:
    """Run the device ledger stage (any number of processes share its partitions)."""
    from lasp_streams.runtime.kafka.ledger import LedgerAgent, ledger_topics
    from lasp_streams.runtime.kafka.patience import keep_trying
    from lasp_streams.runtime.kafka.topics import ensure_topics
    from lasp_streams.runtime.kafka.worker import load_topology
    from lasp_streams.server.ledger import ViewCap

    topology = load_topology(topology_ref)
    topic_name = name or topology.name
    settings = kafka.settings(partitions=partitions)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        what = f"device ledger of {topic_name!r}"
        # Started, or restarted, while a broker is down: wait for it (patience.keep_trying),
        # exit only on a signal or a configuration error.
        await keep_trying(
            lambda: ensure_topics(settings, ledger_topics(topic_name, settings, ledger_partitions)),
            what=f"{what}: declaring topics",
            stop=stop,
        )
        agents: list[LedgerAgent] = []

        async def run_ledger() -> None:
            agent = LedgerAgent(settings, topic_name, ViewCap(view_cap, int(cap_interval * 1000)))
            if not agents:
                click.echo(agent.describe(), err=True)
            agents.append(agent)
            runner: asyncio.Task[None] | None = None
            try:
                await agent.start()
                runner = asyncio.create_task(agent.run(stop))
                stopped = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if runner in done:
                    runner.result()  # a failed write: keep_trying decides (outage or not)
            finally:
                if runner is not None:
                    runner.cancel()
                    await asyncio.gather(runner, return_exceptions=True)
                await agent.stop()

        await keep_trying(run_ledger, what=what, stop=stop)

    run_on(main(), loop)


@gateway.group("keys")
def keys() -> None:
    """Device keys: `init`, `rotate`, `retire VERSION`, `revoke DEVICE`, `unrevoke DEVICE`,
    `secret DEVICE` (to provision a device), `show`."""


def _keys_option(func: Any) -> Any:
    return click.option(
        "--keys",
        "keys_path",
        type=click.Path(path_type=Path),
        default=_DEFAULT_KEYS,
        show_default=True,
        help="Key ring file.",
    )(func)


def _update(keys_path: Path, change: Any) -> None:
    from lasp_streams.gateway.keys import KeyRingError, load_keyring, save_keyring

    try:
        ring = change(load_keyring(keys_path))
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    save_keyring(keys_path, ring)
    click.echo(
        f"{keys_path}: current version {ring.current}, versions {sorted(ring.masters)}, "
        f"{len(ring.revoked)} revoked device(s)"
    )


@keys.command("init")
@_keys_option
def keys_init(keys_path: Path) -> None:
    """Create a new key ring (refuses to overwrite one)."""
    from lasp_streams.gateway.keys import KeyRing, save_keyring

    if keys_path.exists():
        raise click.ClickException(f"{keys_path} exists; use `gateway keys rotate` instead")
    save_keyring(keys_path, KeyRing.new())
    click.echo(f"{keys_path}: new key ring, version 1")


@keys.command("rotate")
@_keys_option
def keys_rotate(keys_path: Path) -> None:
    """Add a master key version and make it current (older versions keep working)."""
    _update(keys_path, lambda ring: ring.rotate())


@keys.command("retire")
@click.argument("version", type=int)
@_keys_option
def keys_retire(version: int, keys_path: Path) -> None:
    """Stop accepting secrets of VERSION."""
    _update(keys_path, lambda ring: ring.retire(version))


@keys.command("revoke")
@click.argument("device")
@_keys_option
def keys_revoke(device: str, keys_path: Path) -> None:
    """Refuse DEVICE from now on (gateways close its sessions within a second)."""
    _update(keys_path, lambda ring: ring.revoke(device))


@keys.command("unrevoke")
@click.argument("device")
@_keys_option
def keys_unrevoke(device: str, keys_path: Path) -> None:
    """Accept DEVICE again."""
    _update(keys_path, lambda ring: ring.unrevoke(device))


@keys.command("secret")
@click.argument("device")
@_keys_option
def keys_secret(device: str, keys_path: Path) -> None:
    """Print DEVICE's current key version and secret (hex), to provision it."""
    from lasp_streams.gateway.keys import KeyRingError, load_keyring

    try:
        ring = load_keyring(keys_path)
        click.echo(f"{ring.current} {ring.secret(device).hex()}")
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None


@keys.command("show")
@_keys_option
def keys_show(keys_path: Path) -> None:
    """Versions and revoked devices (never the keys)."""
    _update(keys_path, lambda ring: ring)
