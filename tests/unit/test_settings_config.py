"""The settings object (bootstrap parsing, security checks, masked repr), where settings come from
(flags > LASP_STREAMS_* > TOML file > defaults) and the client factory's connection options."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from lasp_streams.config import env_name, resolve_settings
from lasp_streams.errors import ConfigError
from lasp_streams.localkafka.security import make_ca
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.settings import DEFAULT_BOOTSTRAP, KafkaSettings, parse_bootstrap
from lasp_streams.runtime.kafka.topics import (
    ExistingTopic,
    TopicMismatch,
    TopicSpec,
    agent_group,
    check_existing,
    operators_group,
    owner_groups,
    sink_group,
    sink_transactional_id,
)

SASL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "worker",
    "sasl_password": "s3cret",
}


# -- bootstrap --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        ("127.0.0.1:9092", "127.0.0.1:9092"),
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092"),
        ("kafka://a:1;b:2", "a:1,b:2"),
        (
            " broker-1.example:9093 , broker-2.example:9093 ",
            "broker-1.example:9093,broker-2.example:9093",
        ),
        ("[::1]:9092", "[::1]:9092"),
        ("SASL_SSL://h:9094/", "h:9094"),
    ],
)
def test_bootstrap_forms_faust_users_type_are_accepted(given: str, parsed: str) -> None:
    assert parse_bootstrap(given) == parsed
    assert KafkaSettings(bootstrap_servers=given).bootstrap_servers == parsed


@pytest.mark.parametrize("bad", ["127.0.0.1:notaport", "127.0.0.1", "h:0", "h:70000", "", " , "])
def test_a_bad_bootstrap_is_refused_naming_the_entry_and_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSettings(bootstrap_servers=bad)
    message = str(caught.value)
    assert "--bootstrap" in message or "host:port" in message
    assert "\n" not in message


def test_the_default_bootstrap_is_the_local_broker() -> None:
    assert KafkaSettings().bootstrap_servers == DEFAULT_BOOTSTRAP == "127.0.0.1:9092"


# -- security checks --------------------------------------------------------------------------
def test_sasl_needs_credentials_and_a_known_mechanism() -> None:
    with pytest.raises(ConfigError, match="needs a SASL username and password"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(ConfigError, match="--sasl-mechanism"):
        KafkaSettings(**{**SASL, "sasl_mechanism": "GSSAPI"})
    with pytest.raises(ConfigError, match="--security-protocol"):
        KafkaSettings(security_protocol="TLS")
    settings = KafkaSettings(**{**SASL, "security_protocol": "sasl_ssl", "sasl_mechanism": None})
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "PLAIN")


def test_credentials_without_a_protocol_that_uses_them_are_refused() -> None:
    with pytest.raises(ConfigError, match="SASL credentials are set"):
        KafkaSettings(sasl_username="u", sasl_password="p")
    with pytest.raises(ConfigError, match="TLS files are set"):
        KafkaSettings(ssl_cafile="/ca.pem")
    with pytest.raises(ConfigError, match="both --ssl-certfile and --ssl-keyfile"):
        KafkaSettings(security_protocol="SSL", ssl_certfile="/c.pem")


def test_repr_never_shows_a_password() -> None:
    settings = KafkaSettings(**SASL, ssl_key_password="k3y")
    text = repr(settings)
    assert "s3cret" not in text and "k3y" not in text
    assert "sasl_password=***" in text and "sasl_username='worker'" in text


def test_a_partition_count_below_one_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--partitions"):
        KafkaSettings(delta_partitions=0)


# -- sources and precedence -------------------------------------------------------------------
def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "lasp.toml",
        '[kafka]\nbootstrap = "file:1"\npartitions = 4\nclient_id = "from-file"\nlinger_ms = 7\n',
    )
    env = {"LASP_STREAMS_BOOTSTRAP": "env:2", "LASP_STREAMS_PARTITIONS": "5"}
    resolved = resolve_settings({"bootstrap_servers": "flag:3"}, config_file=config, env=env)
    s = resolved.settings
    assert (s.bootstrap_servers, s.delta_partitions, s.client_id, s.linger_ms) == (
        "flag:3",
        5,
        "from-file",
        7,
    )
    assert s.request_timeout_ms == KafkaSettings().request_timeout_ms
    assert resolved.sources["bootstrap_servers"] == "flag --bootstrap"
    assert resolved.sources["delta_partitions"] == "env LASP_STREAMS_PARTITIONS"
    assert resolved.sources["client_id"] == f"file {config}"
    assert "request_timeout_ms" not in resolved.sources


def test_a_flag_left_out_does_not_hide_the_environment() -> None:
    resolved = resolve_settings(
        {"bootstrap_servers": None, "delta_partitions": None},
        env={"LASP_STREAMS_BOOTSTRAP": "kafka://env:9092"},
    )
    assert resolved.settings.bootstrap_servers == "env:9092"
    assert resolved.settings.delta_partitions == 6


def test_the_config_file_can_come_from_the_environment_and_tls_paths_are_relative_to_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf").mkdir()
    config = write_config(
        tmp_path / "conf" / "lasp.toml",
        '[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "ca.pem"\nssl_check_hostname = false\n',
    )
    resolved = resolve_settings(env={"LASP_STREAMS_CONFIG": str(config)})
    assert resolved.settings.ssl_cafile == str(tmp_path / "conf" / "ca.pem")
    assert resolved.settings.ssl_check_hostname is False
    assert resolved.config_file == config


def test_every_settings_field_has_an_environment_variable() -> None:
    env = {env_name("sasl_password"): "pw", env_name("sasl_username"): "u"}
    env[env_name("security_protocol")] = "SASL_PLAINTEXT"
    env[env_name("transactional_agents")] = "false"
    env[env_name("max_batch_records")] = "1_000"
    s = resolve_settings(env=env).settings
    assert (s.sasl_password, s.transactional_agents, s.max_batch_records) == ("pw", False, 1000)
    assert env_name("bootstrap_servers") == "LASP_STREAMS_BOOTSTRAP"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[kafka]\nbootstrap_server = "x:1"\n', "unknown setting 'bootstrap_server'"),
        ("[kafka]\npartitions = 'six'\n", "partitions must be int"),
        ("[kafka\nx = 1\n", "not valid TOML"),
        ('bootstrap = "x:1"\n', "settings go in the [kafka] table"),
        ('[kafka]\nbootstrap = "x:nope"\n', "is not host:port"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, body: str, expected: str
) -> None:
    config = write_config(tmp_path / "bad.toml", body)
    with pytest.raises(ConfigError) as caught:
        resolve_settings(config_file=config, env={})
    assert expected in str(caught.value)
    assert "bad.toml" in str(caught.value)


def test_a_missing_config_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist \(--config\)"):
        resolve_settings(config_file=tmp_path / "nope.toml", env={})


def test_show_masks_secrets_and_names_sources() -> None:
    env = {f"LASP_STREAMS_{k.upper()}": v for k, v in SASL.items()}
    text = resolve_settings({"client_id": "me"}, env=env).show()
    assert "s3cret" not in text
    assert "sasl_password" in text and "***" in text
    assert "(env LASP_STREAMS_SASL_PASSWORD)" in text
    assert "(flag --client-id)" in text
    assert "(default)" in text


# -- the client factory -----------------------------------------------------------------------
def test_plaintext_connection_options() -> None:
    options = clients.connection_options(KafkaSettings(client_id="app"), "sink")
    assert options["bootstrap_servers"] == "127.0.0.1:9092"
    assert options["client_id"] == "app-sink"
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options and "sasl_plain_password" not in options


def test_sasl_ssl_connection_options_carry_the_credentials_and_the_ca(tmp_path: Path) -> None:
    ca, _key = make_ca(tmp_path)
    settings = KafkaSettings(**SASL, ssl_cafile=str(ca))
    options = clients.connection_options(settings, "worker")
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("worker", "s3cret")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert clients.ssl_context(settings) is context  # built once


def test_faust_gets_the_same_credentials(tmp_path: Path) -> None:
    ca, _key = make_ca(tmp_path)
    options = clients.faust_options(
        KafkaSettings(**SASL, ssl_cafile=str(ca), bootstrap_servers="a:1,b:2"),
        faust.SASLCredentials,
    )
    assert options["broker"] == "kafka://a:1;kafka://b:2"
    credentials = options["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.username == "worker" and credentials.password == "s3cret"
    assert credentials.protocol.value == "SASL_SSL"
    assert "broker_credentials" not in clients.faust_options(KafkaSettings())
    tls = clients.faust_options(KafkaSettings(security_protocol="SSL", ssl_cafile=str(ca)))
    assert isinstance(
        faust.types.auth.to_credentials(tls["broker_credentials"]), faust.SSLCredentials
    )


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match=r"none\.pem.*--ssl-cafile"):
        clients.connection_options(settings, "x")


def test_options_that_belong_to_the_settings_cannot_be_overridden() -> None:
    with pytest.raises(TypeError, match="come from the settings"):
        clients.producer(KafkaSettings(), "x", bootstrap_servers="elsewhere:1")


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        (
            "SaslAuthenticationFailed: Authentication failed during authentication due to "
            "invalid credentials with SASL mechanism SCRAM-SHA-512",
            "refused the SASL login of user 'worker'",
        ),
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
            "is not trusted; give the CA that signed it with --ssl-cafile",
        ),
        ("[Errno 111] Connect call failed", "cannot reach Kafka at 127.0.0.1:9092"),
    ],
)
def test_start_failures_are_described_in_one_line(logged: str, expected: str) -> None:
    from aiokafka.errors import KafkaConnectionError

    exc = KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092, <AddressFamily>)]")
    line = clients.describe_failure(KafkaSettings(**SASL), "starting", exc, [logged])
    assert expected in line
    assert line.startswith("starting: ") and "\n" not in line


# -- names ------------------------------------------------------------------------------------
def test_group_and_transactional_names_sit_under_the_topology_prefix() -> None:
    assert agent_group("t", "impressions") == "t.impressions.agent"
    assert operators_group("t", True) == "t.operators.keyed"
    assert sink_group("t") == "t.sink"
    assert sink_transactional_id("t", 2) == "t.sink.crossings-2"
    assert owner_groups("t", "contracts") == (
        "t.contracts.agent",
        "t.operators.keyed",
        "t.operators.unkeyed",
    )
    with pytest.raises(ValueError, match="topology name"):
        sink_group("a.b")


def test_a_partition_mismatch_names_the_flag_to_change() -> None:
    spec = TopicSpec("t.x.deltas", 6, purpose="deltas of variable 'x'")
    with pytest.raises(TopicMismatch, match="run with --partitions 3"):
        check_existing(spec, ExistingTopic("t.x.deltas", 3, "delete"))
    billing = TopicSpec("t.billing", 1, purpose="billing")
    with pytest.raises(TopicMismatch, match="billing_partitions = 2"):
        check_existing(billing, ExistingTopic("t.billing", 2, "delete"))
