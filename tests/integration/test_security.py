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
import gc
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from click.testing import CliRunner

from lasp_streams import codec
from lasp_streams.cli import main
from lasp_streams.client import EdgeClient
from lasp_streams.client.kafka import KafkaTransport
from lasp_streams.errors import KafkaSetupError
from lasp_streams.lattices.awset import AWSet
from lasp_streams.localkafka import LocalKafka
from lasp_streams.localkafka.security import BrokerSecurity, ScramUser, make_ca, make_pki
from lasp_streams.runtime.kafka import clients
from lasp_streams.runtime.kafka.acls import ROLES, Principals, apply_acls, plan_acls
from lasp_streams.runtime.kafka.reader import read_all
from lasp_streams.runtime.kafka.runtime import KafkaRuntime
from lasp_streams.runtime.kafka.settings import KafkaSettings
from lasp_streams.runtime.kafka.sink import read_billing_events
from lasp_streams.runtime.kafka.topics import billing_topic, dlq_topic, ensure_topics, plan_topics
from lasp_streams.runtime.kafka.worker import plan_worker
from tests.ports import free_port
from topologies.ad_counter import SERVER_ACTOR, Ad, Contract, ad_source, build

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin"
PASSWORDS = {ADMIN: "admin-secret", **{f"lasp-{role}": f"{role}-secret" for role in ROLES}}
TOPOLOGY = "secured_ads"


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

    def role(self, role: str, **more: object) -> KafkaSettings:
        return self.settings(f"lasp-{role}", **more)


@pytest.fixture(autouse=True)
def _refused_connections_collected() -> Iterator[None]:
    """aiokafka closes a connection whose TLS or SASL handshake failed with transport.close();
    over TLS the socket is released only once the event loop has run the TLS shutdown, and when
    the loop ends first (asyncio.run in the CLI, a test's own loop) the socket is left to the
    garbage collector, whose ResourceWarning would then fail whichever test runs next. Collect
    it here, after the test that refused the connection, with that one warning ignored."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One secured broker for this module, stopped at the end whatever happened."""
    root = tmp_path_factory.mktemp("secured-kafka")
    pki = make_pki(root / "pki")
    security = BrokerSecurity(
        pki, tuple(ScramUser(name, password) for name, password in PASSWORDS.items()), admin=ADMIN
    )
    broker = LocalKafka(
        root / "data", port=free_port(), controller_port=free_port(), security=security
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


# -- the ad counter, every role on its own principal --------------------------------------------
MINIMUM = 60


async def _sync_until(client: Any, done: Callable[[], bool], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await client.sync()
    while not done():
        assert loop.time() < deadline, "the client did not see the expected state in time"
        await asyncio.sleep(0.05)
        await client.sync()


async def test_the_ad_counter_runs_end_to_end_over_sasl_ssl_with_a_principal_per_role(
    secured: Secured, deployed: str, tmp_path: Path
) -> None:
    """A `lasp-streams worker` process (agents and operators, in faust) as the worker user, the
    sink as the sink user, the admin writing ads and contracts, and two devices: each a SCRAM
    user over TLS under the ACLs of its role only."""
    (tmp_path / "secured_topology.py").write_text(
        f"from topologies.ad_counter import build\ntopology = build(min_impressions={MINIMUM})\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "LASP_STREAMS_SASL_PASSWORD": PASSWORDS["lasp-worker"],
    }
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "lasp-streams"), "worker", "secured_topology",
        "--name", deployed, "--partitions", "3", "--loglevel", "warning",
        "--bootstrap", f"kafka://{secured.broker.bootstrap_servers}",
        "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
        "--sasl-username", "lasp-worker", "--ssl-cafile", str(secured.ca),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    ads = [Ad("rovio-0", "rovio"), Ad("riot-0", "riot")]
    topology = build(min_impressions=MINIMUM)
    sink = KafkaRuntime(topology, secured.role("sink", poll_timeout_ms=100), name=deployed)
    admin = KafkaRuntime(topology, secured.role("admin"), name=deployed)
    stop, ready = asyncio.Event(), asyncio.Event()
    sinking = asyncio.create_task(sink.run(with_agents=False, stop=stop, ready=ready))
    transports = [KafkaTransport(secured.role("device"), deployed, f"phone-{i}") for i in range(2)]
    try:
        await asyncio.wait_for(ready.wait(), 120)
        await admin.start()
        for ad in ads:
            await admin.update(ad_source(ad), SERVER_ACTOR, "add", ad)
            await admin.update("contracts", SERVER_ACTOR, "add", Contract(ad.id))
        for t in transports:
            await t.start()
        phones = [
            EdgeClient(t.actor, t, topology, keys_of=lambda pairs: {a.id for a, _ in pairs})
            for t in transports
        ]
        for phone in phones:
            await _sync_until(phone, lambda p=phone: set(p.showing) == {"rovio-0", "riot-0"})
        # rovio-0 passes its minimum (40 + 40 >= 60); riot-0 stays below it.
        for phone in phones:
            phone.view("rovio-0", 40)
            phone.view("riot-0", 5)
            assert await phone.sync()
        for phone in phones:
            await _sync_until(phone, lambda p=phone: p.showing == ("riot-0",))
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 60) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        stop.set()
        await asyncio.gather(sinking, return_exceptions=True)
        for t in transports:
            await t.stop()
        for rt in (admin, sink):
            await rt.stop()
    sinking.result()  # the sink did not fail (an ACL refusal would show here)
    assert worker.stderr is not None
    err = (await worker.stderr.read()).decode(errors="replace")
    assert "operator agent (non-keyed)" in err  # the plan: the worker got past its preflight
    assert "Authorization" not in err, err[-3000:]

    auditor = secured.role("auditor")
    events = await read_billing_events(auditor, billing_topic(deployed))
    assert [(e.key, e.trigger) for e in events] == [(b"rovio-0", "disable_ad")]
    assert isinstance(events[0].value, int) and events[0].value >= MINIMUM
    # Nothing of this run was refused (test_the_device_principal_may_write_its_own_client_deltas
    # left a malformed record for ad-0 there).
    dead = await read_all(auditor, dlq_topic(deployed))
    assert not [r for r in dead if r.key in (b"rovio-0", b"riot-0")]
