"""A secured cluster, for real: the local broker with a SASL_SSL listener, SCRAM users created by
Kafka's own kafka-storage tool, a CA and certificates made for this run, and the StandardAuthorizer
on. Every client is built by lasp_streams.runtime.kafka.clients from one KafkaSettings.

- a wrong password and an untrusted certificate are each refused with one clear line (the
  library's KafkaSetupError and the CLI's output);
- with the ACLs of lasp_streams.runtime.kafka.acls applied, the device-facing principal's
  forged writes to crossings, billing, a state topic, contracts and the ad sources are refused
  by the broker, one test per case, while its own client deltas are accepted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from click.testing import CliRunner

from lasp_streams import codec
from lasp_streams.cli import main
from lasp_streams.errors import KafkaSetupError
from lasp_streams.lattices.awset import AWSet
from lasp_streams.localkafka import LocalKafka
from lasp_streams.localkafka.security import BrokerSecurity, ScramUser, make_ca, make_pki
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.acls import ROLES, Principals, apply_acls, plan_acls
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.topics import ensure_topics, plan_topics
from lasp_streams.runtime.kafka.worker import plan_worker
from topologies.ad_counter import Ad, Contract, build

pytestmark = pytest.mark.integration

ADMIN = "admin"
PASSWORDS = {ADMIN: "admin-secret", **{f"lasp-{role}": f"{role}-secret" for role in ROLES}}
TOPOLOGY = "secured_ads"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Secured:
    broker: LocalKafka
    ca: Path

    def settings(self, user: str, password: str | None = None, **more: object) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.broker.bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=PASSWORDS[user] if password is None else password,
            ssl_cafile=str(self.ca),
            delta_partitions=3,
            connect_timeout_ms=20_000,
            request_timeout_ms=15_000,
            **more,  # type: ignore[arg-type]
        )

    def role(self, role: str) -> KafkaSettings:
        return self.settings(f"lasp-{role}")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One secured broker for this module, stopped at the end whatever happened."""
    root = tmp_path_factory.mktemp("secured-kafka")
    pki = make_pki(root / "pki")
    security = BrokerSecurity(
        pki, tuple(ScramUser(name, password) for name, password in PASSWORDS.items()), admin=ADMIN
    )
    broker = LocalKafka(
        root / "data", port=_free_port(), controller_port=_free_port(), security=security
    )
    try:
        broker.start()
        yield Secured(broker, pki.ca_cert)
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def deployed(secured: Secured) -> str:
    """The ad counter's topics, created by the admin role, and every role's ACLs applied."""

    async def deploy() -> None:
        admin_settings = secured.role("admin")
        topology = build()
        plan = plan_worker(topology, name=TOPOLOGY)
        # The ACLs are applied by the cluster's super user; the admin role creates the topics.
        root = secured.settings(ADMIN)
        admin = await clients.start(clients.admin(root), root, "applying ACLs")
        try:
            await apply_acls(admin, plan_acls(topology, name=TOPOLOGY))
        finally:
            await admin.close()
        specs = plan_topics(TOPOLOGY, plan.topic_variables, admin_settings)
        admin = await clients.start(clients.admin(admin_settings), admin_settings, "declaring")
        try:
            await ensure_topics(admin_settings, specs, admin=admin)
        finally:
            await admin.close()

    asyncio.run(deploy())
    return TOPOLOGY


# -- authentication -----------------------------------------------------------------------------
async def test_the_right_password_and_ca_connect(secured: Secured) -> None:
    settings = secured.role("auditor")
    admin = await clients.start(clients.admin(settings), settings, "listing topics")
    try:
        assert isinstance(await admin.list_topics(), list)
    finally:
        await admin.close()


async def test_a_wrong_password_is_refused_with_one_clear_line(secured: Secured) -> None:
    settings = secured.settings("lasp-worker", password="not-the-password")
    with pytest.raises(KafkaSetupError) as caught:
        await clients.start(clients.admin(settings), settings, "connecting")
    message = str(caught.value)
    assert "\n" not in message
    assert "refused the SASL login of user 'lasp-worker' (SCRAM-SHA-512)" in message
    assert "check the username and password" in message


