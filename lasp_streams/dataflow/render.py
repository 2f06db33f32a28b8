"""A topology describes itself: a text listing and a Mermaid flowchart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lasp_streams.dataflow.steps import BinaryStep, BindToStep, StreamStep, TriggerStep

if TYPE_CHECKING:
    from lasp_streams.dataflow.topology import Topology

__all__ = ["describe", "mermaid"]

_BINARY_PLACEMENT = {
    "union": "either input's delta passes through",
    "intersection": "each side's delta meets the other side's state (co-located per key)",
    "product": "each side's delta meets the other side's state (co-located per key)",
}


def describe(topology: Topology) -> str:
    """One line per step: id, what it makes and from what."""
    from lasp_streams.dataflow.topology import step_label

    lines = [
        f"topology {topology.name!r}: {len(topology.variables)} variables, "
        f"{len(topology.steps)} steps"
    ]
    width = max((len(s.id) for s in topology.steps), default=0)
    for step in topology.steps:
        out = ""
        if step.output is not None and step.output in topology.variables:
            var = topology.variables[step.output]
            if var.id == step.id:
                out = f" -> {var.type_name}{' [keyed]' if var.keyed else ''}"
        note = ""
        if isinstance(step, BinaryStep):
            note = f"  ({_BINARY_PLACEMENT[step.kind]})"
        lines.append(f"  {step.id.ljust(width)}  {step_label(step)}{out}{note}")
    return "\n".join(lines)


def _node_id(name: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in name)


def _text(s: str) -> str:
    return s.replace('"', "'")


def mermaid(topology: Topology) -> str:
    """A ``flowchart LR``: variables as nodes (declared: stadium, derived: box with the
    operator), edges from inputs; streams and triggers as side nodes."""
    lines = ["flowchart LR"]
    for var in topology.variables.values():
        step = topology.step(var.id)
        keyed = " [keyed]" if var.keyed else ""
        label = _text(f"{var.id}: {var.type_name}{keyed}")
        node = _node_id(var.id)
        if var.kind == "declared":
            lines.append(f'  {node}(["{label}"])')
        elif var.kind == "window":
            lines.append(f'  {node}[/"{label}"/]')
        else:
            lines.append(f'  {node}["{_text(step.kind)}<br/>{label}"]')
    for step in topology.steps:
        if isinstance(step, BindToStep):
            lines.append(f"  {_node_id(step.source)} -. bind_to .-> {_node_id(step.target)}")
        elif isinstance(step, StreamStep | TriggerStep):
            side = _node_id(step.id)
            lines.append(f'  {side}{{{{"{_text(step.kind + ": " + step.id)}"}}}}')
            lines.append(f"  {_node_id(step.var)} --> {side}")
            if isinstance(step, TriggerStep):
                for watched in step.watch:
                    lines.append(f"  {_node_id(watched)} -.-> {side}")
        elif step.output is not None and step.inputs:
            for dep in step.inputs:
                lines.append(f"  {_node_id(dep)} --> {_node_id(step.output)}")
    return "\n".join(lines)
