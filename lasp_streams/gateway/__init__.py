"""The HTTP/WebSocket tier devices talk to (DESIGN.md, "Clients at the edge"): authentication
(:mod:`.keys`, :mod:`.protocol`), device checks (:mod:`lasp_streams.server.devices`), batching
into the ledger topic (:mod:`.batcher`), selective hearing (:mod:`.hearing`), queryable state
(:mod:`.server`)."""
