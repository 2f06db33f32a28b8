"""A real Apache Kafka broker on this machine, fetched from Maven Central and run by us.

::

    from lasp_streams.localkafka import LocalKafka, ensure_jars

    ensure_jars()                        # once: Maven fetches ~45 MB into the user's cache
    broker = LocalKafka(port=9092)       # data in ~/.local/share/lasp-streams/kafka
    broker.start()                       # returns once the broker answers Metadata requests
    print(broker.bootstrap_servers)      # "127.0.0.1:9092"
    broker.stop()

Every failure (no Java, no Maven, no network, a port in use, a corrupt cache) raises
:class:`~lasp_streams.errors.KafkaSetupError` whose message names the cause and the fix.
"""

from lasp_streams.localkafka.broker import BrokerStatus, LocalKafka, port_in_use
from lasp_streams.localkafka.config import (
    DEFAULT_BROKER_PORT,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_HEAP,
    DEFAULT_HOST,
    DEFAULT_VERSION,
    POLICY_SETTINGS,
    broker_properties,
    default_cache_dir,
    default_data_dir,
)
from lasp_streams.localkafka.jars import cache_problem, ensure_jars, jars_dir, verify_jars
from lasp_streams.localkafka.probe import answers_metadata

__all__ = [
    "DEFAULT_BROKER_PORT",
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_HEAP",
    "DEFAULT_HOST",
    "DEFAULT_VERSION",
    "POLICY_SETTINGS",
    "BrokerStatus",
    "LocalKafka",
    "answers_metadata",
    "broker_properties",
    "cache_problem",
    "default_cache_dir",
    "default_data_dir",
    "ensure_jars",
    "jars_dir",
    "port_in_use",
    "verify_jars",
]
