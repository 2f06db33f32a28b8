"""A secured local broker: a SASL_SSL client listener, SCRAM users, TLS certificates, ACLs on.

For tests and for trying a secured set-up on one machine. :func:`make_pki` writes a fresh CA and
a broker certificate for 127.0.0.1/localhost (the ``cryptography`` package, a dev
dependency); :class:`BrokerSecurity` turns them and a list of users into the broker settings
that :class:`~lasp_streams.localkafka.broker.LocalKafka` merges into ``server.properties``:

- the client listener speaks SASL_SSL (SCRAM-SHA-256 and SCRAM-SHA-512); the broker talks to
  itself over it as the admin user;
- the KRaft controller listener speaks TLS with client certificates required; the broker's own
  certificate is its identity there (``User:CN=<broker cn>``);
- the users' SCRAM credentials are written into the metadata log when the storage is
  formatted, by Kafka's own ``kafka-storage format --add-scram`` (no plaintext password is
  stored on the broker);
- KRaft's ``StandardAuthorizer`` is on, with ``allow.everyone.if.no.acl.found=false``: only the
  admin user and the broker's certificate are super users, everyone else needs ACLs
  (:mod:`lasp_streams.runtime.kafka.acls`).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lasp_streams.errors import KafkaSetupError

__all__ = ["BrokerSecurity", "Pki", "ScramUser", "answers_over_tls", "make_pki"]

BROKER_CN: Final = "lasp-streams-broker"
AUTHORIZER: Final = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Pki:
    """Where :func:`make_pki` wrote the files (all PEM)."""

    ca_cert: Path
    ca_key: Path
    #: The broker's private key followed by its certificate and the CA's: a Kafka PEM keystore.
    broker_keystore: Path


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise KafkaSetupError(
            "a secured local broker needs the 'cryptography' package for its certificates; "
            "install the dev extra (pip install -e '.[dev]')"
        ) from exc


def make_ca(directory: Path, name: str = "lasp-streams test CA") -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, one day); returns (certificate, key) paths."""
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def issue(
    ca_cert: Path,
    ca_key: Path,
    out: Path,
    common_name: str,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
) -> Path:
    """A certificate for ``common_name`` (server and client use, ``hosts`` as SANs) signed by
    the CA, written to ``out`` as key + certificate + CA certificate (PEM)."""
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise KafkaSetupError(f"{ca_key} is not an EC key made by make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
        + ca.public_bytes(serialization.Encoding.PEM)
    )
    out.chmod(0o600)
    return out


def make_pki(directory: Path) -> Pki:
    """A fresh CA and a broker certificate for 127.0.0.1 and localhost under ``directory``."""
    ca_cert, ca_key = make_ca(directory)
    broker = issue(ca_cert, ca_key, directory / "broker.pem", BROKER_CN)
    return Pki(ca_cert, ca_key, broker)


@dataclass(frozen=True)
class ScramUser:
    """A SASL/SCRAM user of the local broker."""

    name: str
    password: str

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("password", self.password)):
            # kafka-storage parses name=...,password=... inside [...]: keep the syntax intact.
            if not value or any(c in value for c in ',[]="\\ '):
                raise KafkaSetupError(
                    f'SCRAM user {label} {value!r} must be non-empty and hold none of , [ ] = " '
                    "\\ or spaces"
                )


@dataclass(frozen=True)
class BrokerSecurity:
    """How a :class:`~lasp_streams.localkafka.broker.LocalKafka` is secured (see the module
    docstring). ``admin`` is one of ``users``: the broker's own login and a super user."""

    pki: Pki
    users: tuple[ScramUser, ...]
    admin: str = "admin"
    mechanism: str = "SCRAM-SHA-512"
    authorizer: bool = True
    super_users: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mechanism not in _MECHANISMS:
            raise KafkaSetupError(f"mechanism {self.mechanism!r} is not one of {_MECHANISMS}")
        if self.admin not in {u.name for u in self.users}:
            raise KafkaSetupError(f"the admin user {self.admin!r} must be one of the users")

    @property
    def admin_password(self) -> str:
        return next(u.password for u in self.users if u.name == self.admin)

    def listeners(self, host: str, port: int, controller_port: int) -> dict[str, str]:
        """The listener settings (they replace the plaintext ones)."""
        return {
            "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{host}:{port}",
            "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "SASL_SSL",
        }

    def properties(self) -> dict[str, str]:
        """Every other broker setting of the secured broker."""
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{self.admin_password}";'
        )
        props = {
            "sasl.enabled.mechanisms": ",".join(_MECHANISMS),
            "sasl.mechanism.inter.broker.protocol": self.mechanism,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.pki.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.pki.ca_cert),
            "ssl.endpoint.identification.algorithm": "https",
            # The controller listener knows its peers by certificate; clients use SCRAM.
            "listener.name.controller.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
        }
        for mechanism in _MECHANISMS:
            props[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = jaas
        if self.authorizer:
            supers = [f"User:{self.admin}", f"User:CN={BROKER_CN}", *self.super_users]
            props.update(
                {
                    "authorizer.class.name": AUTHORIZER,
                    "allow.everyone.if.no.acl.found": "false",
                    "super.users": ";".join(supers),
                }
            )
        return props

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that store every user's SCRAM credentials."""
        args: list[str] = []
        for user in self.users:
            for mechanism in _MECHANISMS:
                args += ["--add-scram", f"{mechanism}=[name={user.name},password={user.password}]"]
        return args

    def probe(self, host: str, port: int, *, timeout: float = 1.0) -> bool:
        """True when the SASL_SSL listener completes a TLS handshake and answers ApiVersions
        (the one request a client may send before it logs in)."""
        return answers_over_tls(host, port, self.pki.ca_cert, timeout=timeout)


def answers_over_tls(host: str, port: int, cafile: Path, *, timeout: float = 1.0) -> bool:
    """True when ``host:port`` shakes hands with a certificate ``cafile`` trusts and answers an
    ApiVersions v0 request with error code 0."""
    context = ssl.create_default_context(cafile=str(cafile))
    correlation_id = 0x5EC
    client_id = b"lasp-streams-probe"
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as sock,
        ):
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            header = _recv(sock, 4)
            (size,) = struct.unpack(">i", header)
            if not 6 <= size < 1 << 20:
                return False
            payload = _recv(sock, size)
    except (OSError, ValueError):
        return False
    got_id, error_code = struct.unpack_from(">ih", payload)
    return bool(got_id == correlation_id and error_code == 0)


def _recv(sock: ssl.SSLSocket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("closed mid-response")
        chunks.extend(chunk)
    return bytes(chunks)
