"""The HTTP/WebSocket tier devices talk to (DESIGN.md, "Clients at the edge").

Devices speak :mod:`lasp_streams.client.protocol` (signed msgpack frames); the device checks are
:mod:`lasp_streams.server.devices`, the ledger the gateways feed is
:mod:`lasp_streams.server.ledger`.

Modules:

- :mod:`.keys` — per-device secrets derived from master keys; rotation, revocation;
- :mod:`.session` — one device's WebSocket session: authenticate, check, act, answer;
- :mod:`.batcher` — accepted totals into Kafka, one record per ledger partition per batch;
- :mod:`.hearing` — selective hearing: one follower per variable feeds every socket;
- :mod:`.ledger_tail` — counters heard one hop early: the ledger's output from the delta topic;
- :mod:`.rights` — bounded mode: the gateway holds escrowed rights and leases them to devices;
- :mod:`.server` — the aiohttp application: sessions, queryable state, health, metrics;
- :mod:`.config` — a gateway's settings;
- :mod:`.kafka` — the gateway's Kafka clients, built in one place;
- :mod:`.metrics` — the gateway's Prometheus metrics;
- :mod:`.cli` — ``lasp-streams gateway …``.
"""
