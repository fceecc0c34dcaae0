"""One exception hierarchy for the whole agent, its control plane and Pulse.

Every error raised on purpose derives from QtapError so callers (the CLI, tests) can tell our clear, named
failures from bugs. Most classes live here; a few live beside the code that raises them (module in
brackets) and still derive from a base below. ``tests/test_errors.py`` checks this drawing against the
classes, so it stays true:

    QtapError
    ├── BpfError
    │   ├── BpfLoadError
    │   └── AttachError
    ├── LibbpfMissingError
    ├── AbiMismatchError
    ├── DecodeError                  (also a ValueError)
    ├── KernelFsError
    ├── ChannelClosed
    ├── SpoolError                   [buffers.spool]
    ├── RecordFileError              [replay]
    ├── ConfigError
    │   ├── ConfigValidationError    [config.messages]
    │   ├── YamlProblem              [config.yamldoc]
    │   ├── RuleSyntaxError          [rulekit.errors]
    │   ├── _MacroFailure            [rulekit.compiler]
    │   └── InvalidConfig            [control.configs]
    ├── ProtocolError
    ├── SinkError
    ├── SinkTransientError
    ├── ElfFormatError               [tls.elf]
    ├── LdCacheError                 [ldcache]
    ├── GoBinaryError
    ├── JavaAttachError
    ├── BoringSslSignatureError
    ├── StateDirError                [tls.cache]
    ├── StatusServerError
    ├── ContainerRuntimeError
    ├── PulseError
    │   ├── PulseAuthError
    │   ├── PulseClientError
    │   ├── BodyError
    │   └── QueryError
    ├── ControlError
    │   ├── ControlAuthError
    │   ├── ControlClientError
    │   ├── PulseUnavailable         [control.ui.pulse]
    │   └── NotFetchable             [control.ui.payloads]
    └── ApiError                     [control.http]

Where a class sits is part of its behaviour: a handler that catches a base catches everything under it.
So ``ApiError`` (an HTTP answer with its status) is not a ControlError: routes catch ControlError around
store calls to answer 502/503, and an ApiError raised inside such a block (a bad query parameter, 422)
must pass through as itself. ``GoBinaryError`` is not an ElfFormatError for the same reason: the TLS scan
treats ElfFormatError as "not a library" and says nothing, while an unexpected Go parse failure that
escapes is reported.
"""

from __future__ import annotations


class QtapError(Exception):
    """Base of every error the agent raises on purpose."""


class BpfError(QtapError):
    """A libbpf or kernel call failed.

    ``what`` names the object, program or map involved, ``errno`` is the positive errno and ``log``
    carries the verifier (or libbpf) log when there is one.
    """

    def __init__(self, what: str, errno: int, detail: str = "", log: str = "") -> None:
        import os

        self.what = what
        self.errno = errno
        self.log = log
        reason = os.strerror(errno) if errno else "unknown error"
        msg = f"{what}: {reason} (errno {errno})"
        if detail:
            msg += f": {detail}"
        if log:
            msg += "\n--- libbpf/verifier log ---\n" + log.rstrip()
        super().__init__(msg)


class LibbpfMissingError(QtapError):
    """The system libbpf shared library could not be loaded."""


class BpfLoadError(BpfError):
    """Loading a BPF object into the kernel failed (verifier rejection, missing BTF, permissions)."""


class AttachError(BpfError):
    """Attaching a program to a hook failed."""


class AbiMismatchError(QtapError):
    """The Python mirror of qtap.h does not match the compiled objects."""


class DecodeError(QtapError, ValueError):
    """A ring-buffer record that does not match the ABI (counted by the caller, never fatal).

    Also a ValueError, as it was before it joined this tree: a malformed record is a bad value."""


class ChannelClosed(QtapError):
    """Sending on a closed channel (or receiving from one that is closed and drained)."""


class ConfigError(QtapError):
    """A configuration file or option is invalid; the message names the field and the reason."""


class ProtocolError(QtapError):
    """Raised inside parsers only; parsers turn it into a parse_error record and never let it escape."""


class SinkError(QtapError):
    """A sink failed in a way that retrying will not fix (bad credentials, missing bucket...)."""


class PulseError(QtapError):
    """Pulse (the ingestion + query service) failed: storage, token store or configuration."""


class PulseAuthError(PulseError):
    """A Pulse bearer token is missing, unknown, revoked or lacks the scope; ``status`` is 401 or 403."""

    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


class PulseClientError(PulseError):
    """The Pulse server refused a batch in a way that retrying will not fix (4xx), or retries ran out.

    ``status`` is the HTTP status of the refusal, 0 when retries ran out."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class BodyError(PulseError):
    """Pulse cannot take a request body as a whole; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class QueryError(PulseError):
    """Query parameters that parse but make no sense (end before start, too many buckets): HTTP 422."""

    status = 422


class SinkTransientError(QtapError):
    """A sink call failed in a way that may pass on retry (store unreachable, timeout, throttled, 5xx)."""


class GoBinaryError(QtapError):
    """A Go structure in an executable could not be parsed (the TLS analysis turns it into a report note)."""


class JavaAttachError(QtapError):
    """A JVM refused or failed the dynamic attach of qtap's Java agent (or is not a HotSpot JVM)."""
class BoringSslSignatureError(QtapError):
    """A stripped BoringSSL's SSL_read/SSL_write could not be recognised by their code signatures (the TLS
    analysis reports the library with no probes and this message as its note, never a guessed offset)."""


class KernelFsError(QtapError):
    """A kernel filesystem capture needs (tracefs, bpffs) is missing and could not be mounted; the message
    names it and the command that fixes it."""


class StatusServerError(QtapError):
    """The status server (/healthz, /readyz, /metrics) could not start: bad --status-listen or port in use."""


class ContainerRuntimeError(QtapError):
    """A container runtime API (podman/Docker socket, CRI) answered with an error or could not be reached."""


class ControlError(QtapError):
    """The control plane (users, configs, agents, audit) failed: store, settings or a refused request."""


class ControlAuthError(ControlError):
    """A control plane request is not authenticated (``status`` 401) or not allowed (403, 429 for too
    many failed logins)."""

    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


class ControlClientError(ControlError):
    """The agent's link to the control plane was refused in a way that retrying will not fix (a bad or
    revoked registration token or agent identity); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)
