"""The agent: BPF capture -> ring-buffer source -> tracking stage -> sinks, on one uvloop event loop.

SIGINT/SIGTERM stop the source; every stage drains its input and closes the next channel; the sinks
flush; the BPF links are detached; `run()` returns the exit code (0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import msgspec

from qtap_async.bpf.loader import Capture, CaptureSettings
from qtap_async.buffers.channel import Channel
from qtap_async.errors import ChannelClosed
from qtap_async.protocols import ProtocolSession
from qtap_async.sources.inflight import InflightScan, park_blocked_calls
from qtap_async.sources.ringbuf import RingBufferSource, batch_size
from qtap_async.sources.tls_manager import TlsManager, TlsOptions
from qtap_async.telemetry import metrics
from qtap_async.transforms.conntrack import Connection, Conntrack, Session
from qtap_async.transforms.stage import TrackingStage

log = logging.getLogger("qtap.agent")


@dataclass
class AgentOptions:
    capture: CaptureSettings = field(default_factory=lambda: CaptureSettings(self_tgid=os.getpid()))
    max_connections: int = 65536
    idle_timeout_s: float = 300.0
    raw_queue_events: int = 4096
    raw_queue_bytes: int = 64 << 20
    out_queue_events: int = 4096
    out_queue_bytes: int = 64 << 20
    emit_gaps: bool = True
    metrics_interval_s: float = 0.0  # > 0: log a metrics line to stderr this often
    stop_drain_s: float = 10.0  # at stop, process the queued backlog this long; the rest is dropped, counted
    tls: bool = True  # attach uprobes to TLS libraries for plaintext
    tls_options: TlsOptions = field(default_factory=TlsOptions)  # analysis cache, PATH pre-attach, held exec
    http_level: Literal["summary", "details", "full"] = "details"  # headers: details, bodies: full
    show_secrets: bool = False  # credentials in clear in the output (qtap run --show-secrets)
    status_listen: str = ""  # HOST:PORT of /healthz /readyz /metrics ("" or "off": none)
    status_check_interval_s: float = 10.0  # how often /readyz checks each store
    status_required: bool = True  # False: a status address that cannot be bound is logged, not fatal
    container_metadata: bool = True  # ask the container runtimes' sockets for names, images, labels, pods


def default_session_factory(conn: Connection, layer: int) -> Session | None:
    """A protocol session per connection and layer (0: socket bytes, 1: TLS plaintext)."""
    return ProtocolSession(local_port=conn.lport, remote_port=conn.rport)


class StdoutWriter:
    """Events as JSON lines on stdout (the local-only default event and object store)."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.out = out or sys.stdout.buffer
        self._encode = msgspec.json.Encoder().encode
        self.written = 0

    def write(self, events: list[Any]) -> None:
        enc = self._encode
        self.out.write(b"".join(enc(e) + b"\n" for e in events))
        self.out.flush()
        self.written += len(events)

    async def run(self, rx: Channel[list[Any]]) -> None:
        while True:
            try:
                events = await rx.recv()
            except ChannelClosed:
                break
            self.write(events)


