"""``lasp-streams audit | billing export | dlq show``: reading a deployed topology's record.

Registered in :mod:`lasp_streams.cli`; the reading is :mod:`lasp_streams.audit_kafka`, the
checking :mod:`lasp_streams.audit`. All three are read-only.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lasp_streams import codec
from lasp_streams.audit_kafka import AuditReport, open_reader, parse_bound, read_topic, run_audit
from lasp_streams.cli_config import KafkaFlags
from lasp_streams.cli_deploy import load_plan, topology_options
from lasp_streams.errors import CodecError, LaspError
from lasp_streams.records import BillingEvent
from lasp_streams.runtime.kafka.dlq import parse_headers
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import billing_topic, dlq_topic

__all__ = ["audit", "billing", "dlq"]

#: Long topics get a progress bar (on a terminal); short ones finish before it would draw.
_PROGRESS_FROM = 100_000
_MAX_SHOWN = 200


@click.command()
@topology_options
@click.option("--from", "start", metavar="TIME|OFFSET", default=None, help="Replay from here.")
@click.option("--to", "end", metavar="TIME|OFFSET", default=None, help="Replay up to here.")
@click.option(
    "--trust-all",
    is_flag=True,
    help="The workers ran with --trust-all: join client deltas without the actor check.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the report as JSON to this file ('-': standard output, no table).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Processes replaying the deltas, partitions dealt out (default: the CPU count).",
)
def audit(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    start: str | None,
    end: str | None,
    trust_all: bool,
    json_path: Path | None,
    jobs: int | None,
) -> None:
    """Replay a deployed topology's delta topics and hold its live state and billing to them.

    Read-only: joins no consumer group, commits nothing, read_committed, writes nothing.
    Rebuilds every variable by joins and compares it with the state topic; re-derives each
    threshold crossing and reconciles the billing topic with them (every event justified by
    the replayed counter, every crossing billed exactly once, nothing unexplained). Prints
    per key of each trigger (per ad): gross count, minimum, overcount, when it crossed, the
    billing event and its amount; dead letters by reason. TIME is ISO 8601 (UTC if no zone),
    OFFSET a number applied to every partition. Exits 1 on any mismatch.
    """
    plan, settings = load_plan(topology_ref, kafka, partitions, name)
    assert plan.worker.graph is not None
    try:
        lower, upper = parse_bound(start), parse_bound(end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    to_stdout = json_path == Path("-")
    console = Console(stderr=to_stdout)
    with Progress(
        TextColumn("replaying deltas"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, visible=total >= _PROGRESS_FROM)

        try:
            report = asyncio.run(
                run_audit(
                    plan.worker.graph,
                    settings,
                    name=plan.name,
                    start=lower,
                    end=upper,
                    progress=progress,
                    checked=() if trust_all else None,
                    jobs=jobs,
                )
            )
        except LaspError as exc:
            raise click.ClickException(str(exc)) from None
    if json_path is not None:
        text = json.dumps(report.as_json(), indent=2, default=str)
        if to_stdout:
            click.echo(text)
        else:
            json_path.write_text(text + "\n")
    if not to_stdout:
        render(report, console)
        if json_path is not None:
            console.print(f"JSON report: {json_path}")
    if not report.ok:
        sys.exit(1)


def render(report: AuditReport, console: Console) -> None:
    """The report as tables, then the verdict."""
    window = f"from {report.start} to {report.end}"
    console.print(
        f"[bold]audit of {report.topology!r}[/bold] ({window}): {report.deltas:,} deltas "
        f"replayed in {report.seconds:.2f}s ({report.deltas_per_second:,.0f}/s)"
    )
    states = Table(title="variables: live state topic vs replayed deltas")
    for column in ("variable", "records", "applied", "refused", "keys", "equal", "difference"):
        states.add_column(column, justify="left" if column == "variable" else "right")
    for replay, cmp in report.variables:
        states.add_row(
            replay.variable,
            f"{replay.records:,}",
            f"{replay.applied:,}",
            f"{replay.refused:,}",
            f"{cmp.keys:,}",
            f"{cmp.equal:,}",
            f"{cmp.difference_pct:.2f}%" if report.complete else "n/a (partial)",
        )
    console.print(states)
    if report.ads:
        ads = Table(title="per key of each trigger (per ad)")
        for column in ("key", "gross", "minimum", "overcount", "crossed (UTC)", "billing event"):
            ads.add_column(column, justify="left" if column == "key" else "right")
        ads.add_column("amount", justify="right")
        for line in report.ads:
            data = line.as_json()
            ads.add_row(
                line.key,
                _num(line.gross),
                _num(line.minimum),
                _num(line.overcount),
                _clock(line.crossing.timestamp_ms) if line.crossing is not None else "-",
                data["billing_event_id"] or "-",
                _num(data["amount"]),
            )
        console.print(ads)
    console.print(f"billing records: {report.billing_records:,}")
    if report.dlq:
        dead = Table(title="dead letters")
        for column in ("variable", "reason", "records"):
            dead.add_column(column)
        for (var, reason), count in sorted(report.dlq.items()):
            dead.add_row(var, reason, f"{count:,}")
        console.print(dead)
    else:
        console.print("dead letters: none")
    for warning in report.warnings + report.billing.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for problem in report.problems[:_MAX_SHOWN]:
        console.print(f"[red]MISMATCH[/red] {problem}", soft_wrap=True)
    if len(report.problems) > _MAX_SHOWN:
        console.print(f"... and {len(report.problems) - _MAX_SHOWN} more (see --json)")
    if report.ok:
        console.print("[green]OK[/green]: the live state and billing match the replay")
    else:
        console.print(f"[red]FAILED[/red]: {len(report.problems)} mismatch(es)")


def _clock(ms: int) -> str:
    """A crossing's time of day in UTC, to the millisecond (the JSON has the full date)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


