"""``lasp-streams config show`` and the Kafka connection flags every cluster-facing command shares.

:func:`kafka_options` adds ``--config``, ``--bootstrap``, ``--security-protocol``,
``--sasl-mechanism``, ``--sasl-username``, ``--ssl-cafile``, ``--ssl-certfile``,
``--ssl-keyfile`` and ``--client-id`` to a click command and hands it one :class:`KafkaFlags`
argument named ``kafka``; ``kafka.settings(partitions=...)`` resolves the effective settings
(flags > ``LASP_STREAMS_*`` > TOML file > defaults, see :mod:`lasp_streams.config`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from lasp_streams.config import CONFIG_ENV, Resolved, env_name, resolve_settings
from lasp_streams.runtime.kafka.settings import (
    DEFAULT_BOOTSTRAP,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaSettings,
)
from lasp_streams.runtime.loops import LOOPS

__all__ = ["KafkaFlags", "config", "given", "kafka_options", "loop_option"]

F = TypeVar("F", bound=Callable[..., Any])

# (flag, settings field, help); passwords have no flag (a command line is public on the host).
_FLAGS: tuple[tuple[str, str, str], ...] = (
    (
        "--bootstrap",
        "bootstrap_servers",
        f"Kafka cluster, host:port[,host:port] or "
        f"kafka://host:port [default: {DEFAULT_BOOTSTRAP}, the local broker].",
    ),
    ("--security-protocol", "security_protocol", f"One of {', '.join(SECURITY_PROTOCOLS)}."),
    ("--sasl-mechanism", "sasl_mechanism", f"One of {', '.join(SASL_MECHANISMS)}."),
    (
        "--sasl-username",
        "sasl_username",
        f"SASL user (the password: ${env_name('sasl_password')} or the config file).",
    ),
    ("--ssl-cafile", "ssl_cafile", "PEM file of the CA that signed the brokers' certificates."),
    ("--ssl-certfile", "ssl_certfile", "PEM client certificate (mutual TLS)."),
    ("--ssl-keyfile", "ssl_keyfile", "PEM key of the client certificate."),
    ("--client-id", "client_id", "Prefix of the client ids the broker sees."),
)


def given(name: str) -> bool:
    """True when the running command's parameter ``name`` was given (on the command line or in
    the environment), not left at its default."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class KafkaFlags:
    """The connection flags a command was given (None: not given) and its ``--config``."""

    flags: dict[str, Any]
    config_file: Path | None

    def resolve(self, *, base: KafkaSettings | None = None, **more: Any) -> Resolved:
        """The effective settings and their sources; ``more`` are the command's own flags
        (``partitions=...``; None: not given); ``base`` holds the command's own defaults."""
        return resolve_settings({**self.flags, **more}, config_file=self.config_file, base=base)

    def settings(self, *, base: KafkaSettings | None = None, **more: Any) -> KafkaSettings:
        """The effective settings (see :meth:`resolve`)."""
        return self.resolve(base=base, **more).settings


def kafka_options(func: F) -> F:
    """Add the connection flags and ``--config`` to a click command; it receives ``kafka``."""
    # Parameter names follow the flags (``bootstrap``), which resolve_settings also accepts.
    names = [_param(flag) for flag, _field, _help in _FLAGS]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in names}
        kwargs["kafka"] = KafkaFlags(flags, kwargs.pop("config_file"))
        return func(*args, **kwargs)

    decorated: Any = wrapper
    for flag, field, help_text in reversed(_FLAGS):
        choices = {"security_protocol": SECURITY_PROTOCOLS, "sasl_mechanism": SASL_MECHANISMS}
        kind = click.Choice(choices[field], case_sensitive=False) if field in choices else None
        decorated = click.option(
            flag,
            _param(flag),
            type=kind,
            default=None,
            metavar="HOST:PORT" if flag == "--bootstrap" else None,
            help=f"{help_text} Env: {env_name(field)}.",
        )(decorated)
    decorated = click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"TOML file with a [kafka] table (flags > env > file > defaults). Env: {CONFIG_ENV}.",
    )(decorated)
    return decorated  # type: ignore[no-any-return]


def loop_option(func: F) -> F:
    """Add ``--loop`` (the event loop: :mod:`lasp_streams.runtime.loops`); the command receives
    ``loop``, a name for :func:`lasp_streams.runtime.loops.run`."""
    return click.option(
        "--loop",
        type=click.Choice(LOOPS),
        default="auto",
        show_default=True,
        envvar="LASP_STREAMS_LOOP",
        help="Event loop: uvloop when installed (auto), or asyncio's own. Env: LASP_STREAMS_LOOP.",
    )(func)


@click.group()
def config() -> None:
    """The effective Kafka settings and where each comes from."""


@config.command("show")
@kafka_options
@click.option(
    "--partitions",
    type=click.IntRange(1),
    default=None,
    help=f"Partitions of delta and state topics. Env: {env_name('delta_partitions')}.",
)
def show(kafka: KafkaFlags, partitions: int | None) -> None:
    """Print every setting, its value (secrets as ***) and its source: flag, env, file or
    default. Precedence: flags > LASP_STREAMS_* environment > --config file > defaults."""
    click.echo(kafka.resolve(partitions=partitions).show())
