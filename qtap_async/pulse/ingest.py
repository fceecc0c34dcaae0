"""The ingestion path shared by HTTP and Kafka: body decoding, sanitation, encoding, batched writes.

``decode_body`` turns a request body into raw items; ``Sanitizer.prepare`` validates each item with
msgspec (a bad item becomes an ``ItemError``, the rest go on), fixes event times for clock skew and
encodes accepted events as JSONEachRow rows stamped with the team and agent of the token; ``BatchWriter``
coalesces concurrent batches into one INSERT per table (a group commit: a caller's ``write`` returns
once its rows are in storage).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from qtap_async.errors import BodyError
from qtap_async.events import ConnectionEvent
from qtap_async.events.times import parse_ns
from qtap_async.pulse.bounds import TABLE_OF, Event, bounded
from qtap_async.pulse.config import IngestLimits, Retention
from qtap_async.pulse.metrics import Metrics
from qtap_async.pulse.schema import Batch, IngestResult, ItemError
from qtap_async.pulse.storage import Storage
from qtap_async.pulse.wire import decompress
from qtap_async.telemetry.metrics import (
    PULSE_EVENTS_ACCEPTED,
    PULSE_EVENTS_REJECTED,
    PULSE_EVENTS_SKEW_CORRECTED,
    PULSE_EVENTS_STRIPPED,
    PULSE_INSERT_BATCHES,
    PULSE_INSERT_ERRORS,
    PULSE_INSERT_ROWS,
    PULSE_INSERT_SECONDS,
)

RunBlocking = Callable[..., Awaitable[Any]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONNECTION = bounded(ConnectionEvent)
_NS_PER_DAY = 86_400 * 10**9

# Keys that carry header values or bodies. They are never stored in any case (the decoder drops every
# field the schema does not name); spotting them only feeds the ``stripped`` count and a metric.
_FORBIDDEN = (
    "headers",
    "request_headers",
    "response_headers",
    "req_headers",
    "resp_headers",
    "body",
    "request_body",
    "response_body",
    "req_body",
    "resp_body",
    "cookie",
    "cookies",
    "authorization",
    "set_cookie",
    "payload",
)
_FORBIDDEN_JSON = re.compile(rb'"(?:' + b"|".join(k.encode() for k in _FORBIDDEN) + rb')"\s*:')
_FORBIDDEN_MSGPACK = re.compile(b"|".join(re.escape(bytes([0xA0 | len(k)]) + k.encode()) for k in _FORBIDDEN))
# Substrings one of which every forbidden key contains: a body without any of them needs no per-item scan.
_MARKERS = (b"header", b"body", b"cookie", b"authorization", b"payload")


class Format:
    """JSON or msgpack: the envelope decoder and the per-item decoder."""

    def __init__(self, name: str, module: Any) -> None:
        self.name = name
        self.envelope = module.Decoder(Batch | list[msgspec.Raw])
        self.item = module.Decoder(Event)
        self.forbidden = _FORBIDDEN_JSON if name == "json" else _FORBIDDEN_MSGPACK


JSON = Format("json", msgspec.json)
MSGPACK = Format("msgpack", msgspec.msgpack)


def format_for(content_type: str) -> Format:
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct in ("", "application/json", "text/json"):
        return JSON
    if ct in ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack"):
        return MSGPACK
    raise BodyError(415, f"unsupported Content-Type {content_type!r}; use application/json or application/msgpack")


class DecodedBody(NamedTuple):
    fmt: Format
    items: list[msgspec.Raw]
    sent_at: int | datetime | None
    data: bytes  # the decompressed body the items point into


def decode_body(body: bytes, content_type: str, content_encoding: str, limits: IngestLimits) -> DecodedBody:
    """Raw items and the batch ``sent_at`` of a POST /v1/events body; BodyError when unusable."""
    fmt = format_for(content_type)
    if len(body) > limits.max_body_bytes:
        raise BodyError(413, f"body is {len(body)} bytes; the limit is {limits.max_body_bytes}")
    data = decompress(body, content_encoding, limits.max_decoded_bytes)
    try:
        env = fmt.envelope.decode(data)
    except msgspec.ValidationError as e:
        raise BodyError(400, f'body must be an array of events or {{"events": [...]}}: {e}') from e
    except msgspec.DecodeError as e:
        raise BodyError(400, f"malformed {fmt.name}: {e}") from e
    except RecursionError:
        # msgspec bounds nesting by the interpreter's recursion limit; no event nests more than 3 deep.
        raise BodyError(400, f"malformed {fmt.name}: nested too deeply") from None
    items, sent_at = (env.events, env.sent_at) if isinstance(env, Batch) else (env, None)
    if isinstance(sent_at, float):
        if not (math.isfinite(sent_at) and sent_at.is_integer() and 0 <= sent_at < 2**63):
            raise BodyError(400, f"sent_at {sent_at!r} is not an epoch-nanosecond time")
        sent_at = int(sent_at)
    if len(items) > limits.max_batch_events:
        raise BodyError(413, f"batch has {len(items)} events; the limit is {limits.max_batch_events}")
    return DecodedBody(fmt, items, sent_at, data)


def to_ns(ts: int | str | datetime) -> int:
    """Epoch ns of a time as decoded; ValueError for RFC 3339 text naming a date that does not exist."""
    if isinstance(ts, int):
        return ts
    if isinstance(ts, str):
        return parse_ns(ts)  # exact: a datetime would round the agent's nanoseconds
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


class Prepared(msgspec.Struct, gc=False):
    rows: dict[str, list[bytes]]
    result: IngestResult


class Sanitizer:
    """Validates and encodes items. Pure CPU work, no I/O: safe to run in a worker thread."""

    def __init__(self, limits: IngestLimits, retention: Retention, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.retention_ns = {t: getattr(retention, t) * _NS_PER_DAY for t in TABLE_OF.values()}
        self.metrics = metrics or Metrics()
        self._encoder = msgspec.json.Encoder()

    def prepare(
        self,
        fmt: Format,
        items: Sequence[msgspec.Raw],
        team: str,
        agent: str = "",
        reference_ns: int | None = None,
        sent_at: int | datetime | None = None,
        body: bytes | None = None,
    ) -> Prepared:
        """Validate ``items``; rows per table for the valid ones, an error per invalid one.

        ``reference_ns`` is "now" for skew decisions: the receive time for HTTP, the message
        timestamp for Kafka (so a replayed message is judged the same way twice). ``body``, the
        buffer the items come from, lets a clean batch skip the per-item scan for forbidden keys.
        """
        received_ms = time.time_ns() // 1_000_000
        ref = time.time_ns() if reference_ns is None else reference_ns
        tolerance = self.limits.max_clock_skew_s * 10**9
        # The agent clock's offset from ours, applied to every event when beyond the tolerance.
        offset = 0
        if sent_at is not None:
            skew = ref - to_ns(sent_at)
            if abs(skew) > tolerance:
                offset = skew
        enc = self._encoder.encode
        prefix = (
            b'{"team":' + enc(team) + b',"agent":' + enc(agent) + b',"received_at":' + str(received_ms).encode() + b","
        )
        rows: dict[str, list[bytes]] = {t: [] for t in TABLE_OF.values()}
        errors: list[ItemError] = []
        stripped = corrected = 0
        decode = fmt.item.decode
        forbidden = fmt.forbidden.search
        scan = body is None or any(m in body for m in _MARKERS)
        max_item = self.limits.max_event_bytes
        for index, raw in enumerate(items):
            if len(raw) > max_item:
                errors.append(ItemError(index, f"event is {len(raw)} bytes; the limit is {max_item}"))
                continue
            try:
                ev = decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                errors.append(ItemError(index, str(e)))
                continue
            except RecursionError:
                errors.append(ItemError(index, "nested too deeply"))
                continue
            table = TABLE_OF[type(ev)]
            try:
                ts = ev.ts if type(ev.ts) is int else to_ns(ev.ts)
            except ValueError as e:  # matches the pattern, names no real date ("2026-02-30T...")
                errors.append(ItemError(index, f"ts: {e}", ev.id))
                continue
            ts += offset
            clamped = ts > ref + tolerance
            if clamped:
                ts = ref
            if ts < ref - self.retention_ns[table]:
                errors.append(ItemError(index, f"ts is older than the {table} retention", ev.id))
                continue
            if ts != ev.ts:
                ev = msgspec.structs.replace(ev, ts=ts)
            if clamped or offset:
                corrected += 1
            if scan and forbidden(raw) is not None:
                stripped += 1
            rows[table].append(prefix + self._row(table, ev)[1:])
        accepted = len(items) - len(errors)
        m = self.metrics
        m.inc(PULSE_EVENTS_ACCEPTED, accepted)
        m.inc(PULSE_EVENTS_REJECTED, len(errors))
        m.inc(PULSE_EVENTS_STRIPPED, stripped)
        m.inc(PULSE_EVENTS_SKEW_CORRECTED, corrected)
        return Prepared(rows, IngestResult(accepted, len(errors), errors, stripped, corrected))


    def _row(self, table: str, ev: Any) -> bytes:
        """The JSON object one event is stored as (the table's landing shape)."""
        enc = self._encoder.encode
        if table == "records":
            # The event whole in `data` (only the schema's fields: the decoder dropped the rest).
            return enc({"type": type(ev).__struct_config__.tag, "id": ev.id, "ts": ev.ts, "conn_id": ev.conn_id,
                        "pid": getattr(ev, "pid", 0), "data": enc(ev).decode()})
        if type(ev) is _CONNECTION and (getattr(ev, "owners", None) or getattr(ev, "container_labels", None)):
            row = msgspec.structs.asdict(ev)
            for k in ("owners", "container_labels"):  # String columns holding JSON
                if row[k]:
                    row[k] = enc(row[k]).decode()
                else:
                    del row[k]
            return enc(row)
        return enc(ev)


class BatchWriter:
    """Group commit: batches handed in while an INSERT runs go out together in the next one.

    One INSERT per table per round, one round at a time; ``write`` returns when its rows are stored
    and raises what the storage raised (the caller then answers 503 or does not commit its offsets).
    """

    def __init__(self, storage: Storage, run_blocking: RunBlocking, metrics: Metrics, max_rows: int = 100_000) -> None:
        self.storage = storage
        self._run_blocking = run_blocking
        self.metrics = metrics
        self.max_rows = max_rows
        self._pending: list[tuple[dict[str, list[bytes]], int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pulse-batch-writer")

    async def write(self, rows: dict[str, list[bytes]]) -> None:
        n = sum(len(v) for v in rows.values())
        if n == 0:
            return
        if self._task is None or self._task.done():
            raise RuntimeError("BatchWriter is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, n, fut))
        self._wake.set()
        await fut

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _insert(self, merged: dict[str, list[bytes]]) -> None:
        for table, chunks in merged.items():
            if chunks:
                t0 = time.perf_counter()
                self.storage.insert(table, b"\n".join(chunks))
                self.metrics.observe(PULSE_INSERT_SECONDS, time.perf_counter() - t0)
                self.metrics.inc(PULSE_INSERT_ROWS, len(chunks), table=table)
                self.metrics.inc(PULSE_INSERT_BATCHES, 1, table=table)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                take, total = 0, 0
                while take < len(self._pending) and (take == 0 or total + self._pending[take][1] <= self.max_rows):
                    total += self._pending[take][1]
                    take += 1
                round_, self._pending = self._pending[:take], self._pending[take:]
                merged: dict[str, list[bytes]] = {}
                for rows, _, _ in round_:
                    for table, chunks in rows.items():
                        merged.setdefault(table, []).extend(chunks)
                try:
                    await self._run_blocking(self._insert, merged)
                except Exception as e:
                    self.metrics.inc(PULSE_INSERT_ERRORS, 1)
                    for _, _, fut in round_:
                        if not fut.done():
                            fut.set_exception(e)
                else:
                    for _, _, fut in round_:
                        if not fut.done():
                            fut.set_result(None)
            if self._closing:
                return
