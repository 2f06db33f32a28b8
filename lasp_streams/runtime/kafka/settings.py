"""Settings of the Kafka runtime: where the cluster is, how topics are shaped, how agents batch.

One frozen object, passed explicitly; nothing is read from the environment behind the caller's
back (:mod:`lasp_streams.config` builds one from flags, ``LASP_STREAMS_*`` variables and a TOML
file). The defaults suit the local single-node broker and a small cluster alike; production
deployments set ``replication_factor`` (and usually ``delta_partitions``) explicitly, and the
security fields: every Kafka client is built from this object by
:mod:`lasp_streams.runtime.kafka.clients`, so they all connect the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Final

from lasp_streams.errors import ConfigError
from lasp_streams.localkafka.config import DEFAULT_BROKER_PORT, DEFAULT_HOST

_DAY_MS = 24 * 60 * 60 * 1000

#: Where the local broker of ``lasp-streams kafka start`` listens: the one default address.
DEFAULT_BOOTSTRAP: Final = f"{DEFAULT_HOST}:{DEFAULT_BROKER_PORT}"

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# host: a DNS name, an IPv4 address, or an IPv6 address in brackets; then a decimal port.
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


def parse_bootstrap(value: str) -> str:
    """``value`` as aiokafka's ``host:port[,host:port...]``, or :class:`ConfigError` naming the
    bad entry.

    Accepts what faust users type (``kafka://host:port``, ``kafka://a:1;b:2``) and lists
    separated by commas or semicolons; each entry must be ``host:port`` with a port in 1-65535.

    >>> parse_bootstrap("kafka://127.0.0.1:9092;10.0.0.2:9093")
    '127.0.0.1:9092,10.0.0.2:9093'
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"bootstrap servers {value!r}: give at least one host:port")
    entries = []
    for raw in re.split(r"[,;]", value.strip()):
        entry = raw.strip()
        for scheme in ("kafka://", "plaintext://", "ssl://", "sasl_ssl://", "sasl_plaintext://"):
            if entry.lower().startswith(scheme):
                entry = entry[len(scheme) :]
        entry = entry.rstrip("/")
        if not entry:
            continue
        match = _HOST_PORT.match(entry)
        port = int(match["port"]) if match else 0
        if match is None or not 1 <= port <= 65535:
            raise ConfigError(
                f"bootstrap server {raw.strip()!r} is not host:port (e.g. 127.0.0.1:9092 or "
                "kafka://broker:9092, a port in 1-65535); fix --bootstrap or "
                "LASP_STREAMS_BOOTSTRAP"
            )
        entries.append(entry)
    if not entries:
        raise ConfigError(f"bootstrap servers {value!r}: give at least one host:port")
    return ",".join(entries)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How the Kafka runtime talks to the cluster and lays out its topics.

    Partition counts are part of a topology's identity once its topics exist: a key's deltas
    and its state must land in the same partition number of the delta and state topics, so the
    two always have ``delta_partitions`` partitions, and a cluster whose topics disagree is
    refused (see :mod:`lasp_streams.runtime.kafka.topics`).
    """

    #: ``host:port[,host:port...]``; ``kafka://host:port`` is accepted (:func:`parse_bootstrap`).
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    #: Prefix of every client id (``<prefix>-<role>``), as the broker's logs and quotas see it.
    client_id: str = "lasp-streams"
    #: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    security_protocol: str = "PLAINTEXT"
    #: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols only).
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    #: PEM file of the CA(s) that signed the brokers' certificates (default: the system's).
    ssl_cafile: str | None = None
    #: PEM client certificate and key, for brokers that authenticate clients by TLS (mTLS).
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    #: False skips the check that the broker's certificate names the host (test CAs only).
    ssl_check_hostname: bool = True
    #: How long a client waits for its first connection and metadata before giving up.
    connect_timeout_ms: int = 30_000
    #: Partitions of every delta topic and its state topic (and of the crossings topic).
    delta_partitions: int = 6
    #: Partitions of the billing and dead-letter topics (low volume).
    billing_partitions: int = 1
    dlq_partitions: int = 1
    replication_factor: int = 1
    #: How long deltas stay on their topic; a client offline longer resyncs from full state.
    delta_retention_ms: int = 7 * _DAY_MS
    #: Dead letters are kept longer than deltas so an operator can look at them.
    dlq_retention_ms: int = 30 * _DAY_MS
    #: -1 keeps billing events for ever: they are the durable record of what was billed.
    billing_retention_ms: int = -1
    #: Most records one agent batch joins before it writes states and commits.
    max_batch_records: int = 20_000
    #: How long ``getmany`` waits for records when none are buffered.
    poll_timeout_ms: int = 200
    #: aiokafka fetch sizing: large fetches keep the per-record cost down.
    max_partition_fetch_bytes: int = 4 * 1024 * 1024
    fetch_max_bytes: int = 64 * 1024 * 1024
    #: Producer batching for state, crossing and dead-letter writes.
    linger_ms: int = 5
    request_timeout_ms: int = 30_000
    #: How long the group waits for a silent agent before giving its partitions to another
    #: worker (the broker's minimum is 6 s by default). Shorter: faster takeover after a crash;
    #: longer: fewer false takeovers under load.
    session_timeout_ms: int = 10_000
    #: Transaction timeout of the trusted sink's (and transactional agents') producers.
    transaction_timeout_ms: int = 60_000
    #: Agents write each partition's batch (crossings, dead letters, states, offset commit)
    #: in one transaction, with a transactional id per partition, so a stalled former owner
    #: of a partition (a zombie) is fenced instead of writing a stale state late. Readers of
    #: state topics read with isolation_level="read_committed" (right in both modes). False:
    #: acked writes, then a plain commit (at-least-once; see the agent module for the window).
    #: Measured cost of True: none visible at 20,000-record batches.
    transactional_agents: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap_servers", parse_bootstrap(self.bootstrap_servers))
        self._check_security()
        for name in ("request_timeout_ms", "session_timeout_ms", "connect_timeout_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"KafkaSettings.{name} must be > 0, got {getattr(self, name)}")
        at_least_one = (
            "delta_partitions",
            "billing_partitions",
            "dlq_partitions",
            "replication_factor",
            "max_batch_records",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                option = "; set it with --partitions" if name == "delta_partitions" else ""
                raise ConfigError(
                    f"KafkaSettings.{name} must be at least 1, got {getattr(self, name)}{option}"
                )
        for name in ("delta_retention_ms", "dlq_retention_ms", "billing_retention_ms"):
            value = getattr(self, name)
            if value != -1 and value < 1:
                raise ConfigError(f"KafkaSettings.{name} must be > 0 or -1 (keep), got {value}")

    def _check_security(self) -> None:
        protocol = str(self.security_protocol).upper()
        object.__setattr__(self, "security_protocol", protocol)
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security protocol {self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)} (--security-protocol)"
            )
        if protocol.startswith("SASL_"):
            mechanism = str(self.sasl_mechanism or "PLAIN").upper()
            object.__setattr__(self, "sasl_mechanism", mechanism)
            if mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"SASL mechanism {self.sasl_mechanism!r} is not one of "
                    f"{', '.join(SASL_MECHANISMS)} (--sasl-mechanism)"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    f"security protocol {protocol} needs a SASL username and password "
                    "(--sasl-username, and LASP_STREAMS_SASL_PASSWORD or the config file)"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ConfigError(
                f"SASL credentials are set but the security protocol is {protocol}; use "
                "--security-protocol SASL_SSL (or SASL_PLAINTEXT)"
            )
        if not protocol.endswith("SSL") and (self.ssl_cafile or self.ssl_certfile):
            raise ConfigError(
                f"TLS files are set but the security protocol is {protocol}; use "
                "--security-protocol SSL or SASL_SSL"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError(
                "a TLS client certificate needs both --ssl-certfile and --ssl-keyfile"
            )

    @property
    def uses_tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.security_protocol.endswith("SSL")

    def __repr__(self) -> str:
        # Never print a secret by accident (logs, tracebacks, pytest's assertion rewriting).
        fields = ", ".join(
            f"{name}={'***' if name in SECRET_FIELDS and value is not None else repr(value)}"
            for name, value in ((f, getattr(self, f)) for f in self.__dataclass_fields__)
        )
        return f"KafkaSettings({fields})"

    def with_changes(self, **changes: Any) -> KafkaSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


#: Fields shown as ``***`` by ``repr`` and ``lasp-streams config show``.
SECRET_FIELDS: Final = frozenset({"sasl_password", "ssl_key_password"})