# -- billing export ------------------------------------------------------------------------


async def _read(settings: KafkaSettings, name: str, topic: str) -> list[Any]:
    from lasp_streams.runtime.kafka.reader import partitions_of

    consumer = await open_reader(settings, name)
    try:
        count = len(await partitions_of(settings, topic, timeout=10))
        _, batches = await read_topic(consumer, topic, count)
        return [record async for batch in batches for record in batch]
    finally:
        await consumer.stop()


@click.group()
def billing() -> None:
    """The billing record of a deployed topology."""


_BILLING_FIELDS = (
    "event_id",
    "topology",
    "variable",
    "trigger",
    "key",
    "value",
    "threshold",
    "threshold_kind",
    "partition",
    "offset",
    "timestamp_ms",
)


@billing.command("export")
@topology_options
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
def billing_export(
    topology_ref: str, kafka: KafkaFlags, partitions: int | None, name: str | None, fmt: str
) -> None:
    """Write every committed billing event (read_committed: an aborted transaction's records
    never appear) to standard output as CSV or JSON. An undecodable record is reported on
    standard error and fails the export (exit 1): run `lasp-streams audit` on it."""
    plan, settings = load_plan(topology_ref, kafka, partitions, name)
    try:
        records = asyncio.run(_read(settings, plan.name, billing_topic(plan.name)))
    except LaspError as exc:
        raise click.ClickException(str(exc)) from None
    rows: list[dict[str, Any]] = []
    bad = 0
    for record in records:
        try:
            event = BillingEvent.decode(record.value or b"")
        except CodecError as exc:
            click.echo(
                f"undecodable billing record {record.partition}@{record.offset}: {exc}", err=True
            )
            bad += 1
            continue
        rows.append(
            {
                "event_id": event.event_id,
                "topology": event.topology,
                "variable": event.variable,
                "trigger": event.trigger,
                "key": str(codec.key_from_kafka(event.key)),
                "value": event.value,
                "threshold": event.threshold.n,
                "threshold_kind": event.threshold.kind,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp_ms": record.timestamp,
            }
        )
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_BILLING_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
    if bad:
        sys.exit(1)


# -- dlq show ------------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """The dead letters of a deployed topology."""


@dlq.command("show")
@topology_options
@click.option("--reason", default=None, help="Only records with this reason code.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
def dlq_show(
    topology_ref: str,
    kafka: KafkaFlags,
    partitions: int | None,
    name: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Show each dead letter decoded: its reason and error, where it came from (topic,
    partition, offset), its key, and its value decoded when the codec can (else its first
    bytes in hex)."""
    plan, settings = load_plan(topology_ref, kafka, partitions, name)
    try:
        records = asyncio.run(_read(settings, plan.name, dlq_topic(plan.name)))
    except LaspError as exc:
        raise click.ClickException(str(exc)) from None
    shown = 0
    for record in records:
        info = parse_headers(record.headers or ())
        if reason is not None and info.get("reason") != reason:
            continue
        shown += 1
        entry = {
            "reason": info.get("reason", "?"),
            "variable": info.get("variable", "?"),
            "error": info.get("error", "")[:500],
            "source": f"{info.get('source.topic', '?')} partition "
            f"{info.get('source.partition', '?')} offset {info.get('source.offset', '?')}",
            "dlq_offset": f"{record.partition}@{record.offset}",
            "key": repr(codec.key_from_kafka(record.key))[:100],
            "value": _decoded(record.value),
        }
        if as_json:
            click.echo(json.dumps(entry))
        else:
            click.echo(
                f"[{entry['reason']}] {entry['variable']} from {entry['source']} "
                f"(dlq {entry['dlq_offset']}), key {entry['key']}\n"
                f"    error: {entry['error']}\n    value: {entry['value']}"
            )
    if not as_json:
        click.echo(f"{shown} dead letter(s){f' with reason {reason!r}' if reason else ''}")


def _decoded(raw: bytes | None) -> str:
    if raw is None:
        return "<no value>"
    try:
        text = repr(codec.decode(raw))
    except CodecError:
        text = f"<undecodable, {len(raw)} bytes: {raw[:32].hex()}{'...' if len(raw) > 32 else ''}>"
    return text if len(text) <= 300 else text[:297] + "..."
