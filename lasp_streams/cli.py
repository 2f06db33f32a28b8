"""The ``lasp-streams`` command line."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="lasp-streams")
def main() -> None:
    """lasp_streams: Lasp's CRDT dataflow on Apache Kafka."""
