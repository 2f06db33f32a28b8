"""Before a worker hands the process to faust: reach the cluster and declare the topics once.

A wrong address, a refused login, an untrusted certificate, a missing ACL or a topic with
another partition count then fails here as one :class:`~lasp_streams.errors.KafkaSetupError`
line (``lasp-streams`` prints it and exits 1), instead of inside faust's worker, which logs
every retry with a traceback.
"""

from __future__ import annotations

import asyncio
import logging

from lasp_streams.dataflow.topology import Topology
from lasp_streams.errors import KafkaSetupError, KafkaUnreachable
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.patience import unreachable
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import ensure_topics, plan_topics

__all__ = ["preflight"]


async def _declare(topology: Topology, settings: KafkaSettings, name: str | None) -> list[str]:
    from lasp_streams.runtime.kafka.worker import plan_worker

    plan = plan_worker(topology, name=name)
    specs = plan_topics(plan.topology, plan.topic_variables, settings, windowed=plan.windowed)
    admin = await clients.start(
        clients.admin(settings), settings, f"declaring the topics of {plan.topology!r}"
    )
    try:
        return await ensure_topics(settings, specs, admin=admin)
    finally:
        await admin.close()


def preflight(
    topology: Topology, settings: KafkaSettings, *, name: str | None = None, quiet: bool = True
) -> list[str]:
    """Connect with ``settings`` and create or check the topics of ``topology`` (run under
    ``name``); returns the topics it created. ``quiet`` hides aiokafka's own log lines
    meanwhile: a failure is reported once, by the exception."""
    library = logging.getLogger("aiokafka")
    propagate = library.propagate
    # clients.start keeps what aiokafka logs for its one-line message; not propagating keeps
    # the same lines from also reaching the root logger (or Python's last-resort printer).
    library.propagate = propagate and not quiet
    silence = logging.NullHandler()  # else Python's last-resort handler prints them
    library.addHandler(silence)
    try:
        return asyncio.run(_declare(topology, settings, name))
    except KafkaSetupError:
        raise
    except Exception as exc:
        # A broker that goes away after the connection (killed during the declaration):
        # aiokafka raises its own errors (NodeNotReadyError, ...), which mean "wait", not "fix
        # your configuration".
        if unreachable(exc):
            raise KafkaUnreachable(
                f"Kafka at {settings.bootstrap_servers} stopped answering while the topics "
                f"were declared: {type(exc).__name__}: {exc}"
            ) from exc
        raise
    finally:
        library.removeHandler(silence)
        library.propagate = propagate
