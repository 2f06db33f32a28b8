"""A topology describes itself: a text listing and a Mermaid flowchart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from lasp_streams.dataflow.operators import describe_fn
from lasp_streams.dataflow.steps import (
    BinaryStep,
    BindToStep,
    DeclareStep,
    FoldStep,
    Step,
    StreamStep,
    TriggerStep,
    UnaryStep,
    Var,
    WindowStep,
)
from lasp_streams.lattices.base import describe_type
from lasp_streams.lattices.threshold import Threshold

__all__ = ["Graph", "describe", "mermaid", "step_label"]


class Graph(Protocol):
    """What drawing needs of a :class:`~lasp_streams.dataflow.topology.Topology` (a protocol,
    so that the topology can draw itself without this module importing it)."""

    @property
    def name(self) -> str: ...

    @property
    def variables(self) -> Mapping[str, Var]: ...

    @property
    def steps(self) -> tuple[Step, ...]: ...

    def step(self, step_id: str) -> Step: ...


_BINARY_PLACEMENT = {
    "union": "either input's delta passes through",
    "intersection": "each side's delta meets the other side's state (co-located per key)",
    "product": "each side's delta meets the other side's state (co-located per key)",
}


def describe(topology: Graph) -> str:
    """One line per step: id, what it makes and from what."""
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


def mermaid(topology: Graph) -> str:
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


def step_label(step: Step) -> str:
    """One line describing a step (the lines of :func:`describe`)."""
    if isinstance(step, DeclareStep):
        return "declare_dynamic (node-local)" if step.dynamic else "declare"
    if isinstance(step, WindowStep):
        w = step.window
        shape = "tumbling" if w.tumbling else f"sliding every {w.slide}"
        return f"window size {w.size} {shape}, grace {w.grace}"
    if isinstance(step, UnaryStep):
        return f"{step.kind}({step.source}, {describe_fn(step.fn)})"
    if isinstance(step, BinaryStep):
        return f"{step.kind}({step.left}, {step.right})"
    if isinstance(step, FoldStep):
        return f"fold({step.source}, {describe_type(step.accumulator)}, {describe_fn(step.fn)})"
    if isinstance(step, BindToStep):
        via = "" if step.via is None else f" via {describe_fn(step.via)}"
        return f"bind_to({step.target} <- {step.source}{via})"
    if isinstance(step, StreamStep):
        return f"stream({step.var}, {describe_fn(step.callback)})"
    threshold = (
        repr(step.threshold)
        if isinstance(step.threshold, Threshold)
        else f"per key: {describe_fn(step.threshold)}"
    )
    watch = f", watching {', '.join(step.watch)}" if step.watch else ""
    return f"trigger({step.var}, {threshold}, {describe_fn(step.action)}{watch})"
