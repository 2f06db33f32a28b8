"""The Kafka runtime: variables as delta + compacted state topics, agents that join deltas in
batches, the trusted exactly-once sink, and the dead-letter topic.

``__all__`` is what users import (pinned by a test): :class:`KafkaRuntime` and
:class:`KafkaSettings`, the worker entry points, and the readers of what a topology writes
(billing events, closed windows). Everything else is imported from its module.

Modules:

- :mod:`.settings` — one frozen settings object (cluster, security, topic shapes, batching);
- :mod:`.clients` — the one place that builds Kafka clients (and faust's connection options);
- :mod:`.acls` — the ACLs each role needs on a topology's topics, groups and transactional ids;
- :mod:`.topics` — topic names, the topic plan, declaring and checking topics;
- :mod:`.reader` — read a topic to its end;
- :mod:`.host` — the one transactional partition host: consume, apply, write, commit, fence;
- :mod:`.core_host` — the host of slots that each run a replica core (recovery, re-checks);
- :mod:`.agent` — the variable agent: one variable's partitions on the core host;
- :mod:`.outbox` — what a core's effects mean on Kafka: the records to write;
- :mod:`.operators` — operator steps: co-partitioned keyed slots, a single-owner non-keyed slot;
- :mod:`.windows` — windowed variables on Kafka, reading closed-window records;
- :mod:`.sink` — the trusted sink;
- :mod:`.ledger` — the device ledger on the partition host (totals into per-partition entries);
- :mod:`.fencing` — what to do with a fenced transactional producer;
- :mod:`.dlq` — dead letters;
- :mod:`.follower` — a live replica of a variable outside the groups (broadcast, reads);
- :mod:`.streams` — ``stream`` callbacks at the sink process;
- :mod:`.window_callbacks` — ``on_close``/``on_late`` callbacks at the sink process;
- :mod:`.runtime` — :class:`KafkaRuntime`, the LocalRuntime's API on Kafka, and ``run``;
- :mod:`.plan` — a Topology's plan on Kafka: which agents a worker runs;
- :mod:`.worker` — the faust host of a plan (the only module that imports faust);
- :mod:`.process` — one agent or the sink as a process;
- :mod:`.patience` — waiting out a Kafka outage instead of exiting; the shutdown deadline;
- :mod:`.quiet` — aiokafka's repeated error logs rate-limited (an outage is a few lines);
- :mod:`.metrics_http` — a worker's metrics over HTTP.

Every agent runs the one engine, :mod:`lasp_streams.runtime.core` (the LocalRuntime's), and
only moves bytes; the records between agents and the sink are :mod:`lasp_streams.records`.
"""

from lasp_streams.records import BillingEvent, ClosedWindow
from lasp_streams.runtime.kafka.plan import plan_worker
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import TopicMismatch
from lasp_streams.runtime.kafka.windows import read_closed_windows
from lasp_streams.runtime.kafka.worker import (
    build_faust_app,
    load_topology,
    run_faust_worker,
    run_worker,
)

__all__ = [
    "BillingEvent",
    "ClosedWindow",
    "KafkaRuntime",
    "KafkaSettings",
    "TopicMismatch",
    "build_faust_app",
    "load_topology",
    "plan_worker",
    "read_billing_events",
    "read_closed_windows",
    "run_faust_worker",
    "run_worker",
]
