"""Trusted server-side parts that are not agents: device checks, the device ledger."""
