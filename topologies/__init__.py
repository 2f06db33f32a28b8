"""Runnable example topologies: the advertisement counter and a sliding-window aggregation."""
