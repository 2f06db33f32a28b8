"""The exception tree of lasp_streams. Every error the library raises on purpose is a LaspError.

::

    LaspError                       root; catch this to catch everything we raise on purpose
    ├── LatticeError                a lattice operation cannot be done
    │   ├── MutatorError (ValueError)      bad mutator arguments, or not enough rights
    │   │   └── InsufficientRights         B-Counter decrement/move beyond the actor's rights
    │   ├── ConflictingMerge (ValueError)  two states that have no join (IVar set to two values)
    │   └── IncompatibleLattices (TypeError) merge/compare of different lattice types
    ├── UntrustedDelta (ValueError)        a client delta touches entries not its own
    │                                      (lasp_streams.server.validate)
    ├── BufferFileError (ValueError)       an edge client's persisted buffer cannot be read
    │                                      (lasp_streams.client.store)
    ├── Offline (ConnectionError)          an edge client's transport is offline
    ├── DeltasExpired (LookupError)        a client's delta position was garbage-collected:
    │                                      resync from full state (lasp_streams.client.transport)
    ├── SinkFenced (RuntimeError)          another sink with the same identity took over
    │                                      (lasp_streams.runtime.kafka.sink)
    ├── PrometheusSetupError (RuntimeError) a local Prometheus cannot be started
    │                                      (lasp_streams.localprom)
    ├── PromQLError (ValueError)           Prometheus refused a query (lasp_streams.localprom)
    ├── CodecError (ValueError)     encoding or decoding failed
    │   ├── EncodeError                    a value cannot be put on the wire
    │   └── DecodeError                    malformed, unknown or unsupported bytes
    ├── InvalidTopology (ValueError)       a topology graph is refused at build time
    ├── ConfigError (ValueError)           a setting (flag, env variable, config file) is invalid
    ├── StepError                   a user function raised inside a dataflow step
    ├── ReadTimeout (TimeoutError)  a threshold read did not complete in time
    └── KafkaSetupError (RuntimeError)     the local broker cannot be fetched, started or reached
        ├── KafkaUnreachable               no broker answered (waiting may cure it)
        └── TopicMismatch                  an existing topic has the wrong partitions/policy
                                           (lasp_streams.runtime.kafka.topics)

The classes defined outside this module live next to the code that raises them; all of them
derive from LaspError.
"""

from __future__ import annotations


class LaspError(Exception):
    """Root of every error lasp_streams raises on purpose."""


class LatticeError(LaspError):
    """A lattice operation cannot be done."""


class MutatorError(LatticeError, ValueError):
    """A mutator was called with arguments it cannot apply; the state is unchanged."""


class InsufficientRights(MutatorError):
    """A bounded counter's actor tried to spend rights it does not hold; the state is unchanged."""


class ConflictingMerge(LatticeError, ValueError):
    """Two states have no join (for example an IVar set to two different values)."""


class IncompatibleLattices(LatticeError, TypeError):
    """Merge or comparison of two lattices of different types or parameters."""


class CodecError(LaspError, ValueError):
    """Encoding or decoding a lattice failed."""


class EncodeError(CodecError):
    """A value cannot be put on the wire (unregistered record type, unsupported value)."""


class DecodeError(CodecError):
    """Bytes that do not decode to a valid lattice: malformed, unknown tag, unsupported version,
    oversize, too deeply nested, or a state that would break the type's invariants."""


class InvalidTopology(LaspError, ValueError):
    """A topology graph is refused when it is built (names the step and the reason)."""


class ConfigError(LaspError, ValueError):
    """A setting is invalid or missing; the message names it, where it came from when known,
    and the flag or variable that sets it."""


class StepError(LaspError):
    """A user function raised inside a dataflow step; names the step id and the input."""


class ReadTimeout(LaspError, TimeoutError):
    """A threshold read did not see its threshold met within its timeout."""


class KafkaSetupError(LaspError, RuntimeError):
    """The local Kafka broker cannot be fetched, configured, started or reached.

    The message names the cause and the fix."""


class KafkaUnreachable(KafkaSetupError):
    """No broker answered at all (nothing refused us): waiting may cure it, unlike a refused
    login, an untrusted certificate or a missing ACL."""
