"""The Kafka runtime: variables as delta + compacted state topics, agents that join deltas in
batches, the trusted exactly-once sink, and the dead-letter topic."""