async def test_an_untrusted_certificate_is_refused_with_one_clear_line(
    secured: Secured, tmp_path: Path
) -> None:
    other_ca, _key = make_ca(tmp_path, "some other CA")
    settings = secured.settings("lasp-worker").with_changes(ssl_cafile=str(other_ca))
    with pytest.raises(KafkaSetupError) as caught:
        await clients.start(clients.admin(settings), settings, "connecting")
    message = str(caught.value)
    assert "\n" not in message
    assert "TLS certificate of Kafka at" in message and "is not trusted" in message
    assert "--ssl-cafile" in message


def _cli_worker(secured: Secured, password: str, cafile: Path) -> list[str]:
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "topologies.ad_counter",
            "--bootstrap",
            secured.broker.bootstrap_servers,
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "lasp-worker",
            "--ssl-cafile",
            str(cafile),
            "--name",
            "cli_refused",
        ],
        env={"LASP_STREAMS_SASL_PASSWORD": password},
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) <= 3, result.output
    return lines


def test_the_cli_reports_a_wrong_password_in_one_line(secured: Secured) -> None:
    (line,) = _cli_worker(secured, "wrong", secured.ca)
    assert "refused the SASL login of user 'lasp-worker'" in line


def test_the_cli_reports_an_untrusted_certificate_in_one_line(
    secured: Secured, tmp_path: Path
) -> None:
    other_ca, _key = make_ca(tmp_path, "some other CA")
    (line,) = _cli_worker(secured, PASSWORDS["lasp-worker"], other_ca)
    assert "is not trusted" in line


# -- authorization ------------------------------------------------------------------------------
def _forged_set() -> bytes:
    forged = AWSet()
    forged.add("mallory", Ad("free-ad", "rovio"))
    forged.add("mallory", Contract("ad-0", 1))
    return codec.encode(forged)


async def _device_writes(secured: Secured, topic: str) -> None:
    settings = secured.role("device")
    producer = await clients.start(clients.producer(settings, "device"), settings, "device")
    try:
        await producer.send_and_wait(topic, _forged_set(), key=b"ad-0")
    finally:
        await producer.stop()


async def test_the_device_principal_may_write_its_own_client_deltas(
    secured: Secured, deployed: str
) -> None:
    await _device_writes(secured, f"{deployed}.impressions.deltas")


@pytest.mark.parametrize(
    "target",
    ["crossings", "billing", "ads_with_contracts.state", "contracts.deltas", "rovio_ads.deltas"],
)
async def test_a_forged_write_by_the_device_principal_is_refused_by_the_broker(
    secured: Secured, deployed: str, target: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _device_writes(secured, f"{deployed}.{target}")


async def test_the_auditor_reads_but_cannot_write(secured: Secured, deployed: str) -> None:
    from aiokafka import TopicPartition

    settings = secured.role("auditor")
    topic = f"{deployed}.impressions.deltas"
    consumer = await clients.start(clients.consumer(settings, "auditor"), settings, "auditor")
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
        assert len(ends) == 3
    finally:
        await consumer.stop()
    producer = await clients.start(clients.producer(settings, "auditor"), settings, "auditor")
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(f"{deployed}.impressions.deltas", b"x", key=b"k")
    finally:
        await producer.stop()


def test_default_principals_are_the_users_of_this_broker() -> None:
    for role in ROLES:
        assert Principals().of(role) == f"User:lasp-{role}"
        assert f"lasp-{role}" in PASSWORDS


def _cli_acls(secured: Secured, user: str) -> Any:
    return CliRunner().invoke(
        main,
        [
            "acls",
            "topologies.ad_counter",
            "--name",
            TOPOLOGY,
            "--apply",
            "--bootstrap",
            secured.broker.bootstrap_servers,
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            user,
            "--ssl-cafile",
            str(secured.ca),
        ],
        env={"LASP_STREAMS_SASL_PASSWORD": PASSWORDS[user]},
        catch_exceptions=False,
    )


def test_acls_apply_is_idempotent_and_refused_to_a_non_admin(
    secured: Secured, deployed: str
) -> None:
    applied = _cli_acls(secured, ADMIN)
    assert applied.exit_code == 0, applied.output
    count = len(plan_acls(build(), name=deployed))
    assert f"applied {count} ACL binding(s)" in applied.output
    refused = _cli_acls(secured, "lasp-device")
    assert refused.exit_code == 1, refused.output
    (line,) = refused.output.strip().splitlines()[-1:]
    assert "the cluster refused ACL" in line and "apply them as a super user" in line
