"""The one place that builds Kafka clients: every aiokafka producer, consumer and admin client of
lasp_streams, and faust's own connection, come from a :class:`KafkaSettings` here.

So a cluster's address, security protocol, SASL credentials and TLS files are given once and
every client connects the same way; ``grep -rln "bootstrap_servers=" lasp_streams`` lists only
this module. Client ids are ``<settings.client_id>-<role>`` so a broker's logs, quotas and
request metrics tell the roles apart.

:func:`start` starts a client and turns the ways a start fails (nobody listening, a refused
password, a certificate the client does not trust, a missing ACL) into one
:class:`~lasp_streams.errors.KafkaSetupError` line that names the cluster, the cause and what to
do, instead of aiokafka's retries and tracebacks. :func:`started` is the plain form: start, and
if that fails or is cancelled close the client before re-raising, so a failed start never leaves
an unclosed aiokafka client behind (its background tasks retrying, a ResourceWarning later).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from lasp_streams.errors import ConfigError, KafkaSetupError, KafkaUnreachable
from lasp_streams.runtime.kafka.quiet import quiet_aiokafka
from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = [
    "admin",
    "connection_options",
    "consumer",
    "describe_failure",
    "faust_options",
    "producer",
    "ssl_context",
    "start",
    "started",
    "transactional_producer",
]


@functools.lru_cache(maxsize=16)
def _cached_context(
    cafile: str | None,
    certfile: str | None,
    keyfile: str | None,
    password: str | None,
    check_hostname: bool,
) -> ssl.SSLContext:
    for flag, path in (
        ("--ssl-cafile", cafile),
        ("--ssl-certfile", certfile),
        ("--ssl-keyfile", keyfile),
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"TLS file {path!r} does not exist; fix {flag}")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=cafile, certfile=certfile, keyfile=keyfile, password=password
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS files cannot be loaded (CA {cafile!r}, certificate {certfile!r}, key "
            f"{keyfile!r}): {exc.reason or exc}; they must be PEM, and the key must match the "
            "certificate (--ssl-key-password if the key is encrypted)"
        ) from exc
    context.check_hostname = check_hostname
    return context


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL connections (None otherwise); built once per set of
    files, so a hundred clients do not read the CA a hundred times."""
    if not settings.uses_tls:
        return None
    return _cached_context(
        settings.ssl_cafile,
        settings.ssl_certfile,
        settings.ssl_keyfile,
        settings.ssl_key_password,
        settings.ssl_check_hostname,
    )


