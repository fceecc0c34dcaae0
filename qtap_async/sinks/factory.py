"""Sinks and runners from configuration Structs."""

from __future__ import annotations

from typing import Any

from qtap_async.errors import ConfigError, SinkError
from qtap_async.events.objects import ObjectRef
from qtap_async.sinks.base import EventSink, ObjectSink
from qtap_async.sinks.config import (
    DirObjectStore,
    DisabledEventStore,
    DisabledObjectStore,
    EventStoreConfig,
    KafkaEventStore,
    ObjectStoreConfig,
    PulseEventStore,
    S3ObjectStore,
    StdoutEventStore,
    StdoutObjectStore,
    resolve,
    store_name,
)
from qtap_async.sinks.dir import DirObjectSink
from qtap_async.sinks.kafka import KafkaEventSink, make_ssl_context
from qtap_async.sinks.otel import OtelEventStore, build_otel_sink
from qtap_async.sinks.pulse import PulseEventSink
from qtap_async.sinks.runner import EventSinkRunner, ObjectSinkRunner
from qtap_async.sinks.s3 import S3ObjectSink
from qtap_async.sinks.stdout import DisabledEventSink, DisabledObjectSink, StdoutEventSink, StdoutObjectSink


def build_event_sink(cfg: EventStoreConfig) -> EventSink:
    """The sink for an event store config; secrets are resolved here (ConfigError when missing)."""
    name = store_name(cfg)
    if isinstance(cfg, StdoutEventStore):
        return StdoutEventSink(name)
    if isinstance(cfg, DisabledEventStore):
        return DisabledEventSink(name)
    if isinstance(cfg, KafkaEventStore):
        if not cfg.brokers:
            raise ConfigError(f"event store {name}: brokers is empty")
        ctx = None
        if cfg.tls is not None:
            t = cfg.tls
            try:
                ctx = make_ssl_context(t.ca_file, t.cert_file, t.key_file,
                                       resolve(t.key_password, f"event store {name}: tls.key_password"), t.insecure)
            except OSError as exc:
                raise SinkError(f"event store {name}: TLS files: {exc}") from exc
        sasl = cfg.sasl
        protocol = {(False, False): "PLAINTEXT", (True, False): "SSL", (False, True): "SASL_PLAINTEXT",
                    (True, True): "SASL_SSL"}[(ctx is not None, sasl is not None)]
        return KafkaEventSink(
            cfg.brokers, cfg.topic, client_id=cfg.client_id, security_protocol=protocol, ssl_context=ctx,
            sasl_mechanism=sasl.mechanism if sasl else None,
            sasl_username=resolve(sasl.username, f"event store {name}: sasl.username") if sasl else None,
            sasl_password=resolve(sasl.password, f"event store {name}: sasl.password") if sasl else None,
            compression=cfg.compression, linger_ms=cfg.linger_ms, max_batch_bytes=cfg.max_batch_bytes,
            max_request_bytes=cfg.max_request_bytes, request_timeout=cfg.request_timeout, name=name,
        )
    if isinstance(cfg, PulseEventStore):
        token = resolve(cfg.token, f"event store {name}: token") or ""
        return PulseEventSink(cfg.url, token, ca_file=cfg.ca_file, insecure=cfg.insecure, use_gzip=cfg.gzip,
                              timeout=cfg.timeout, name=name)
    if isinstance(cfg, OtelEventStore):
        return build_otel_sink(cfg, name)
    raise ConfigError(f"unknown event store type {type(cfg).__name__}")


def build_object_sink(cfg: ObjectStoreConfig) -> ObjectSink:
    name = store_name(cfg)
    if isinstance(cfg, StdoutObjectStore):
        return StdoutObjectSink(name)
    if isinstance(cfg, DisabledObjectStore):
        return DisabledObjectSink(name)
    if isinstance(cfg, DirObjectStore):
        return DirObjectSink(cfg.path, key=cfg.key, access_url=cfg.access_url, fsync=cfg.fsync, name=name,
                             retention=cfg.retention, max_bytes=cfg.max_bytes, prune_interval=cfg.prune_interval)
    if isinstance(cfg, S3ObjectStore):
        if (cfg.access_key is None) != (cfg.secret_key is None):
            raise ConfigError(f"object store {name}: set both access_key and secret_key, or neither")
        return S3ObjectSink(
            cfg.bucket, endpoint=cfg.endpoint, region=cfg.region,
            access_key=resolve(cfg.access_key, f"object store {name}: access_key"),
            secret_key=resolve(cfg.secret_key, f"object store {name}: secret_key"),
            session_token=resolve(cfg.session_token, f"object store {name}: session_token"),
            insecure=cfg.insecure, addressing_style=cfg.addressing_style, sse=cfg.sse,
            sse_kms_key_id=cfg.sse_kms_key_id, key=cfg.key, access_url=cfg.access_url, checksums=cfg.checksums,
            concurrency=cfg.concurrency, timeout=cfg.timeout, name=name,
            retention=cfg.retention, retention_prefix=cfg.retention_prefix,
        )
    raise ConfigError(f"unknown object store type {type(cfg).__name__}")


def _runner_kw(cfg: EventStoreConfig | ObjectStoreConfig) -> dict[str, Any]:
    return {"buffer": cfg.buffer, "retry": cfg.retry, "spool": cfg.spool, "shutdown_timeout": cfg.shutdown_timeout,
            "check_on_start": cfg.check_on_start}


def build_event_runner(cfg: EventStoreConfig) -> EventSinkRunner:
    key_field = cfg.key_field if isinstance(cfg, KafkaEventStore) else "conn_id"
    return EventSinkRunner(build_event_sink(cfg), key_field=key_field, **_runner_kw(cfg))


def build_object_runner(cfg: ObjectStoreConfig, refs_to: EventSinkRunner | None = None) -> ObjectSinkRunner:
    """An object store runner; with ``refs_to``, each stored object's ObjectRef is sent to that event
    store (never waiting: a full event queue drops and counts the reference)."""
    on_ref = None
    if refs_to is not None:
        channel = refs_to.channel

        def on_ref(ref: ObjectRef) -> None:
            if not channel.closed:
                channel.send_nowait(ref)

    concurrency = cfg.concurrency if isinstance(cfg, S3ObjectStore) else 1
    return ObjectSinkRunner(build_object_sink(cfg), on_ref=on_ref, concurrency=concurrency, **_runner_kw(cfg))
