"""lasp_streams: the Lasp programming model (CRDT variables, monotone dataflow, threshold reads)
as a stream-processing plugin on Apache Kafka."""

from lasp_streams.errors import (
    CodecError,
    ConflictingMerge,
    DecodeError,
    EncodeError,
    IncompatibleLattices,
    InsufficientRights,
    InvalidTopology,
    KafkaSetupError,
    LaspError,
    LatticeError,
    MutatorError,
    ReadTimeout,
    StepError,
)

__version__ = "0.1.0"

__all__ = [
    "CodecError",
    "ConflictingMerge",
    "DecodeError",
    "EncodeError",
    "IncompatibleLattices",
    "InsufficientRights",
    "InvalidTopology",
    "KafkaSetupError",
    "LaspError",
    "LatticeError",
    "MutatorError",
    "ReadTimeout",
    "StepError",
    "__version__",
]