def connection_options(settings: KafkaSettings, role: str) -> dict[str, Any]:
    """The keyword arguments every aiokafka client gets: where, who, and how securely."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": f"{settings.client_id}-{role}",
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    return options


def _merge(settings: KafkaSettings, role: str, options: dict[str, Any]) -> dict[str, Any]:
    quiet_aiokafka()  # an outage logs a few lines, not thousands (once per process)
    merged = connection_options(settings, role)
    clash = sorted(set(options) & {"bootstrap_servers", "security_protocol", "ssl_context"})
    if clash:
        raise TypeError(f"{clash} come from the settings, not from the caller")
    merged.update(options)
    return merged


def producer(settings: KafkaSettings, role: str, **options: Any) -> AIOKafkaProducer:
    """A producer (``acks="all"`` and the settings' ``linger_ms`` unless ``options`` say
    otherwise)."""
    options.setdefault("acks", "all")
    options.setdefault("linger_ms", settings.linger_ms)
    return AIOKafkaProducer(**_merge(settings, role, options))


def transactional_producer(
    settings: KafkaSettings, role: str, transactional_id: str, **options: Any
) -> AIOKafkaProducer:
    """A transactional, idempotent producer owning ``transactional_id`` (starting it fences an
    older owner of the id)."""
    options.setdefault("transaction_timeout_ms", settings.transaction_timeout_ms)
    return producer(
        settings, role, transactional_id=transactional_id, enable_idempotence=True, **options
    )


def consumer(
    settings: KafkaSettings,
    role: str,
    *topics: str,
    group_id: str | None = None,
    **options: Any,
) -> AIOKafkaConsumer:
    """A consumer (no auto-commit unless ``options`` say so); ``topics`` subscribes at once."""
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topics, group_id=group_id, **_merge(settings, role, options))


def admin(settings: KafkaSettings, role: str = "admin", **options: Any) -> AIOKafkaAdminClient:
    """An admin client."""
    return AIOKafkaAdminClient(**_merge(settings, role, options))


def faust_options(
    settings: KafkaSettings, sasl_credentials: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """``faust.App`` keyword arguments for the same cluster and credentials: ``broker`` and,
    when the cluster is secured, ``broker_credentials`` (faust hands them to its aiokafka
    clients). ``sasl_credentials`` is ``faust.SASLCredentials``, passed in by the one module
    that imports faust; a TLS-only cluster needs no class (faust takes an ``SSLContext``)."""
    options: dict[str, Any] = {
        "broker": ";".join(f"kafka://{entry}" for entry in settings.bootstrap_servers.split(",")),
        "broker_client_id": f"{settings.client_id}-faust",
    }
    context = ssl_context(settings)
    if settings.security_protocol.startswith("SASL_"):
        if sasl_credentials is None:
            raise TypeError("a SASL cluster needs sasl_credentials=faust.SASLCredentials")
        options["broker_credentials"] = sasl_credentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    elif context is not None:
        options["broker_credentials"] = context
    return options


class _Startable(Protocol):
    async def start(self) -> None: ...


C = TypeVar("C", bound=_Startable)


def describe_failure(
    settings: KafkaSettings, what: str, exc: BaseException, logged: Sequence[str] = ()
) -> str:
    """One line: ``what`` failed at the settings' cluster, the likely cause, and what to do.

    ``logged``: what aiokafka logged meanwhile; it names the cause (a refused login, an
    untrusted certificate) that its "Unable to bootstrap" exception leaves out."""
    where = f"Kafka at {settings.bootstrap_servers} ({settings.security_protocol})"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = " ".join([*(f"{type(e).__name__} {e}" for e in chain), *logged])
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or (
        "CERTIFICATE_VERIFY_FAILED" in names
    ):
        return (
            f"{what}: the TLS certificate of {where} is not trusted; give the CA that signed it "
            "with --ssl-cafile (LASP_STREAMS_SSL_CAFILE)"
        )
    if "Authentication failed" in names or "SaslAuthenticat" in names or "SASL" in names:
        return (
            f"{what}: {where} refused the SASL login of user {settings.sasl_username!r} "
            f"({settings.sasl_mechanism}); check the username and password "
            "(--sasl-username, LASP_STREAMS_SASL_PASSWORD) and the mechanism"
        )
    if "Authorization" in names or "authorized" in names.lower():
        return (
            f"{what}: {where} denied it to user {settings.sasl_username!r} ({text}); grant the "
            "role's ACLs (lasp-streams acls MODULE --apply)"
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) or "Unable to bootstrap" in names:
        return (
            f"{what}: cannot reach {where}; is the broker running and is --bootstrap right "
            "(lasp-streams kafka status; LASP_STREAMS_BOOTSTRAP)?"
        )
    return f"{what}: {where} failed: {text}"


async def started(client: C) -> C:
    """``await client.start()``; if that raises (a broker that does not answer, a cancellation)
    the client is closed before the error propagates. aiokafka leaves a client whose start
    failed open: its connections and tasks linger and it warns when collected."""
    try:
        await client.start()
    except BaseException:
        closer = getattr(client, "stop", None) or getattr(client, "close", None)
        if closer is not None:
            with contextlib.suppress(KafkaError, OSError, asyncio.CancelledError):
                await closer()
        raise
    return client


async def start(client: C, settings: KafkaSettings, what: str) -> C:
    """``await client.start()``, waiting at most ``settings.connect_timeout_ms``; a failure
    raises :class:`KafkaSetupError` with one line from :func:`describe_failure` (the client is
    closed first, so nothing keeps retrying in the background)."""
    capture = _Capture()
    library = logging.getLogger("aiokafka")
    library.addHandler(capture)
    try:
        with quiet_aiokafka().passing():
            await asyncio.wait_for(started(client), settings.connect_timeout_ms / 1000)
    except (TimeoutError, KafkaError, OSError, ssl.SSLError) as exc:
        message = describe_failure(settings, what, exc, capture.lines)
        # Only the "nobody answered" line says "cannot reach": waiting may cure that one.
        unreachable = " cannot reach Kafka at " in message
        raise (KafkaUnreachable if unreachable else KafkaSetupError)(message) from exc
    finally:
        library.removeHandler(capture)
    return client


class _Capture(logging.Handler):
    """Keeps what aiokafka logs while a client starts (bounded), instead of printing it: the
    failure is reported once, by :func:`start`'s exception."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 20:
            self.lines.append(record.getMessage()[:500])
