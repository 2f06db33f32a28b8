"""The ``lasp-streams`` command line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from lasp_streams import cli_audit, cli_deploy
from lasp_streams.cli_acls import acls as acls_command
from lasp_streams.cli_config import KafkaFlags, given, kafka_options
from lasp_streams.cli_config import config as config_group
from lasp_streams.cli_errors import ReadableErrors
from lasp_streams.cli_preflight import preflight
from lasp_streams.cli_windows import demo_windows
from lasp_streams.demo.loadgen_cli import loadgen
from lasp_streams.errors import KafkaSetupError, KafkaUnreachable
from lasp_streams.gateway.cli import gateway
from lasp_streams.localkafka import (
    DEFAULT_BROKER_PORT,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_HEAP,
    DEFAULT_VERSION,
    LocalKafka,
    ensure_jars,
)
from lasp_streams.localkafka.broker import DEFAULT_START_TIMEOUT_S, DEFAULT_STOP_TIMEOUT_S
from lasp_streams.localkafka.cluster import KafkaCluster, is_cluster, local_kafka
from lasp_streams.localkafka.config import CACHE_ENV, DATA_ENV, default_data_dir

F = TypeVar("F", bound=Callable[..., object])


@click.group(cls=ReadableErrors)
@click.version_option(package_name="lasp-streams")
@click.option("--verbose", is_flag=True, help="Show the traceback of a failure.")
def main(verbose: bool) -> None:
    """lasp_streams: Lasp's CRDT dataflow on Apache Kafka."""


@main.group()
@click.option("-v", "--verbose", is_flag=True, help="Also show debug messages.")
def kafka(verbose: bool) -> None:
    """A local Apache Kafka broker for development and tests.

    The broker is a single-node KRaft broker (broker and controller in one JVM) on 127.0.0.1,
    run from jars that `fetch` downloads once from Maven Central (needs Maven and Java 17+).
    Typical use: `lasp-streams kafka start`, then `status`, `logs`, and `stop`.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="lasp-streams: %(message)s",
        stream=sys.stderr,
    )


def _version_option(func: F) -> F:
    return click.option(
        "--version",
        "version",
        default=DEFAULT_VERSION,
        show_default=True,
        help="Apache Kafka version (a 4.x release on Maven Central).",
    )(func)


def _data_dir_option(func: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Where the broker keeps its storage, logs and pid file "
        f"[default: ${DATA_ENV} or {default_data_dir()}].",
    )(func)


def _cache_dir_option(func: F) -> F:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Where the jars are cached [default: ${CACHE_ENV} or ~/.cache/lasp-streams].",
    )(func)


def _fail(exc: KafkaSetupError) -> click.ClickException:
    return click.ClickException(str(exc))


@kafka.command()
@_version_option
@_cache_dir_option
@click.option("--force", is_flag=True, help="Fetch again even if the cache is complete.")
def fetch(version: str, cache_dir: Path | None, force: bool) -> None:
    """Download the broker's jars with Maven (once; later runs only verify the cache)."""
    try:
        directory = ensure_jars(version, cache_dir, force=force)
    except KafkaSetupError as exc:
        raise _fail(exc) from None
    click.echo(f"Kafka {version} jars ready in {directory}")


@kafka.command()
@_data_dir_option
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_BROKER_PORT,
    show_default=True,
    envvar="LASP_STREAMS_KAFKA_PORT",
    help="Client (broker) port on 127.0.0.1. Env: LASP_STREAMS_KAFKA_PORT.",
)
@click.option(
    "--controller-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_CONTROLLER_PORT,
    show_default=True,
    help="KRaft controller port on 127.0.0.1 (fixed once the data dir is formatted).",
)
@click.option("--heap", default=DEFAULT_HEAP, show_default=True, help="JVM maximum heap (-Xmx).")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_START_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the broker to answer metadata requests.",
)
@click.option(
    "--no-fetch",
    is_flag=True,
    help="Never run Maven: fail unless the jar cache is complete.",
)
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="More than 1: a replicated cluster (a KRaft controller on --controller-port and N "
    "brokers on --port, --port+1, ...; replication 3, min ISR 2).",
)
@_version_option
@_cache_dir_option
def start(
    data_dir: Path | None,
    port: int,
    controller_port: int,
    heap: str,
    timeout: float,
    no_fetch: bool,
    brokers: int,
    version: str,
    cache_dir: Path | None,
) -> None:
    """Start the broker in the background and wait until it serves clients.

    Starting a broker that is already running only reports it. On failure the last lines of
    the broker's log and the likely cause are printed, and no process is left behind.
    """
    try:
        if brokers > 1 or is_cluster(data_dir):
            cluster = KafkaCluster(
                data_dir,
                brokers=brokers,
                port=port,
                controller_port=controller_port,
                version=version,
                cache_dir=cache_dir,
                start_timeout=timeout,
            )
            click.echo(cluster.start(fetch=not no_fetch).describe())
            return
        broker = LocalKafka(
            data_dir,
            port=port,
            controller_port=controller_port,
            version=version,
            heap=heap,
            cache_dir=cache_dir,
            start_timeout=timeout,
        )
        status = broker.start(fetch=not no_fetch)
    except KafkaSetupError as exc:
        raise _fail(exc) from None
    click.echo(status.describe())


