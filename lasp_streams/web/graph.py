"""The topology graph for the status page: Graphviz ``dot`` source, rendered to SVG by ``dot``.

Graphviz is a Debian package (``graphviz``; ops/install-system-deps.sh installs it): the SVG is
drawn once per page server, on this machine, so the page needs nothing from the network. Every
variable's node has the SVG id ``var-<variable>`` and a third label line the page fills with
the variable's live value.
"""

from __future__ import annotations

import asyncio
import shutil

from lasp_streams.dataflow.steps import BindToStep, StreamStep, TriggerStep
from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import LaspError

__all__ = ["PLACEHOLDER", "render_svg", "to_dot"]

#: The third line of a variable's label, replaced live by the page's script.
PLACEHOLDER = "…"


def _q(text: str) -> str:
    """A dot string; a label's line breaks are written as dot's own ``\\n`` escape."""
    return '"' + text.replace('"', "'") + '"'


def to_dot(topology: Topology) -> str:
    """The graph in the dot language: declared variables rounded, derived ones boxed with their
    operator, triggers and streams as hexagons, watched variables dashed into their trigger."""
    lines = [
        "digraph topology {",
        '  rankdir=LR; bgcolor="transparent";',
        '  node [fontname="Helvetica", fontsize=11, style="rounded,filled", fillcolor="#f4f6fb"];',
        '  edge [color="#667085"];',
    ]
    for var in topology.variables.values():
        step = topology.step(var.id)
        kind = "" if var.kind == "declared" else f"{step.kind}: "
        keyed = " [keyed]" if var.keyed else ""
        label = f"{kind}{var.id}\\n{var.type_name}{keyed}\\n{PLACEHOLDER}"
        shape = "box" if var.kind != "declared" else "ellipse"
        lines.append(
            f"  {_q('v:' + var.id)} [id={_q('var-' + var.id)}, shape={shape}, label={_q(label)}];"
        )
    for step in topology.steps:
        if isinstance(step, BindToStep):
            lines.append(
                f"  {_q('v:' + step.source)} -> {_q('v:' + step.target)} "
                '[style=dotted, label="bind_to"];'
            )
        elif isinstance(step, StreamStep | TriggerStep):
            side = _q("s:" + step.id)
            lines.append(
                f'  {side} [id={_q("step-" + step.id)}, shape=hexagon, fillcolor="#fff4e5", '
                f"label={_q(step.kind + ': ' + step.id)}];"
            )
            lines.append(f"  {_q('v:' + step.var)} -> {side};")
            if isinstance(step, TriggerStep):
                for watched in step.watch:
                    lines.append(f"  {_q('v:' + watched)} -> {side} [style=dashed];")
        elif step.output is not None:
            for dep in step.inputs:
                lines.append(f"  {_q('v:' + dep)} -> {_q('v:' + step.output)};")
    lines.append("}")
    return "\n".join(lines)


async def render_svg(topology: Topology, timeout: float = 30.0) -> str:
    """The graph as SVG, drawn by Graphviz's ``dot``."""
    dot = shutil.which("dot")
    if dot is None:
        raise LaspError(
            "Graphviz's `dot` is not on PATH: the status page draws the topology with it. "
            "Install it with `sudo apt-get install graphviz` (ops/install-system-deps.sh does)."
        )
    process = await asyncio.create_subprocess_exec(
        dot,
        "-Tsvg",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(to_dot(topology).encode()), timeout)
    if process.returncode != 0:
        raise LaspError(f"dot failed on topology {topology.name!r}: {err.decode()[:500]}")
    return out.decode()
