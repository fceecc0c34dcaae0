"""OTLP transports for the otel event store: HTTP/protobuf (``POST <endpoint>/v1/<signal>``) and gRPC
(the collector services' ``Export`` methods), both carrying serialized protobuf bytes built elsewhere.

Failures are classified the way the OTLP specification says a client retries: HTTP 429/502/503/504 and
gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE, DATA_LOSS
(and every network error) are transient; so are 401/403 and UNAUTHENTICATED/PERMISSION_DENIED, as for
the Pulse store: a rotated token can be fixed while the data waits in the spool. Any other refusal is
permanent (``SinkError``: the runner drops the batch and counts it).
"""

from __future__ import annotations

import gzip
import ssl
from typing import Literal, Protocol

import grpc  # type: ignore[import-untyped]
import httpx

from qtap_async.errors import ConfigError, SinkError, SinkTransientError

Signal = Literal["traces", "metrics", "logs"]

_GRPC_METHODS: dict[Signal, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
_HTTP_RETRYABLE = {429, 502, 503, 504, 401, 403}


class OtlpTransport(Protocol):
    where: str

    async def export(self, signal: Signal, payload: bytes) -> bytes:
        """Send one serialized Export*ServiceRequest; returns the serialized response (partial success)."""

    async def close(self) -> None: ...


class HttpTransport:
    """OTLP/HTTP with binary protobuf bodies, gzip-compressed unless ``compression`` is "none"."""

    def __init__(self, endpoint: str, *, headers: dict[str, str] | None = None, compression: str = "gzip",
                 timeout: float = 10.0, ca_file: str | None = None, insecure: bool = False,
                 name: str = "otel") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.where = f"event store {name} (OTLP/HTTP {self.endpoint})"
        self.compression = compression
        verify: ssl.SSLContext | bool = True
        if insecure:
            verify = False
        elif ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        hdrs = {"Content-Type": "application/x-protobuf", "User-Agent": "qtap-async"}
        if compression == "gzip":
            hdrs["Content-Encoding"] = "gzip"
        hdrs.update(headers or {})
        # Retries are the runner's (with the spool behind it): the client tries each request once.
        self._client = httpx.AsyncClient(headers=hdrs, timeout=timeout, verify=verify, trust_env=False)

    async def export(self, signal: Signal, payload: bytes) -> bytes:
        body = gzip.compress(payload, compresslevel=1) if self.compression == "gzip" else payload
        url = f"{self.endpoint}/v1/{signal}"
        try:
            resp = await self._client.post(url, content=body)
        except httpx.HTTPError as exc:
            raise SinkTransientError(f"{self.where}: {signal}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code // 100 == 2:
            return resp.content if resp.headers.get("content-type", "").startswith("application/x-protobuf") else b""
        # The body is a google.rpc.Status (protobuf) or text: show a bounded, printable part of it.
        detail = resp.content[:200].decode("utf-8", "replace").strip()
        msg = f"{self.where}: {signal}: HTTP {resp.status_code} {detail}".rstrip()
        if resp.status_code in _HTTP_RETRYABLE:
            raise SinkTransientError(msg)
        raise SinkError(msg)

    async def close(self) -> None:
        await self._client.aclose()


class GrpcTransport:
    """OTLP/gRPC on one channel (TLS when the endpoint is https:// or ``ca_file`` is set)."""

    def __init__(self, endpoint: str, *, headers: dict[str, str] | None = None, compression: str = "gzip",
                 timeout: float = 10.0, ca_file: str | None = None, insecure: bool = False,
                 name: str = "otel") -> None:
        scheme, sep, rest = endpoint.partition("://")
        target = rest if sep else endpoint
        use_tls = (scheme == "https" if sep else False) or bool(ca_file)
        if use_tls and insecure:
            # grpcio has no switch to skip certificate checks: say so rather than pretend.
            raise ConfigError(f"event store {name}: insecure is not supported with protocol grpc; give the "
                              "endpoint's CA in ca_file")
        self.where = f"event store {name} (OTLP/gRPC {endpoint})"
        self.timeout = timeout
        # gRPC metadata keys are lower case: a header named "Authorization" in the config still works.
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        options: list[tuple[str, object]] = [("grpc.max_send_message_length", 64 << 20)]
        if use_tls:
            root = open(ca_file, "rb").read() if ca_file else None  # noqa: SIM115 - read once at start
            creds = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        # Bytes in, bytes out: the caller serializes (no serializer = the payload goes as it is).
        self._calls = {sig: self._channel.unary_unary(path) for sig, path in _GRPC_METHODS.items()}
        self._transient = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
                           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS,
                           grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}

    async def export(self, signal: Signal, payload: bytes) -> bytes:
        try:
            resp: bytes = await self._calls[signal](payload, timeout=self.timeout, metadata=self._metadata,
                                                    compression=self._compression)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            msg = f"{self.where}: {signal}: {code.name}: {exc.details()}"
            if code in self._transient:
                raise SinkTransientError(msg) from exc
            raise SinkError(msg) from exc
        return resp

    async def close(self) -> None:
        await self._channel.close()

