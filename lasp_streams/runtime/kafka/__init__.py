"""The Kafka runtime: variables as delta + compacted state topics, agents that join deltas in
batches, the trusted exactly-once sink, and the dead-letter topic.

The agents run the one engine (:mod:`lasp_streams.runtime.core`) and only move bytes; the
records between them are :mod:`lasp_streams.records`.

Modules: :mod:`.settings` (one frozen settings object), :mod:`.topics` (names, plan,
declaration and checks), :mod:`.agent` (the consume-join-write-commit loop and recovery),
:mod:`.outbox` (a core's effects as the records to write), :mod:`.sink` (the trusted sink),
:mod:`.dlq` (dead letters), :mod:`.reader` (read a topic to its end), :mod:`.operators`
(operator steps: co-partitioned keyed slots, a single-owner non-keyed slot), :mod:`.windows`
(windowed variables, closed-window records), :mod:`.window_callbacks` and :mod:`.streams`
(``on_close``/``on_late`` and ``stream`` callbacks at the sink process), :mod:`.follower` (a
live replica of a variable outside the groups: broadcast of watched variables, reads),
:mod:`.runtime` (:class:`KafkaRuntime`, the LocalRuntime's API on Kafka, and ``run``),
:mod:`.worker` (a Topology's plan on Kafka; the only module that imports faust) and
:mod:`.process` (one agent or the sink as a process).
"""

from lasp_streams.records import BillingEvent, ClosedWindow, Crossing
from lasp_streams.runtime.kafka.agent import VariableAgent
from lasp_streams.runtime.kafka.dlq import DeadLetter
from lasp_streams.runtime.kafka.follower import VariableFollower
from lasp_streams.runtime.kafka.operators import OperatorAgent
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import SinkFenced, TrustedSink, read_billing_events
from lasp_streams.runtime.kafka.streams import StreamRunner
from lasp_streams.runtime.kafka.topics import (
    TopicMismatch,
    billing_topic,
    closed_topic,
    crossings_topic,
    delta_topic,
    dlq_topic,
    ensure_topics,
    plan_topics,
    state_topic,
)
from lasp_streams.runtime.kafka.window_callbacks import WindowCallbackRunner
from lasp_streams.runtime.kafka.windows import read_closed_windows
from lasp_streams.runtime.kafka.worker import (
    build_faust_app,
    load_topology,
    plan_worker,
    run_faust_worker,
    run_worker,
)

__all__ = [
    "BillingEvent",
    "ClosedWindow",
    "Crossing",
    "DeadLetter",
    "KafkaRuntime",
    "KafkaSettings",
    "OperatorAgent",
    "SinkFenced",
    "StreamRunner",
    "TopicMismatch",
    "TrustedSink",
    "VariableAgent",
    "VariableFollower",
    "WindowCallbackRunner",
    "billing_topic",
    "build_faust_app",
    "closed_topic",
    "crossings_topic",
    "delta_topic",
    "dlq_topic",
    "ensure_topics",
    "load_topology",
    "plan_topics",
    "plan_worker",
    "read_billing_events",
    "read_closed_windows",
    "run_faust_worker",
    "run_worker",
    "state_topic",
]
