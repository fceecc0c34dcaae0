"""Record raw kernel records to a file, and replay them through the user-space pipeline without a kernel.

A replay runs the same graph as a live run (qtap_async.topology): ``Replayer`` drives its tracking stage
and local output synchronously (what the benchmark measures), ``replay_with_config`` runs the whole
graph of a config, stores included, with the file as its source (``qtap replay FILE --config``).

File format (little endian), version 1:

    magic        8 bytes  b"QTAPREC\\n"
    header       u16 format version, u16 kernel ABI version (qtap.h QTAP_ABI_VERSION), u32 meta length,
                 meta: JSON object (kernel release, host, command line, level, ...)
    records      repeated: u32 length, then the record exactly as the ring buffer delivered it
    end mark     u32 0 (a ring-buffer record is never empty)
    trailer      u32 length, JSON object: counters at the end of the recording and, optionally, the events
                 the live pipeline emitted for these records (so a replay can be checked against them)

A recording cut short (agent killed) has no end mark and no trailer; the reader still returns every
complete record. The records are kept raw, not decoded, so a replay runs the real decoder and a file
made with another ABI version is refused up front instead of being misread record by record.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from qtap_async.bpf import abi
from qtap_async.config import Config
from qtap_async.errors import QtapError
from qtap_async.topology.graph import AgentOptions, Graph
from qtap_async.topology.runtime import Agent
from qtap_async.topology.stage import TrackingStage
from qtap_async.topology.writer import StdoutWriter
from qtap_async.transforms.conntrack import Conntrack

MAGIC = b"QTAPREC\n"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<HHI")
_LEN = struct.Struct("<I")
Level = Literal["summary", "details", "full"]


class RecordFileError(QtapError):
    """A record file that cannot be read: bad magic, unknown format or ABI version, corrupt length."""


class RecordWriter:
    """Writes a record file; `write_batch` is called with each raw batch the pipeline processes."""

    def __init__(self, out: IO[bytes], meta: dict[str, Any] | None = None, abi_version: int = abi.ABI_VERSION) -> None:
        self.out = out
        self.records = 0
        self.bytes = 0
        self._closed = False
        meta_raw = msgspec.json.encode(meta or {})
        out.write(MAGIC + _HEADER.pack(FORMAT_VERSION, abi_version, len(meta_raw)) + meta_raw)

    def write_batch(self, batch: list[bytes]) -> None:
        pack = _LEN.pack
        # One write per batch: the recorder runs inside the pipeline and must stay cheap.
        self.out.write(b"".join(pack(len(r)) + r for r in batch))
        self.records += len(batch)
        self.bytes += sum(len(r) for r in batch)

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        raw = msgspec.json.encode(trailer or {})
        self.out.write(_LEN.pack(0) + _LEN.pack(len(raw)) + raw)
        self.out.flush()


@dataclass
class RecordFile:
    """A record file read into memory (fixtures and benchmark inputs are a few MiB)."""

    format_version: int
    abi_version: int
    meta: dict[str, Any]
    records: list[bytes]
    trailer: dict[str, Any] | None  # None when the recording was cut short

    @classmethod
    def load(cls, path: str | Path) -> RecordFile:
        return cls.parse(Path(path).read_bytes(), str(path))

    @classmethod
    def parse(cls, data: bytes, name: str = "<bytes>") -> RecordFile:
        if not data.startswith(MAGIC):
            raise RecordFileError(f"{name}: not a qtap record file (bad magic)")
        pos = len(MAGIC)
        if len(data) < pos + _HEADER.size:
            raise RecordFileError(f"{name}: truncated header")
        version, abi_version, meta_len = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        if version != FORMAT_VERSION:
            raise RecordFileError(f"{name}: record file format {version}, this build reads {FORMAT_VERSION}")
        if abi_version not in abi.READABLE_ABI_VERSIONS:
            raise RecordFileError(f"{name}: recorded with kernel ABI {abi_version}, this build decodes "
                                  f"ABI {', '.join(map(str, abi.READABLE_ABI_VERSIONS))}")
        try:
            meta = msgspec.json.decode(data[pos : pos + meta_len])
        except msgspec.DecodeError as exc:
            raise RecordFileError(f"{name}: bad metadata: {exc}") from exc
        pos += meta_len
        records: list[bytes] = []
        trailer: dict[str, Any] | None = None
        end = len(data)
        unpack = _LEN.unpack_from
        while pos + 4 <= end:
            (n,) = unpack(data, pos)
            pos += 4
            if n == 0:
                if pos + 4 <= end:
                    (tn,) = unpack(data, pos)
                    try:
                        trailer = msgspec.json.decode(data[pos + 4 : pos + 4 + tn])
                    except msgspec.DecodeError as exc:
                        raise RecordFileError(f"{name}: bad trailer: {exc}") from exc
                break
            if pos + n > end:
                break  # a record cut by the end of a killed recording: keep what is complete
            records.append(data[pos : pos + n])
            pos += n
        return cls(version, abi_version, meta, records, trailer)


class NullSink(io.RawIOBase):
    """Counts the encoded output bytes and drops them (replay measures the pipeline, not a disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(b)
        self.bytes += n
        return n


@dataclass
class ReplayResult:
    records: int = 0
    events: int = 0
    transactions: int = 0
    decode_errors: int = 0
    internal_errors: int = 0
    output_bytes: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    captured: list[Any] = field(default_factory=list)  # the events, when keep_events is set

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "captured"}