@kafka.command()
@_data_dir_option
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_STOP_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for a clean shutdown before SIGKILL.",
)
def stop(data_dir: Path | None, timeout: float) -> None:
    """Stop the broker started from this data directory (and nothing else)."""
    try:
        stopped = local_kafka(data_dir).stop(timeout=timeout)
    except KafkaSetupError as exc:
        raise _fail(exc) from None
    click.echo("stopped" if stopped else "not running")


@kafka.command()
@_data_dir_option
def status(data_dir: Path | None) -> None:
    """Say whether the broker runs, its version, address, pid and data directory.

    Exits with status 0 when it is running and answering, 3 otherwise.
    """
    try:
        current = local_kafka(data_dir).status()
    except KafkaSetupError as exc:
        raise _fail(exc) from None
    click.echo(current.describe())
    if not (current.running and current.answering):
        sys.exit(3)


@kafka.command()
@_data_dir_option
@click.option(
    "-n", "--lines", type=click.IntRange(1), default=50, show_default=True, help="Lines to show."
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
def logs(data_dir: Path | None, lines: int, follow: bool) -> None:
    """Show the end of the broker's log (logs/server.log in the data directory)."""
    broker = LocalKafka(data_dir)
    click.echo(broker.tail_log(lines))
    if not follow:
        return
    path = broker.log_path
    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            if path.exists() and path.stat().st_size < position:
                position = 0  # the log rolled over
            if path.exists():
                with path.open("rb") as stream:
                    stream.seek(position)
                    chunk = stream.read()
                    position = stream.tell()
                if chunk:
                    click.echo(chunk.decode("utf-8", "replace"), nl=False)
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


@main.group()
def demo() -> None:
    """Demos of lasp_streams on its reference workloads."""


@demo.command("ad-counter")
@click.option("--local", is_flag=True, help="Run in the LocalRuntime (no broker).")
@kafka_options
@click.option(
    "--ads", type=click.IntRange(1), default=10, show_default=True, help="Ads per company."
)
@click.option("--clients", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=2_000.0,
    show_default=True,
    help="Impressions per second per client (0: as fast as it can).",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(0, min_open=True),
    default=0.1,
    show_default=True,
    help="Seconds between a client's syncs.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.5,
    show_default=True,
    help="Random spread of the flush interval (fraction).",
)
@click.option(
    "--offline-prob",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Probability, at each sync, that a client goes offline.",
)
@click.option(
    "--offline-duration",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Seconds offline (mean; uniform in 0.5x..1.5x).",
)
@click.option(
    "--min-impressions",
    type=click.IntRange(1),
    default=50_000,
    show_default=True,
    help="Contract minimum of every ad.",
)
@click.option(
    "--mode",
    type=click.Choice(["lasp", "bounded", "hybrid"]),
    default="lasp",
    show_default=True,
    help="lasp: counters (overcount measured); bounded: escrow of impression rights (overcount 0); "
    "hybrid: the bulk split at once by measured rates, the tail escrowed (overcount 0).",
)
@click.option(
    "--quota",
    type=click.IntRange(1),
    default=None,
    help="Bounded mode: rights per grant [default: minimum / (4 x clients)].",
)
@click.option(
    "--pace",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="Lasp mode through the gateway: a client shows an ad within 5% of its minimum in only "
    "this fraction of its slots (1: no pacing). Lower: less overcount, each ad's last 5% "
    "filled more slowly.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=110.0,
    show_default=True,
    help="Stop after this many seconds even if ads are still active.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("ad-counter.png"),
    show_default=True,
    help="Where to write the PNG plot.",
)
@click.option("--no-plot", is_flag=True, help="Do not write the plot.")
@click.option(
    "--transport",
    type=click.Choice(["gateway", "kafka"]),
    default="gateway",
    show_default=True,
    help="Kafka mode: clients through a gateway (WebSocket, device ledger) or each with its "
    "own Kafka producer and consumer. Bounded and hybrid modes: through a gateway, the "
    "gateway holds the rights and leases them to its devices; over kafka, each client holds "
    "its own.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--keep",
    is_flag=True,
    help="Kafka mode: keep the run's topics and consumer groups (to audit it afterwards).",
)
@click.option(
    "--keep-broker",
    is_flag=True,
    help="Kafka mode without --bootstrap: leave the local broker running at the end.",
)
def ad_counter(
    local: bool,
    kafka: KafkaFlags,
    ads: int,
    clients: int,
    rate: float,
    flush_interval: float,
    jitter: float,
    offline_prob: float,
    offline_duration: float,
    min_impressions: int,
    mode: str,
    quota: int | None,
    pace: float,
    timeout: float,
    plot_path: Path,
    no_plot: bool,
    transport: str,
    seed: int,
    keep: bool,
    keep_broker: bool,
) -> None:
    """Lasp's advertisement counter end to end: edge clients view ads, the server disables
    each ad at its contract's minimum and bills it once; prints a summary and plots it.

    Exits 1 when an ad was not disabled before the timeout or an impression was lost.
    """
    import asyncio

    from lasp_streams.demo import DemoConfig, plot, render, run_local

    if local or mode != "lasp" or transport != "gateway":
        if pace < 1 and given("pace"):
            this = (
                "--local" if local else f"--mode {mode}" if mode != "lasp" else "--transport kafka"
            )
            raise click.UsageError(
                "--pace paces the clients that decide locally: Lasp mode (--mode lasp) "
                f"through the gateway (--transport gateway, not --local); this run is {this}"
            )
        pace = 1.0
    config = DemoConfig(
        ads=ads,
        clients=clients,
        rate=rate,
        flush_interval=flush_interval,
        jitter=jitter,
        offline_prob=offline_prob,
        offline_duration=offline_duration,
        min_impressions=min_impressions,
        mode="bounded" if mode == "bounded" else "hybrid" if mode == "hybrid" else "lasp",
        quota=quota,
        seed=seed,
        timeout=timeout,
        pace=pace,
    )
    resolved = kafka.resolve()
    # An address from a flag, the environment or --config names an existing cluster (with its
    # credentials); none: start the local broker.
    cluster = resolved.settings if "bootstrap_servers" in resolved.sources else None
    bootstrap = cluster.bootstrap_servers if cluster is not None else None
    where = "local mode" if local else f"Kafka at {bootstrap or 'the local broker'}"
    click.echo(
        f"ad counter, {where} ({config.mode}): {config.total_ads} ads, {clients} clients, "
        f"{rate:g} impressions/s each, minimum {min_impressions:,} ...",
        err=True,
    )
    if local:
        summary = asyncio.run(run_local(config))
    else:
        from lasp_streams.demo.kafka import run_kafka

        def progress(message: str) -> None:
            click.echo(f"lasp-streams: {message}", err=True)

        try:
            summary = asyncio.run(
                run_kafka(
                    config,
                    bootstrap=cluster,
                    keep=keep,
                    keep_broker=keep_broker,
                    progress=progress,
                    via=transport,
                )
            )
        except KafkaSetupError as exc:
            raise _fail(exc) from None
    click.echo(render(summary))
    if not no_plot:
        click.echo(f"plot: {plot(summary, plot_path)}")
    if summary.timed_out or summary.lost:
        raise click.ClickException(
            f"{'timed out before every ad was disabled' if summary.timed_out else ''}"
            f"{'; ' if summary.timed_out and summary.lost else ''}"
            f"{f'{summary.lost} impressions lost' if summary.lost else ''}"
        )


@main.command()
@click.argument("topology_ref", metavar="MODULE[:ATTR]")
@kafka_options
@click.option(
    "--partitions",
    type=click.IntRange(1),
    default=None,
    help="Partitions of every delta and state topic (must match topics that already exist) "
    "[default: 6]. Env: LASP_STREAMS_PARTITIONS.",
)
@click.option(
    "--name",
    default=None,
    help="Run the topology under this name (its topics and groups) [default: its own name].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (HOST: --metrics-host).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds (0.0.0.0: every interface, e.g. in a container).",
)
@click.option(
    "--status-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the live status page on http://HOST:PORT/ (HOST: --metrics-host).",
)
@click.option(
    "--sink/--no-sink",
    default=False,
    show_default=True,
    help="Also run the trusted sink (billing and trigger actions). Run it in ONE worker: "
    "two sinks on the same crossings partitions fence each other.",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(1),
    default=None,
    help="Replication factor of the topics it creates (3 on `kafka start --brokers 3`) "
    "[default: 1]. Env: LASP_STREAMS_REPLICATION_FACTOR.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=1.0),
    default=15.0,
    show_default=True,
    help="Seconds a graceful stop may take after SIGTERM before the worker exits anyway.",
)
@click.option(
    "--trust-all",
    is_flag=True,
    help="Accept counter deltas without a client actor header (no per-actor check).",
)
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--wait-for-kafka/--no-wait-for-kafka",
    default=True,
    show_default=True,
    help="When no broker answers at start, wait for one (a service outlives start order) "
    "or exit with status 1. A refused login, an untrusted certificate or a wrong topic "
    "always exits.",
)
def worker(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    metrics_port: int | None,
    metrics_host: str,
    status_port: int | None,
    sink: bool,
    replication_factor: int | None,
    shutdown_timeout: float,
    trust_all: bool,
    loglevel: str,
    wait_for_kafka: bool,
) -> None:
    """Run a topology's agents on Kafka in this process (a faust worker) until Ctrl-C/SIGTERM.

    MODULE[:ATTR] names the topology: a module with a `topology` or a `build()` function, or
    ATTR naming either (e.g. `topologies.ad_counter` or `mytopo:build`). Start as many workers
    as you like with the same arguments: they share the partitions (consumer groups); one of
    them should run with --sink. The plan (agents, how binary steps' inputs meet, what is
    broadcast) is printed first.
    """
    from lasp_streams.errors import InvalidTopology
    from lasp_streams.runtime.kafka.worker import load_topology, plan_worker, run_faust_worker

    try:
        topology = load_topology(topology_ref)
        checked = () if trust_all else None
        plan = plan_worker(topology, checked=checked, name=name)
    except InvalidTopology as exc:
        raise click.ClickException(str(exc)) from None
    settings = kafka.settings(partitions=partitions, replication_factor=replication_factor)
    try:
        preflight(
            topology,
            settings,
            name=name,
            quiet=not click.get_current_context().find_root().params.get("verbose"),
        )
    except KafkaUnreachable as exc:
        if not wait_for_kafka:
            raise
        # The worker's own start waits for the broker (runtime/kafka/patience.py).
        click.echo(f"{exc}\nwaiting for it (--no-wait-for-kafka exits instead)", err=True)
    click.echo(plan.describe(), err=True)
    metrics = None
    server = None
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry

        from lasp_streams.metrics import Metrics
        from lasp_streams.runtime.kafka.metrics_http import serve_metrics

        registry = CollectorRegistry()
        metrics = Metrics(registry)
        try:
            server = serve_metrics(registry, metrics_port, metrics_host)
        except OSError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"metrics: {server.url}", err=True)
    status = None
    if status_port is not None:
        from lasp_streams.web import serve_worker_status

        try:
            status = serve_worker_status(
                topology,
                settings,
                port=status_port,
                host=metrics_host,
                name=name,
                registry=metrics.registry if metrics is not None else None,
            )
        except (OSError, KafkaSetupError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"status page: {status.url}", err=True)
    # faust parses sys.argv itself: hand it only its own worker arguments.
    sys.argv = [sys.argv[0], "worker", f"--loglevel={loglevel}"]
    try:
        run_faust_worker(
            topology,
            settings,
            with_sink=sink,
            checked=checked,
            metrics=metrics,
            name=name,
            loglevel=loglevel,
            shutdown_timeout=shutdown_timeout,
        )
    finally:
        if server is not None:
            server.close()
        if status is not None:
            status.close()


# Commands that live in their own modules.
main.add_command(cli_deploy.deploy)
main.add_command(cli_deploy.describe)
main.add_command(cli_deploy.teardown_command)
main.add_command(cli_audit.audit)
main.add_command(cli_audit.billing)
main.add_command(cli_audit.dlq)
main.add_command(gateway)
main.add_command(loadgen)
main.add_command(config_group)
main.add_command(acls_command)
demo.add_command(demo_windows)
