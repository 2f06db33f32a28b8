"""``lasp-streams acls MODULE[:ATTR]``: print, or apply, the Kafka ACLs each role of a topology
needs (:mod:`lasp_streams.runtime.kafka.acls`)."""

from __future__ import annotations

import asyncio
import dataclasses
import shlex

import click

from lasp_streams.cli_config import KafkaFlags, kafka_options
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.acls import (
    ROLES,
    AclBinding,
    Principals,
    apply_acls,
    plan_acls,
    render_acls,
)
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["acls", "apply_bindings"]


def _principals(values: tuple[str, ...]) -> Principals:
    given: dict[str, str] = {}
    for value in values:
        role, sep, principal = value.partition("=")
        if not sep or role not in ROLES:
            raise click.BadParameter(
                f"{value!r}: write ROLE=PRINCIPAL with ROLE one of {', '.join(ROLES)} "
                "(e.g. device=User:gateway)",
                param_hint="--principal",
            )
        given[role] = principal if ":" in principal else f"User:{principal}"
    try:
        return dataclasses.replace(Principals(), **given)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--principal") from None


async def apply_bindings(settings: KafkaSettings, bindings: list[AclBinding]) -> int:
    """Create ``bindings`` through an admin client of ``settings``; how many were sent."""
    admin = await clients.start(clients.admin(settings), settings, "applying ACLs")
    try:
        return await apply_acls(admin, bindings)
    finally:
        await admin.close()


@click.command()
@click.argument("topology_ref", metavar="MODULE[:ATTR]")
@click.option("--name", default=None, help="The name the topology runs under [default: its own].")
@click.option(
    "--principal",
    "principal_values",
    multiple=True,
    metavar="ROLE=PRINCIPAL",
    help=f"The principal of a role ({', '.join(ROLES)}); repeatable. Default: User:lasp-ROLE.",
)
@click.option(
    "--device-writes",
    multiple=True,
    metavar="VARIABLE",
    help="A declared variable devices write (repeatable) [default: the client-checked ones].",
)
@click.option(
    "--role", "only_roles", multiple=True, type=click.Choice(ROLES), help="Only these roles."
)
@click.option(
    "--kafka-acls",
    "as_commands",
    is_flag=True,
    help="Print kafka-acls.sh commands instead of a readable list.",
)
@click.option("--apply", is_flag=True, help="Create the bindings on the cluster (as its admin).")
@kafka_options
def acls(
    topology_ref: str,
    name: str | None,
    principal_values: tuple[str, ...],
    device_writes: tuple[str, ...],
    only_roles: tuple[str, ...],
    as_commands: bool,
    apply: bool,
    kafka: KafkaFlags,
) -> None:
    """The ACLs each role needs on a topology's topics, groups and transactional ids.

    Roles: device (gateway or devices: writes only client deltas), worker (agents), sink
    (billing and trigger actions), auditor (read only) and admin. With --apply they are created
    on the cluster through the admin client of the connection flags (its principal needs ALTER
    on the cluster, usually a super user); applying twice is harmless.
    """
    from lasp_streams.runtime.kafka.worker import load_topology

    topology = load_topology(topology_ref)
    bindings = plan_acls(
        topology,
        principals=_principals(principal_values),
        name=name,
        device_writes=device_writes or None,
        roles=only_roles or ROLES,
    )
    if as_commands:
        for binding in bindings:
            click.echo(
                shlex.join(
                    ["kafka-acls.sh", "--bootstrap-server", "BROKER", *binding.kafka_acls_args()]
                )
            )
    else:
        click.echo(render_acls(bindings))
    if apply:
        settings = kafka.settings()
        count = asyncio.run(apply_bindings(settings, bindings))
        click.echo(f"applied {count} ACL binding(s) at {settings.bootstrap_servers}", err=True)
