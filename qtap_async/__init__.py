"""qtap-async: an eBPF agent that sees HTTP, HTTPS, HTTP/2 and gRPC traffic in plaintext, per process."""

from qtap_async import native
from qtap_async.errors import (
    AbiMismatchError,
    AttachError,
    BpfError,
    BpfLoadError,
    ConfigError,
    LibbpfMissingError,
    ProtocolError,
    QtapError,
    SinkError,
)

__version__ = "0.1.0"

# Before any parser module is imported: compiled (mypyc) only when built from the current source.
native.install()

__all__ = [
    "AbiMismatchError",
    "AttachError",
    "BpfError",
    "BpfLoadError",
    "ConfigError",
    "LibbpfMissingError",
    "ProtocolError",
    "QtapError",
    "SinkError",
    "__version__",
]
