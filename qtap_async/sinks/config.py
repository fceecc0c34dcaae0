"""Configuration of event and object stores (plain msgspec Structs; the main config imports them).

Qtap-style YAML::

    event_stores:
      - type: kafka
        brokers: ["127.0.0.1:9092"]
        topic: qtap-events
        buffer: {max_events: 100000, when_full: block}
        spool: {dir: /var/lib/qtap/spool, max_bytes: 1073741824, when_full: drop_oldest}
    object_stores:
      - type: s3
        endpoint: https://s3.eu-west-1.amazonaws.com
        bucket: qtap-objects
        region: eu-west-1
        access_key: {type: env, value: S3_ACCESS_KEY}
        secret_key: {type: env, value: S3_SECRET_KEY}
        access_url: "https://qtap-objects.s3.eu-west-1.amazonaws.com/{{KEY}}"

Secrets are value sources: ``{type: env, value: NAME}`` reads an environment variable, ``{type: text,
value: ...}`` is the value itself (a bare string means the same).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec

from qtap_async.errors import ConfigError
from qtap_async.sinks.retention import Duration

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


class ValueSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["env", "text"]
    value: str

    def resolve(self, what: str = "value") -> str:
        if self.type == "text":
            return self.value
        got = os.environ.get(self.value)
        if got is None:
            raise ConfigError(f"{what}: environment variable {self.value} is not set")
        return got


Secret = ValueSource | str


def resolve(source: Secret | None, what: str) -> str | None:
    """The value of a value source (or a plain string); None stays None."""
    if source is None or isinstance(source, str):
        return source
    return source.resolve(what)


class BufferConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The in-memory queue in front of one store and how batches are cut from it."""

    max_events: PositiveInt = 100_000
    max_bytes: PositiveInt = 64 << 20
    when_full: Literal["block", "drop_newest"] = "block"
    batch_max_events: PositiveInt = 500
    batch_max_bytes: PositiveInt = 1 << 20
    linger: NonNegFloat = 0.05  # seconds to wait for a batch to fill after its first event


class RetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Backoff for transient errors; after ``spool_after`` seconds of failing, batches go to the spool."""

    initial: Annotated[float, msgspec.Meta(gt=0)] = 0.1
    maximum: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.2
    spool_after: NonNegFloat = 2.0


class SpoolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The durable on-disk spool (one subdirectory per store under ``dir``)."""

    dir: str
    max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 1 << 30
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    fsync: bool = False


class _Store(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    name: str = ""  # for metrics and spool directory; defaults to the type
    buffer: BufferConfig = msgspec.field(default_factory=BufferConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    spool: SpoolConfig | None = None
    shutdown_timeout: NonNegFloat = 10.0  # seconds to keep delivering at exit before leaving data in the spool
    check_on_start: bool = True  # fail start-up when the store is unusable (else start and spool)


# ------------------------------------------------------------------------------------------- event stores
class StdoutEventStore(_Store, frozen=True, tag="stdout"):
    pass


class DisabledEventStore(_Store, frozen=True, tag="disabled"):
    pass


class KafkaTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: Secret | None = None
    insecure: bool = False  # skip certificate and host name verification (test clusters only)


class KafkaSasl(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: Secret = ""
    password: Secret = ""


class KafkaEventStore(_Store, frozen=True, tag="kafka"):
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


class PulseEventStore(_Store, frozen=True, tag="pulse"):
    url: str  # the Pulse service, e.g. https://pulse.example.com (batches go to <url>/v1/events)
    token: Secret
    ca_file: str | None = None
    insecure: bool = False
    gzip: bool = True
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class OtelEventStore(_Store, frozen=True, tag="otel"):
    """``type: otel``: OTLP export of spans, RED metrics and logs (the sink: sinks/otel.py; docs/otel.md)."""

    endpoint: str = "http://127.0.0.1:4318"  # OTLP/HTTP: signals go to <endpoint>/v1/traces ...; gRPC: host:port
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    headers: dict[str, Secret] = {}  # e.g. {authorization: {type: env, value: OTLP_TOKEN}}
    compression: Literal["gzip", "none"] = "gzip"
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    ca_file: str | None = None
    insecure: bool = False  # skip TLS certificate checks (test setups only)
    traces: bool = True  # a span per HTTP/gRPC transaction
    logs: bool = True  # log records for connection, DNS and issue events
    metrics: bool = True  # RED metrics of the transactions
    metrics_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # seconds between metric exports
    max_series: PositiveInt = 2000  # metric series before route/server fold into "other"
    routes: list[str] = []  # http.route templates, first match wins: "/users/{id}", "/static/*"
    route_heuristic: bool = True  # no template matched: id-like path segments become {id}
    resource_attributes: dict[str, str] = {}  # added to every resource (deployment.environment.name, ...)


EventStoreConfig = StdoutEventStore | KafkaEventStore | PulseEventStore | OtelEventStore | DisabledEventStore


# ------------------------------------------------------------------------------------------ object stores
class StdoutObjectStore(_Store, frozen=True, tag="stdout"):
    pass


class DisabledObjectStore(_Store, frozen=True, tag="disabled"):
    pass


class DirObjectStore(_Store, frozen=True, tag="dir"):
    path: str
    key: str = "{{DIGEST}}"  # key template, see templates.py
    fsync: bool = False
    access_url: str = "file://{{PATH}}"
    retention: Duration | None = None  # objects older than this are deleted (30d, 12h...)
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None  # past this total, the oldest are deleted
    prune_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # seconds between pruning passes


class S3ObjectStore(_Store, frozen=True, tag="s3"):
    bucket: str
    retention: Duration | None = None  # a lifecycle rule expires objects after this long (whole days, rounded up)
    retention_prefix: str = ""  # only objects under this prefix ("" = the whole bucket)
    endpoint: str | None = None  # None = AWS S3 for the region
    region: str = "us-east-1"
    access_key: Secret | None = None  # None = the default AWS credential chain
    secret_key: Secret | None = None
    session_token: Secret | None = None
    insecure: bool = False  # plain http to the endpoint is allowed; also skips TLS certificate checks
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    sse: Literal["none", "AES256", "aws:kms"] = "none"
    sse_kms_key_id: str | None = None
    key: str = "{{DIGEST}}"  # key template, see templates.py
    access_url: str = "s3://{{BUCKET}}/{{KEY}}"  # template of the link stored in the reference event
    # Newer botocore adds CRC checksum headers/trailers to every upload; many S3-compatible stores (GCS among
    # them) reject those, so only send checksums where the API requires them.
    checksums: Literal["when_required", "when_supported"] = "when_required"
    concurrency: PositiveInt = 8  # uploads in flight at once
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0


ObjectStoreConfig = StdoutObjectStore | DirObjectStore | S3ObjectStore | DisabledObjectStore


def store_name(cfg: EventStoreConfig | ObjectStoreConfig) -> str:
    if cfg.name:
        return cfg.name
    tag = type(cfg).__struct_config__.tag
    return str(tag)
