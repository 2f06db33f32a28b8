"""Where the Kafka settings come from: flags, ``LASP_STREAMS_*`` variables, a TOML file, defaults.

Precedence, highest first (each setting is taken from the first source that gives it)::

    1. command-line flags           --bootstrap, --security-protocol, --partitions, ...
    2. environment variables        LASP_STREAMS_<FIELD>, e.g. LASP_STREAMS_SASL_PASSWORD
    3. the TOML file                --config PATH (or LASP_STREAMS_CONFIG), table [kafka]
    4. the defaults of KafkaSettings

Every field of :class:`~lasp_streams.runtime.kafka.settings.KafkaSettings` can be set in the
file and the environment under its own name (``sasl_username`` /
``LASP_STREAMS_SASL_USERNAME``); two have short aliases that match the flags:
``bootstrap`` (``LASP_STREAMS_BOOTSTRAP``) and ``partitions`` (``LASP_STREAMS_PARTITIONS``).
Relative TLS paths in the file are relative to the file. A key the file does not know is an
error (a typo must not silently fall back to a default); unknown ``LASP_STREAMS_*`` variables
are left alone (the local broker and the cache have their own). Passwords have no flag: a
command line is visible to every user of the machine.

Example ``lasp-streams.toml``::

    [kafka]
    bootstrap = "kafka://broker-1:9093,broker-2:9093"
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_username = "worker"
    ssl_cafile = "ca.pem"          # relative to this file
    partitions = 12
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lasp_streams.errors import ConfigError
from lasp_streams.runtime.kafka.settings import SECRET_FIELDS, KafkaSettings

__all__ = ["CONFIG_ENV", "ENV_PREFIX", "Resolved", "env_name", "resolve_settings"]

ENV_PREFIX: Final = "LASP_STREAMS_"
#: Names the TOML file when --config is not given.
CONFIG_ENV: Final = "LASP_STREAMS_CONFIG"
_ALIASES: Final = {"bootstrap": "bootstrap_servers", "partitions": "delta_partitions"}
_SHORT: Final = {field: alias for alias, field in _ALIASES.items()}
_PATH_FIELDS: Final = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_FIELDS: Final = {f.name: f for f in dataclasses.fields(KafkaSettings)}


def env_name(field: str) -> str:
    """The environment variable of a settings field (``bootstrap_servers``:
    ``LASP_STREAMS_BOOTSTRAP``)."""
    return ENV_PREFIX + _SHORT.get(field, field).upper()


def _convert(field: str, raw: Any, source: str) -> Any:
    """``raw`` (a TOML value or an environment string) as the field's type."""
    kind = str(_FIELDS[field].type)
    if raw is None:
        return None
    if "bool" in kind:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif "int" in kind:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip().replace("_", ""))
            except ValueError:
                pass
    elif isinstance(raw, str):
        return raw
    raise ConfigError(f"{source}: {field} must be {kind.replace(' | None', '')}, got {raw!r}")


def _field_of(key: str) -> str | None:
    name = key.strip().lower().replace("-", "_")
    name = _ALIASES.get(name, name)
    return name if name in _FIELDS else None


def _from_file(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist (--config)") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    unknown_tables = sorted(set(document) - {"kafka"})
    if unknown_tables:
        raise ConfigError(
            f"config file {str(path)!r}: unknown key(s) {unknown_tables}; settings go in the "
            "[kafka] table"
        )
    table = document.get("kafka", {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {str(path)!r}: 'kafka' must be a table ([kafka])")
    found: dict[str, tuple[Any, str]] = {}
    for key, raw in table.items():
        field = _field_of(key)
        if field is None:
            known = sorted({*_FIELDS, *_ALIASES})
            raise ConfigError(
                f"config file {str(path)!r}: unknown setting {key!r} in [kafka]; known: "
                f"{', '.join(known)}"
            )
        source = f"file {path}"
        value = _convert(field, raw, f"{source} [kafka].{key}")
        if field in _PATH_FIELDS and isinstance(value, str):
            value = str((path.parent / Path(value).expanduser()).resolve())
        found[field] = (value, source)
    return found


def _from_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for field in _FIELDS:
        for name in {env_name(field), ENV_PREFIX + field.upper()}:
            if name in env and env[name] != "":
                found[field] = (_convert(field, env[name], f"${name}"), f"env {name}")
    return found


@dataclass(frozen=True)
class Resolved:
    """Effective settings and, per field, where its value came from."""

    settings: KafkaSettings
    sources: Mapping[str, str]
    config_file: Path | None = None

    def show(self) -> str:
        """One ``field = value  (source)`` line per field; secrets masked."""
        width = max(len(name) for name in _FIELDS)
        lines = [f"# config file: {self.config_file or '(none)'}"]
        for name in _FIELDS:
            value = getattr(self.settings, name)
            shown = "***" if name in SECRET_FIELDS and value is not None else repr(value)
            lines.append(f"{name:<{width}} = {shown:<24} ({self.sources.get(name, 'default')})")
        return "\n".join(lines)


def resolve_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    base: KafkaSettings | None = None,
) -> Resolved:
    """The effective :class:`KafkaSettings` from ``flags`` (field name to value; None means
    "not given"), the environment ``env`` (default ``os.environ``), the TOML file
    ``config_file`` (default ``$LASP_STREAMS_CONFIG``, else none) and the defaults of
    ``base``. Raises :class:`~lasp_streams.errors.ConfigError` naming the bad setting and
    its source."""
    env = os.environ if env is None else env
    if config_file is None and env.get(CONFIG_ENV):
        config_file = env[CONFIG_ENV]
    path = Path(config_file).expanduser() if config_file is not None else None
    layers: list[dict[str, tuple[Any, str]]] = []
    if path is not None:
        layers.append(_from_file(path))
    layers.append(_from_env(env))
    given: dict[str, tuple[Any, str]] = {}
    for name, value in (flags or {}).items():
        if value is None:
            continue
        field = _field_of(name)
        if field is None:
            raise ConfigError(f"unknown setting {name!r}")
        given[field] = (value, f"flag --{_SHORT.get(field, field).replace('_', '-')}")
    layers.append(given)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:  # lowest precedence first; later layers win
        for field, (value, source) in layer.items():
            values[field] = value
            sources[field] = source
    try:
        settings = dataclasses.replace(base or KafkaSettings(), **values)
    except ConfigError as exc:
        involved = sorted({sources[f] for f in values})
        raise ConfigError(f"{exc} [settings from: {', '.join(involved)}]") from None
    return Resolved(settings, sources, path)
