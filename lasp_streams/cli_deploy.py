"""``lasp-streams deploy | describe | teardown``: a topology's Kafka footprint as a step.

Registered in :mod:`lasp_streams.cli`; the work is in :mod:`lasp_streams.deploy`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TypeVar

import click

from lasp_streams.cli_acls import apply_bindings
from lasp_streams.cli_config import KafkaFlags, kafka_options
from lasp_streams.deploy import DeployPlan, apply_plan, plan_deploy, teardown
from lasp_streams.errors import InvalidTopology, KafkaSetupError
from lasp_streams.runtime.kafka.acls import AclBinding, plan_acls, render_acls
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["deploy", "describe", "ledger_option", "teardown_command", "topology_options"]

F = TypeVar("F", bound=Callable[..., object])

#: The default of `lasp-streams worker --partitions`: a deploy and a worker must agree.
DEFAULT_PARTITIONS = KafkaSettings().delta_partitions
#: The default of `lasp-streams gateway --ledger-partitions`: a deploy and the gateways agree.
DEFAULT_LEDGER_PARTITIONS = 3


def topology_options(func: F) -> F:
    """MODULE[:ATTR], the connection flags (--bootstrap, --config, SASL/TLS), --partitions,
    --name: what names a deployed topology and how to reach its cluster."""
    func = kafka_options(func)
    for option in reversed(
        (
            click.argument("topology_ref", metavar="MODULE[:ATTR]"),
            click.option(
                "--partitions",
                type=click.IntRange(1),
                default=None,
                help="Partitions of every delta, state and crossings topic (as the workers') "
                f"[default: {DEFAULT_PARTITIONS}]. Env: LASP_STREAMS_PARTITIONS.",
            ),
            click.option(
                "--name",
                default=None,
                help="The name the topology runs under (its topics and groups) "
                "[default: its own name].",
            ),
        )
    ):
        func = option(func)
    return func


def ledger_option(func: F) -> F:
    """--ledger-partitions: the device ledger stage, part of a deployment fed by gateways."""
    return click.option(
        "--ledger-partitions",
        type=click.IntRange(0),
        default=DEFAULT_LEDGER_PARTITIONS,
        show_default=True,
        help="Partitions of the device ledger that gateways feed (`lasp-streams gateway "
        "ledger`; its topics <name>.devices and <name>.ledger and its group); the same "
        "number as the gateways' --ledger-partitions. 0: devices do not come through gateways.",
    )(func)


def load_plan(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    replication_factor: int | None = None,
    ledger_partitions: int = 0,
) -> tuple[DeployPlan, KafkaSettings]:
    """The plan and settings the options name; a bad reference is a usage error."""
    from lasp_streams.runtime.kafka.worker import load_topology

    settings = kafka.settings(partitions=partitions, replication_factor=replication_factor)
    try:
        topology = load_topology(topology_ref)
        plan = plan_deploy(topology, settings, name=name, ledger_partitions=ledger_partitions)
        return plan, settings
    except (InvalidTopology, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@topology_options
@click.option(
    "--replication-factor",
    type=click.IntRange(1),
    default=None,
    help="Replicas of every topic created (at most the number of brokers) [default: 1].",
)
@ledger_option
@click.option("--dry-run", is_flag=True, help="Print the plan and what exists; create nothing.")
@click.option(
    "--acls",
    "with_acls",
    is_flag=True,
    help="Also print the ACLs each role needs (default principals User:lasp-ROLE; see "
    "`lasp-streams acls` to choose them) and, unless --dry-run, create them (as the admin).",
)
def deploy(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    replication_factor: int | None,
    ledger_partitions: int,
    dry_run: bool,
    with_acls: bool,
) -> None:
    """Create a topology's topics (with their configs) and print the plan: topics, consumer
    groups, how binary steps' inputs meet, what is broadcast.

    Existing topics are checked, never changed: if one cannot serve the plan (another
    partition count or cleanup policy) nothing is created, and each such topic is printed with
    the command that fixes it (exit status 1). With --dry-run nothing is created at all and
    the cluster is not contacted.
    """
    plan, settings = load_plan(
        topology_ref, kafka, partitions, name, replication_factor, ledger_partitions
    )
    click.echo(plan.describe())
    bindings: list[AclBinding] = []
    if with_acls:
        from lasp_streams.runtime.kafka.worker import load_topology

        bindings = plan_acls(load_topology(topology_ref), name=plan.name)
        click.echo(render_acls(bindings))
    if dry_run:
        click.echo(f"dry run: nothing created ({len(plan.topics)} topics planned)")
        return
    try:
        report = asyncio.run(apply_plan(plan, settings, ref=topology_ref))
    except KafkaSetupError as exc:
        raise click.ClickException(str(exc)) from None
    if report.mismatches:
        for status in report.mismatches:
            click.echo(f"incompatible: {status.problem}\n  fix: {status.fix}", err=True)
        raise click.ClickException(
            f"{len(report.mismatches)} existing topic(s) cannot serve this plan; nothing created"
        )
    kept = len(plan.topics) - len(report.created)
    click.echo(
        f"deployed {plan.name!r} on {settings.bootstrap_servers}: "
        f"{len(report.created)} topic(s) created, "
        f"{kept} already there and compatible"
    )
    if bindings:
        try:
            count = asyncio.run(apply_bindings(settings, bindings))
        except KafkaSetupError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"applied {count} ACL binding(s)")


@click.command()
@topology_options
@ledger_option
@click.option("--mermaid", "fmt", flag_value="mermaid", help="A Mermaid flowchart.")
@click.option("--json", "fmt", flag_value="json", help="The plan as JSON.")
def describe(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    ledger_partitions: int,
    fmt: str | None,
) -> None:
    """Describe a topology without touching Kafka: its graph and its Kafka plan (text), a
    Mermaid flowchart (--mermaid) or JSON (--json)."""
    plan, _ = load_plan(topology_ref, kafka, partitions, name, None, ledger_partitions)
    if fmt == "mermaid":
        click.echo(plan.mermaid())
    elif fmt == "json":
        click.echo(json.dumps(plan.as_json(), indent=2))
    else:
        assert plan.worker.graph is not None
        click.echo(plan.worker.graph.describe())
        click.echo(plan.describe())


@click.command("teardown")
@topology_options
@ledger_option
@click.option("--yes", is_flag=True, help="Delete without asking.")
def teardown_command(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    ledger_partitions: int,
    yes: bool,
) -> None:
    """Delete a topology's topics and consumer groups (its data, billing record included,
    and its committed offsets). Stop its workers first: a group with members is kept."""
    plan, settings = load_plan(topology_ref, kafka, partitions, name, None, ledger_partitions)
    if not yes:
        click.confirm(
            f"delete the {len(plan.topics)} topics and {len(plan.groups)} consumer groups of "
            f"{plan.name!r} on {settings.bootstrap_servers}, billing events included?",
            abort=True,
        )
    try:
        report = asyncio.run(teardown(plan, settings))
    except KafkaSetupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"deleted {len(report.topics)} topic(s) and {len(report.groups)} consumer group(s) "
        f"of {plan.name!r}"
    )
    for group, why in report.failed_groups.items():
        click.echo(f"kept group {group}: {why}", err=True)
    if any("members" in why for why in report.failed_groups.values()):
        raise click.ClickException("some consumer groups still have members; stop the workers")