def is_transaction(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") == "http_transaction"


class Replayer:
    """The run's graph without the kernel and without the event loop.

    The graph of a run without a config file (the default config, local output at ``level``), driven
    synchronously: the channels between stages only move batches, so leaving them out measures the
    per-record work and nothing else.
    """

    def __init__(self, level: Level = "details", sink: IO[bytes] | None = None, keep_events: bool = False,
                 on_events: Callable[[list[Any]], None] | None = None) -> None:
        self.sink: IO[bytes] = sink if sink is not None else NullSink()  # type: ignore[assignment]
        self.local = StdoutWriter(out=self.sink)
        self.graph = Graph(None, AgentOptions(http_level=level, tls=False), local=self.local, sweep=False)
        self.options = self.graph.options
        self.stage: TrackingStage = self.graph.stage
        self.writer = self.graph.writer
        self.keep_events = keep_events
        self.on_events = on_events
        self.result = ReplayResult()
        self._last_ts = 0

    @property
    def conntrack(self) -> Conntrack:
        return self.graph.conntrack

    def _emit(self, events: list[Any]) -> None:
        if not events:
            return
        r = self.result
        r.events += len(events)
        r.transactions += sum(1 for e in events if is_transaction(e))
        if self.keep_events:
            r.captured.extend(events)
        if self.on_events is not None:
            self.on_events(events)
        self.writer.write(events)

    def feed(self, batch: list[bytes]) -> None:
        if batch:
            last = batch[-1]
            if len(last) >= abi.HDR.size:
                self._last_ts = max(self._last_ts, abi.HDR.unpack_from(last)[3])
        self.result.records += len(batch)
        self._emit(self.stage.process(batch))

    def finish(self) -> ReplayResult:
        """End of input: close what is still open (as the agent does at shutdown) and collect counters."""
        self._emit(self.stage.close_all(self._last_ts + 1))
        r = self.result
        r.decode_errors = self.stage.decode_errors
        r.internal_errors = self.stage.internal_errors
        if isinstance(self.sink, NullSink):
            r.output_bytes = self.sink.bytes
        return r


def replay(records: list[bytes], *, level: Level = "details", sink: IO[bytes] | None = None,
           batch_records: int = 256, keep_events: bool = False) -> ReplayResult:
    """Run `records` through the pipeline in batches of `batch_records`; CPU and wall time included."""
    rp = Replayer(level, sink, keep_events)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    for i in range(0, len(records), max(1, batch_records)):
        rp.feed(records[i : i + batch_records])
    r = rp.finish()
    r.cpu_s = time.process_time() - t_cpu
    r.wall_s = time.perf_counter() - t_wall
    return r


def iter_batches(records: list[bytes], n: int) -> Iterator[list[bytes]]:
    for i in range(0, len(records), n):
        yield records[i : i + n]


# Fields of an output event that legitimately differ between the live run and its replay: wall-clock
# time (the monotonic -> wall offset is taken when the pipeline starts) and process context read from
# /proc (the recorded processes are gone when the file is replayed).
VOLATILE_FIELDS = frozenset({"ts", "exe", "comm", "container_id", "cmdline", "user", "uid", "event_id", "id"})


def comparable(event: Any) -> dict[str, Any]:
    """An output event without its volatile fields, as plain JSON types."""
    d = msgspec.json.decode(msgspec.json.encode(event))
    if not isinstance(d, dict):
        return {"value": d}
    return {k: v for k, v in d.items() if k not in VOLATILE_FIELDS}


async def replay_with_config(records: list[bytes], config: Config, options: AgentOptions | None = None, *,
                             batch_records: int = 256, keep: Callable[[Any], None] | None = None) -> Agent:
    """Run ``records`` through the graph of ``config`` (its filters, stacks and stores) as a live run
    would, the file as the source; returns the finished agent (its ``snapshot`` has every counter).
    ``keep`` sees every event and object that reaches the writer."""
    opts = options or AgentOptions(tls=False, status_listen="", container_metadata=False)
    rt = Agent(opts, config=config, replay=records, batch_records=batch_records)
    if keep is not None:
        seen = keep

        def observe(item: Any) -> bool:
            seen(item)
            return True

        rt.writer.keep = observe
    await rt.run(install_signals=False)
    return rt


# -- recording ---------------------------------------------------------------------------------------
def recording_meta(level: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import os
    import platform
    import sys

    meta: dict[str, Any] = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "host": platform.node(),
        "created_unix_s": round(time.time(), 3),
        "command": " ".join(sys.argv),
        "pid": os.getpid(),
        "level": level,
        "chunk_size": abi.CHUNK_SIZE,
    }
    meta.update(extra or {})
    return meta


class Recording:
    """A run wired to record: its stage tees raw batches into a RecordWriter; `finish` writes the
    trailer with the run's counters and (optionally) the events it emitted live. With ``config``, the
    config's graph runs live (its stores get the events), and the trailer keeps what reached the writer."""

    def __init__(self, out: IO[bytes], options: AgentOptions | None = None, *, events_out: IO[bytes] | None = None,
                 embed_events: bool = False, meta: dict[str, Any] | None = None, config: Config | None = None,
                 path: Any = None) -> None:
        opts: AgentOptions = options or AgentOptions()
        self.embed_events = embed_events
        self.events: list[Any] = []
        keep = self.events

        class _Writer(StdoutWriter):
            def write(self, events: list[Any]) -> None:
                if embed_events:
                    keep.extend(events)
                if events_out is not None:
                    super().write(events)
                else:
                    self.written += len(events)

        self.writer = RecordWriter(out, recording_meta(opts.http_level, {"config": config is not None, **(meta or {})}))
        self.agent = Agent(opts, config=config, path=path,
                             writer=_Writer(out=events_out or NullSink()))  # type: ignore[arg-type]
        self.agent.stage.tee = self.writer.write_batch
        if config is not None and embed_events:
            def seen(item: Any) -> bool:
                keep.append(item)
                return True

            self.agent.writer.keep = seen

    def finish(self) -> dict[str, Any]:
        trailer: dict[str, Any] = {"snapshot": self.agent.snapshot(), "records": self.writer.records}
        if self.embed_events:
            trailer["events"] = self.events
        self.writer.close(trailer)
        return trailer


async def record_for(rec: Recording, duration_s: float | None) -> int:
    """Run the recording agent until SIGINT/SIGTERM or `duration_s` seconds after it attached."""
    import asyncio

    agent = rec.agent
    task = asyncio.create_task(agent.run(install_signals=True))
    # agent.attached is a threading.Event (other threads read it too): there is nothing to await, so poll it.
    while not agent.attached.is_set() and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if duration_s is not None and not task.done():
        done, _ = await asyncio.wait([task], timeout=duration_s)
        if not done:
            agent.stop()
    code = await task
    rec.finish()
    return code