class Agent:
    def __init__(
        self,
        options: AgentOptions | None = None,
        *,
        writer: StdoutWriter | None = None,
        session_factory: Callable[[Connection, int], Session | None] | None = default_session_factory,
        on_protocol_record: Callable[[Connection, Any, int], list[Any]] | None = None,
    ) -> None:
        self.options = options or AgentOptions()
        self.writer = writer or StdoutWriter()
        self.conntrack = Conntrack(
            max_connections=self.options.max_connections,
            idle_timeout_s=self.options.idle_timeout_s,
            session_factory=session_factory,
            emit_gaps=self.options.emit_gaps,
        )
        if on_protocol_record is not None:
            self.conntrack.on_protocol_record = on_protocol_record
        else:
            from qtap_async.plugins.redact import Redactor, warn_if_clear
            from qtap_async.transforms.output import ProtocolOutput

            redactor = Redactor(enabled=not self.options.show_secrets)
            warn_if_clear(redactor)
            self.conntrack.on_protocol_record = ProtocolOutput(self.conntrack, self.options.http_level,
                                                               redactor).convert
        from qtap_async.telemetry.counters import TransactionCounter

        self.transactions = TransactionCounter()  # by protocol, for /metrics
        if self.conntrack.on_protocol_record is not None:
            self.conntrack.on_protocol_record = self.transactions.wrap(self.conntrack.on_protocol_record)
        self.stage = TrackingStage(self.conntrack)
        self.status: Any = None  # qtap_async.telemetry.status.AgentStatus while running with status_listen
        self.containers: Any = None  # qtap_async.context.ContainerCache while running
        self.stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.attached = threading.Event()  # set once the BPF programs are attached
        self.capture: Capture | None = None
        self.tls: TlsManager | None = None
        self._kernel_counters: dict[str, int] = {}  # last read, kept after the capture is closed
        self.raw: Channel[list[bytes]] | None = None
        self.out: Channel[list[Any]] | None = None
        self.source: RingBufferSource | None = None
        self.inflight_scan = InflightScan()

    def stop(self) -> None:
        """Ask the agent to stop; safe to call from any thread."""
        if self.stop_event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.stop_event.set)

    def snapshot(self) -> dict[str, int]:
        """Every counter of every stage, with stable qtap_* names."""
        m: dict[str, int] = {}
        kernel = self._kernel_counters
        if self.capture is not None and self.capture.objects:
            kernel = self.capture.counters()
        for k, decl in metrics.KERNEL.items():
            m[decl.name] = kernel.get(k, 0)
        if self.source is not None:
            m[metrics.SOURCE_RECORDS.name] = self.source.records
            m[metrics.SOURCE_DROPPED_RECORDS.name] = self.source.dropped_records
        for name, ch in (("raw", self.raw), ("out", self.out)):
            if ch is not None:
                s = ch.statistics()
                m[metrics.CHANNEL_DEPTH[name].name] = s.depth_events
                m[metrics.CHANNEL_DROPPED[name].name] = s.dropped_events
        st = self.conntrack.stats
        m[metrics.DECODE_ERRORS.name] = self.stage.decode_errors
        m[metrics.INTERNAL_ERRORS.name] = self.stage.internal_errors
        m[metrics.STAGE_DROPPED_AT_STOP.name] = self.stage.dropped_at_stop
        m[metrics.CONNECTIONS_OPEN.name] = len(self.conntrack.conns)
        m[metrics.CONNECTIONS_OPENED.name] = st.connections_opened
        m[metrics.CONNECTIONS_CLOSED.name] = st.connections_closed
        m[metrics.CONNECTIONS_EVICTED_IDLE.name] = st.connections_evicted_idle
        m[metrics.CONNECTIONS_EVICTED_FULL.name] = st.connections_evicted_full
        m[metrics.ORPHAN_DATA_RECORDS.name] = st.orphan_data_records
        m[metrics.CONNECTIONS_RESUMED.name] = st.connections_resumed
        m[metrics.CONNECTION_OWNER_CHANGES.name] = st.owner_changes
        m[metrics.INFLIGHT_PARKED.name] = self.inflight_scan.parked
        m[metrics.STREAM_GAPS.name] = st.reassembly.gaps
        m[metrics.STREAM_GAP_BYTES.name] = st.reassembly.gap_bytes
        m[metrics.EVENTS_WRITTEN.name] = self.writer.written
        m.update(self.transactions.snapshot())
        if self.containers is not None:
            m.update(self.containers.snapshot())
        if self.tls is not None:
            from qtap_async.telemetry.counters import tls_snapshot

            m.update(tls_snapshot(self.tls.statuses()))
            m.update(self.tls.metrics())
        # A writer with stores (qtap_async.pipeline_config.StoreWriter) adds its sinks' and plugins' counters.
        writer_stats = getattr(self.writer, "stats", None)
        if writer_stats is not None:
            m.update(writer_stats())
        return m

    async def run(self, install_signals: bool = True) -> int:
        # The status server comes up first: /healthz answers (and /readyz says why not) while probes attach.
        from qtap_async.errors import StatusServerError
        from qtap_async.telemetry.server import parse_listen

        if self.options.status_listen and parse_listen(self.options.status_listen) is not None:
            from qtap_async.telemetry.status import AgentStatus

            status = AgentStatus(self, self.options.status_listen,
                                 check_interval_s=self.options.status_check_interval_s)
            try:
                await status.start()
                self.status = status
            except StatusServerError as exc:
                if self.options.status_required:
                    raise
                log.warning("%s; running without it", exc)
        from qtap_async import context

        if self.options.container_metadata:
            runtimes = context.default_runtimes()
            self.containers = context.ContainerCache(runtimes)
            context.install(self.containers)
            log.info("container metadata from: %s", ", ".join(str(getattr(r, "socket_path", r.name)) for r in runtimes)
                     or "no runtime socket found (events carry container_id only)")
        try:
            return await self._run(install_signals)
        finally:
            if self.containers is not None:
                if context.installed() is self.containers:
                    context.install(None)
                self.containers.close()
            if self.status is not None:
                await self.status.close()

    async def _run(self, install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.stop_event = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop_event.set)
        o = self.options
        try:
            self.capture = Capture(o.capture)
            if o.tls:
                self.tls = TlsManager(self.capture, o.tls_options)
                await self.tls.start()
                self.conntrack.on_exec = self.tls.on_exec
                self.conntrack.on_exit = self.tls.on_exit
        except BaseException:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self.tls is not None:
                await self.tls.stop()
            if self.capture is not None:
                self.capture.close()
            raise
        # Processes and listeners as they are at attach: what existed before the agent may be gone by the time
        # its first record is looked at (a short exchange ends within one drain interval).
        self.conntrack.processes.snapshot_at_start()
        self.conntrack.listeners.snapshot_at_start()
        # Calls blocked on sockets since before the attach: parked so their bytes are not lost.
        self.inflight_scan = park_blocked_calls(self.capture.socket_object.map("inflight"), o.capture.self_tgid,
                                                o.capture.target_tgid)
        if self.inflight_scan.parked:
            log.info("calls blocked on sockets at attach: %d (of %d threads)", self.inflight_scan.parked,
                     self.inflight_scan.threads)
        self.attached.set()
        try:
            assert self.capture.ringbuf is not None
            self.raw = Channel(o.raw_queue_events, o.raw_queue_bytes, "drop_newest", sizeof=batch_size)
            self.out = Channel(o.out_queue_events, o.out_queue_bytes, "block", sizeof=len_sizeof)
            self.source = RingBufferSource(self.capture.ringbuf)
            log.info("capture attached: %d programs", sum(len(ob.links) for ob in self.capture.objects))
            tasks = [
                asyncio.create_task(self.source.run(self.raw, self.stop_event, self._detach), name="source"),
                asyncio.create_task(self.stage.run(self.raw, self.out), name="track"),
                asyncio.create_task(self.writer.run(self.out), name="sink"),
            ]
            if o.metrics_interval_s > 0:
                tasks.append(asyncio.create_task(self._metrics_loop(o.metrics_interval_s), name="metrics"))
            stopped = asyncio.create_task(self.stop_event.wait(), name="stop")
            await asyncio.wait([stopped, *tasks[:3]], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            self.stage.drain_deadline = loop.time() + o.stop_drain_s
            await asyncio.gather(*tasks[:3])
            for t in tasks[3:]:
                t.cancel()
            # For programs (benchmarks, `--log-level debug`); people get the CLI's one-line summary.
            log.debug("stopped: %s", msgspec.json.encode(self.snapshot()).decode())
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self.tls is not None:
                await self.tls.stop()
            self._kernel_counters = self.capture.counters()
            self.capture.close()
        return 0

    def _detach(self) -> None:
        """Stop every hook (tracepoints and TLS uprobes) before the final drain."""
        if self.tls is not None:
            self.tls.probes.detach_links()
        if self.capture is not None:
            for obj in self.capture.objects:
                obj.detach_all()

    async def _metrics_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            log.info("metrics %s", msgspec.json.encode(self.snapshot()).decode())


def len_sizeof(batch: object) -> int:
    """Bytes an output batch holds, roughly: ~512 per event plus the bodies it carries (level full)."""
    if not isinstance(batch, list):
        return 512
    n = 512 * len(batch)
    for e in batch:
        if isinstance(e, dict):
            for k in ("request_body", "response_body"):
                b = e.get(k)
                if isinstance(b, bytes | str):
                    n += len(b)
    return n


def run_agent(options: AgentOptions | None = None) -> int:
    """Run the agent on uvloop until SIGINT/SIGTERM."""
    import uvloop

    return uvloop.run(Agent(options).run())
