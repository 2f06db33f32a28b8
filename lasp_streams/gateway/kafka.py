"""The gateway's Kafka clients, built in one place (switch to the project-wide factory here)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from lasp_streams.runtime.kafka.settings import KafkaSettings

__all__ = ["batch_producer"]


def batch_producer(settings: KafkaSettings, gateway_id: str) -> AIOKafkaProducer:
    """Idempotent, ``acks=all``: a flush is acknowledged only once every replica has it, and a
    retried send is never written twice."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-gateway-{gateway_id}",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=1024 * 1024,
        request_timeout_ms=settings.request_timeout_ms,
    )
