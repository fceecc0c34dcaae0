"""Event store on Kafka with aiokafka: idempotent producer, acks=all, key = connection id.

Keying by connection id sends all events of one connection to one partition, so they keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Annotated, Any, Literal

import msgspec

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.settings import SecretOrText
from qtap_async.sinks.base import EventRecord, EventStoreSettings, PositiveInt


class KafkaTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: SecretOrText | None = None
    insecure: bool = False  # skip certificate and host name verification (test clusters only)


class KafkaSasl(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: SecretOrText = ""
    password: SecretOrText = ""


class KafkaEventStore(EventStoreSettings, frozen=True, tag="kafka"):
    """``type: kafka`` event store (docs/config.md)."""

    brokers: list[str]
    topic: str
    client_id: str = "qtap"
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    key_field: str = "conn_id"  # attribute of an event whose value keys its Kafka record
    linger_ms: Annotated[int, msgspec.Meta(ge=0)] = 5
    max_batch_bytes: PositiveInt = 1 << 20
    max_request_bytes: PositiveInt = 4 << 20
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0

_PERMANENT = ("MessageSizeTooLargeError", "RecordTooLargeError", "RecordListTooLargeError",
              "InvalidRecordError", "CorruptRecordException", "UnsupportedForMessageFormatError")


class KafkaEventSink:
    def __init__(
        self,
        brokers: list[str],
        topic: str,
        *,
        client_id: str = "qtap",
        security_protocol: str = "PLAINTEXT",
        ssl_context: ssl.SSLContext | None = None,
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        compression: str = "zstd",
        linger_ms: int = 5,
        max_batch_bytes: int = 1 << 20,
        max_request_bytes: int = 4 << 20,
        request_timeout: float = 10.0,
        name: str = "kafka",
    ) -> None:
        self.name = name
        self.brokers = brokers
        self.topic = topic
        self._kwargs: dict[str, Any] = {
            "bootstrap_servers": brokers,
            "client_id": client_id,
            "security_protocol": security_protocol,
            "ssl_context": ssl_context,
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": None if compression == "none" else compression,
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_bytes,
            "max_request_size": max_request_bytes,
            "request_timeout_ms": int(request_timeout * 1000),
            "retry_backoff_ms": 100,
            "metadata_max_age_ms": 30_000,
        }
        if sasl_mechanism:
            self._kwargs.update(sasl_mechanism=sasl_mechanism, sasl_plain_username=sasl_username,
                                sasl_plain_password=sasl_password)
        self.request_timeout = request_timeout
        self._producer: Any = None
        self._where = f"event store {name} (topic {topic!r} on {','.join(brokers)})"

    async def start(self) -> None:
        """Nothing to do up front: the producer connects on first use (so a store that is down at
        start-up only delays delivery when ``check_on_start`` is off)."""
        return None

    async def _ensure_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

        try:
            producer = AIOKafkaProducer(**self._kwargs)
        except RuntimeError as exc:  # e.g. the compression codec's library is missing
            raise SinkError(f"{self._where}: {exc}") from exc
        try:
            async with asyncio.timeout(self.request_timeout + 5):
                await producer.start()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            if isinstance(exc, Exception):
                raise _classify(self._where, "connect", exc) from exc
            raise
        self._producer = producer
        return producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await producer.stop()

    async def check(self) -> None:
        """SinkError when the brokers are unreachable, the credentials are refused or the topic is unknown."""
        try:
            producer = await self._ensure_producer()
            async with asyncio.timeout(self.request_timeout):
                cluster = await producer.client.fetch_all_metadata()
        except SinkTransientError as exc:
            raise SinkError(await self._why_unreachable() or str(exc)) from exc
        except TimeoutError as exc:
            await self._drop_producer()
            raise SinkError(f"{self._where}: no metadata from the brokers in {self.request_timeout}s") from exc
        if self.topic not in cluster.topics():
            await self._drop_producer()
            raise SinkError(f"{self._where}: unknown topic {self.topic!r} (create it; brokers do not "
                            "auto-create topics for this producer)")
        if self.topic in getattr(cluster, "unauthorized_topics", ()):
            await self._drop_producer()
            raise SinkError(f"{self._where}: not authorized to write to topic {self.topic!r}")

    async def _why_unreachable(self) -> str | None:
        """aiokafka reports any bootstrap failure as 'Unable to bootstrap': connect to each broker directly
        to name the real reason (refused, wrong credentials, TLS...)."""
        from aiokafka.conn import create_conn  # type: ignore[import-untyped]

        reasons = []
        for broker in self.brokers:
            host, _, port = broker.rpartition(":")
            kw = {k: self._kwargs[k] for k in ("client_id", "ssl_context", "security_protocol")}
            for k in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
                if k in self._kwargs:
                    kw[k] = self._kwargs[k]
            try:
                async with asyncio.timeout(self.request_timeout):
                    conn = await create_conn(host.strip("[]") or "localhost", int(port or 9092),
                                             request_timeout_ms=int(self.request_timeout * 1000), **kw)
                conn.close()
            except Exception as exc:
                reason = _classify(self._where, "connect", exc)
                reasons.append(f"{broker}: {str(reason).removeprefix(self._where + ': ')}")
        return f"{self._where}: {'; '.join(reasons)}" if reasons else None

    async def send(self, batch: list[EventRecord]) -> None:
        producer = await self._ensure_producer()
        try:
            futures = [await producer.send(self.topic, value=r.value, key=r.key) for r in batch]
            results = await asyncio.gather(*futures, return_exceptions=True)
        except Exception as exc:
            await self._drop_producer()
            raise _classify(self._where, "send", exc) from exc
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # Some records may have been written: the batch is retried whole (at-least-once). A fresh
            # producer gets a new producer id, so sequence numbers never stall after an outage.
            await self._drop_producer()
            raise _classify(self._where, "send", errors[0]) from errors[0]

    async def close(self) -> None:
        await self._drop_producer()


def _classify(where: str, what: str, exc: BaseException) -> SinkError | SinkTransientError:
    name = type(exc).__name__
    msg = f"{where}: {what}: {name}: {exc}".rstrip(": ")
    if name in _PERMANENT:
        return SinkError(msg)
    if name in ("SaslAuthenticationFailed", "AuthenticationFailedError", "UnsupportedSaslMechanismError",
                "IllegalSaslStateError"):
        return SinkTransientError(f"{where}: {what}: wrong credentials or SASL settings: {name}: {exc}")
    if isinstance(exc, ssl.SSLError):
        return SinkTransientError(f"{where}: {what}: TLS handshake failed: {exc}")
    if name == "KafkaConnectionError" or isinstance(exc, OSError | TimeoutError):
        return SinkTransientError(f"{where}: {what}: brokers unreachable: {name}: {exc}")
    return SinkTransientError(msg)


def make_ssl_context(ca_file: str | None, cert_file: str | None, key_file: str | None,
                     key_password: str | None, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file, key_password)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
