"""The run loop: a source, the tracking stage and the writer of a ``Graph``, on one uvloop event loop.

    agent = Agent(options, config=cfg)           # or no config: the default config, local output
    code = await agent.run()                       # until SIGINT/SIGTERM (or the end of a replayed file)

It starts, in order: the status server (/healthz answers while probes attach), the container metadata
cache, the stores, the source (the BPF capture and its ring buffer, with TLS discovery; or a record
file for replay), then the tasks ``source -> raw channel -> stage -> out channel -> writer``, and, with a
config file, the reloader (SIGHUP and file changes). SIGINT/SIGTERM stop the source; every stage drains
its input and closes the next channel; the stores flush; the BPF links are detached; ``run`` returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from qtap_async.bpf import socket_path
from qtap_async.bpf.loader import Capture
from qtap_async.buffers.channel import Channel
from qtap_async.config import Config, load_config, summarize
from qtap_async.sources.inflight import InflightScan, park_blocked_calls
from qtap_async.sources.replay import ReplaySource
from qtap_async.sources.ringbuf import RingBufferSource, batch_size
from qtap_async.telemetry import metrics
from qtap_async.telemetry.memory import HeapTrimmer
from qtap_async.telemetry.memtrace import MemTrace, MemTraceSettings
from qtap_async.tls.manager import TlsManager
from qtap_async.topology.dispatch import FocusCheck
from qtap_async.topology.graph import AgentOptions, Graph
from qtap_async.topology.writer import StdoutWriter, len_sizeof
from qtap_async.transforms.conntrack import SessionFactory, default_session_factory

__all__ = ["Agent", "ConfigReloader", "run_agent"]

log = logging.getLogger("qtap.agent")


class ConfigReloader:
    """Reloads on SIGHUP and when the file's mtime (or size) changes, checked every ``interval`` s."""

    def __init__(self, path: Path, graph: Graph, interval: float = 2.0) -> None:
        self.path = path
        self.graph = graph
        self.interval = interval
        self._stamp = self._read_stamp()
        self._wake = asyncio.Event()

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def request(self) -> None:
        """Ask for a reload now (the SIGHUP handler)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            forced = self._wake.is_set()
            self._wake.clear()
            stamp = self._read_stamp()
            if not forced and (stamp == self._stamp or stamp is None):
                continue
            self._stamp = stamp
            await self.graph.reload(lambda: load_config(self.path))


class Agent:
    """One run of the graph. ``config`` None: the default config with the local output ``writer``
    (JSON lines on stdout unless given). ``replay``: recorded raw records instead of the kernel."""

    def __init__(
        self,
        options: AgentOptions | None = None,
        *,
        config: Config | None = None,
        writer: StdoutWriter | None = None,
        focus: FocusCheck | None = None,
        session_factory: SessionFactory | None = default_session_factory,
        replay: Sequence[bytes] | None = None,
        batch_records: int = 256,
        path: Path | None = None,
        reload_interval: float = 2.0,
        on_ready: Callable[[Graph], Awaitable[None] | None] | None = None,
        access_log: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options or AgentOptions()
        local = None if config is not None else (writer or StdoutWriter())
        self.graph = Graph(config, self.options, local=local, focus=focus, session_factory=session_factory,
                           access_log=access_log, sweep=replay is None)
        self.graph.snapshot = self.snapshot
        self.writer = self.graph.writer
        self.conntrack = self.graph.conntrack
        self.stage = self.graph.stage
        self.replay = ReplaySource(replay, batch_records) if replay is not None else None
        self.path = path
        self.reload_interval = reload_interval
        self.on_ready = on_ready
        self.status: Any = None  # qtap_async.telemetry.status.AgentStatus while running with status_listen
        self.containers: Any = None  # qtap_async.context.ContainerCache while running
        self.stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.attached = threading.Event()  # set once the BPF programs are attached (or the replay started)
        self.capture: Capture | None = None
        self.tls: TlsManager | None = None
        self.java: Any = None  # qtap_async.tls.java_manager.JavaAttacher with tls_options.java
        self._kernel_counters: dict[str, int] = {}  # last read, kept after the capture is closed
        self.raw: Channel[list[bytes]] | None = None
        self.out: Channel[list[Any]] | None = None
        self.source: RingBufferSource | ReplaySource | None = None
        self.inflight_scan = InflightScan()

    def stop(self) -> None:
        """Ask the run to stop; safe to call from any thread."""
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
            m[metrics.SOURCE_BATCHES.name] = self.source.batches
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
        ub = self.conntrack.unbound_tls.stats
        m[metrics.TLS_UNBOUND_DROPPED_RECORDS.name] = ub.dropped_records
        m[metrics.TLS_UNBOUND_DROPPED_BYTES.name] = ub.dropped_bytes
        m[metrics.TLS_UNBOUND_BOUND_RECORDS.name] = ub.bound_records
        m[metrics.CONNECTIONS_RESUMED.name] = st.connections_resumed
        m[metrics.CONNECTION_OWNER_CHANGES.name] = st.owner_changes
        m[metrics.INFLIGHT_PARKED.name] = self.inflight_scan.parked
        m[metrics.STREAM_GAPS.name] = st.reassembly.gaps
        m[metrics.STREAM_GAP_BYTES.name] = st.reassembly.gap_bytes
        ps = self.conntrack.processes.stats()
        m[metrics.PROCESS_CACHE_ENTRIES.name] = ps.entries
        m[metrics.PROCESS_CACHE_EVICTED.key(reason="exited")] = ps.evicted_exited
        m[metrics.PROCESS_CACHE_EVICTED.key(reason="full")] = ps.evicted_full
        m[metrics.PYTHON_HEAP_BLOCKS.name] = sys.getallocatedblocks()
        hosts = self.graph.enrich.domains.hosts
        m[metrics.HOSTS_PATHS.name] = hosts.watched
        m[metrics.HOSTS_PATHS_FORGOTTEN.key(reason="exited")] = hosts.forgotten
        m[metrics.HOSTS_PATHS_FORGOTTEN.key(reason="full")] = hosts.evicted_full
        m.update(self.graph.stats())
        if self.containers is not None:
            m.update(self.containers.snapshot())
        js = self.conntrack.java.stats
        java = self.java
        m[metrics.JAVA_JVMS_ATTACHED.name] = java.metrics()["attached"] if java is not None else 0
        m[metrics.JAVA_ATTACH_FAILED.name] = java.failed_total if java is not None else 0
        m[metrics.JAVA_BAD_FRAMES.name] = java.channel.stats.bad_frames if java is not None else 0
        m[metrics.JAVA_CHUNKS.name] = js.chunks  # a replay of a recording with Java records has them too
        for reason in ("unmatched", "ambiguous", "late"):
            m[metrics.JAVA_DROPPED.key(reason=reason)] = getattr(js, reason)
        if self.tls is not None:
            from qtap_async.telemetry.counters import tls_snapshot

            m.update(tls_snapshot(self.tls.statuses()))
            m.update(self.tls.metrics())
        return m

    def metric_families(self) -> list[metrics.Histograms]:
        """The histograms the stacks' plugins build at scrape time (http_metrics'), read through the
        pipeline of the moment so a reload shows its stacks."""
        return [fam for stack in self.graph.pipeline.stacks.values() for fam in stack.families()]

    async def run(self, install_signals: bool = True) -> int:
        # The status server comes up first: /healthz answers (and /readyz says why not) while probes attach.
        from qtap_async.errors import StatusServerError
        from qtap_async.plugins.redact import warn_if_clear
        from qtap_async.telemetry.server import parse_listen

        if not self.graph.local:
            for line in summarize(self.graph.config):
                log.info("config: %s", line)
        warn_if_clear(self.graph.pipeline.redactor)
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

        if self.options.container_metadata and self.replay is None:
            runtimes = context.default_runtimes()
            self.containers = context.ContainerCache(runtimes)
            context.install(self.containers)
            log.info("container metadata from: %s", ", ".join(str(getattr(r, "socket_path", r.name)) for r in runtimes)
                     or "no runtime socket found (events carry container_id only)")
        loop = asyncio.get_running_loop()
        reloader: asyncio.Task[None] | None = None
        hup = False
        try:
            await self.graph.start()
            if self.path is not None:
                r = ConfigReloader(self.path, self.graph, self.reload_interval)
                loop.add_signal_handler(signal.SIGHUP, r.request)
                hup = True
                reloader = asyncio.create_task(r.run(), name="config-reload")
            if self.on_ready is not None:
                res = self.on_ready(self.graph)
                if res is not None:
                    await res
            return await self._run(install_signals)
        finally:
            if reloader is not None:
                reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloader
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            await self.writer.aclose()
            if self.containers is not None:
                if context.installed() is self.containers:
                    context.install(None)
                self.containers.close()
            if self.status is not None:
                await self.status.close()

    async def _attach(self) -> None:
        o = self.options
        self.capture = Capture(o.capture)
        if o.tls:
            self.tls = TlsManager(self.capture, o.tls_options)
            await self.tls.start()
            self.graph.dispatch.watchers.append(self.tls)
            if o.tls_options.java:
                from qtap_async.tls.java_channel import JavaChannel
                from qtap_async.tls.java_manager import JavaAttacher

                pids = o.tls_options.java_pids
                if pids is None and o.capture.target_tgid:  # `qtap run --pid N`: that JVM only
                    pids = frozenset({o.capture.target_tgid})
                self.java = JavaAttacher(JavaChannel(), pids)
        # Processes and listeners as they are at attach: what existed before the agent may be gone by the time
        # its first record is looked at (a short exchange ends within one drain interval).
        self.conntrack.processes.snapshot_at_start()
        self.conntrack.listeners.snapshot_at_start()
        # Calls blocked on sockets since before the attach: parked so their bytes are not lost.
        self.inflight_scan = park_blocked_calls(self.capture.socket_object.map("inflight"), o.capture.self_tgid,
                                                o.capture.target_tgid,
                                                data_calls=self.capture.socket_path != socket_path.SOCK)
        if self.inflight_scan.parked:
            log.info("calls blocked on sockets at attach: %d (of %d threads)", self.inflight_scan.parked,
                     self.inflight_scan.threads)

    async def _run(self, install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.stop_event = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop_event.set)
        o = self.options
        if self.replay is None:
            try:
                await self._attach()
            except BaseException:
                for sig in signals:
                    loop.remove_signal_handler(sig)
                if self.tls is not None:
                    await self.tls.stop()
                if self.capture is not None:
                    self.capture.close()
                raise
        self.attached.set()
        try:
            end_ns: Callable[[], int] | None = None
            if self.replay is not None:
                # A replay loses nothing: the raw channel waits for the stage instead of dropping.
                self.raw = Channel(o.raw_queue_events, o.raw_queue_bytes, "block", sizeof=batch_size)
                self.source = self.replay
                end_ns = self.replay.end_ns
            else:
                assert self.capture is not None and self.capture.ringbuf is not None
                self.raw = Channel(o.raw_queue_events, o.raw_queue_bytes, "drop_newest", sizeof=batch_size)
                self.source = RingBufferSource(self.capture.ringbuf,
                                               side=self.java.channel if self.java is not None else None)
                if self.java is not None:
                    self.java.start()
                log.info("capture attached: %d programs", sum(len(ob.links) for ob in self.capture.objects))
            self.out = Channel(o.out_queue_events, o.out_queue_bytes, "block", sizeof=len_sizeof)
            tasks = [
                asyncio.create_task(self.source.run(self.raw, self.stop_event, self._detach), name="source"),
                asyncio.create_task(self.stage.run(self.raw, self.out, end_ns), name="track"),
                asyncio.create_task(self.writer.run(self.out), name="sink"),
            ]
            if o.metrics_interval_s > 0:
                tasks.append(asyncio.create_task(self._metrics_loop(o.metrics_interval_s), name="metrics"))
            if o.heap_trim_interval_s > 0:
                tasks.append(asyncio.create_task(self._trim_loop(o.heap_trim_interval_s), name="heap-trim"))
            trace = MemTraceSettings.from_env()  # debugging only: QTAP_DEBUG_TRACEMALLOC (telemetry/memtrace.py)
            if trace is not None:
                tasks.append(asyncio.create_task(MemTrace(trace).run(), name="memtrace"))
            stopped = asyncio.create_task(self.stop_event.wait(), name="stop")
            await asyncio.wait([stopped, *tasks[:3]], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            t_stop = loop.time()
            if self.replay is None:
                self.stage.drain_deadline = t_stop + o.stop_drain_s
            done_at: dict[str, float] = {}
            for t in tasks[:3]:
                t.add_done_callback(lambda t: done_at.setdefault(t.get_name(), loop.time()))
            await asyncio.gather(*tasks[:3])
            # Where a slow stop goes (hooks detached and ring drained, stage drained, stores' last deliveries).
            log.info("stopped in %.1fs: %s", loop.time() - t_stop,
                     ", ".join(f"{n} {done_at.get(n, t_stop) - t_stop:.1f}s" for n in ("source", "track", "sink")))
            for t in tasks[3:]:
                t.cancel()
            # For programs (benchmarks, `--log-level debug`); people get the CLI's one-line summary.
            log.debug("stopped: %s", msgspec.json.encode(self.snapshot()).decode())
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self.java is not None:
                await self.java.stop()
                self.java.channel.close()
            if self.tls is not None:
                await self.tls.stop()
            if self.capture is not None:
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

    async def _trim_loop(self, interval: float) -> None:
        """After many connections closed or many payload bytes went through, give the freed C heap back
        to the system (see qtap_async.telemetry.memory): RSS then follows the load down."""
        trimmer = HeapTrimmer()
        if not trimmer.available:
            return
        st = self.conntrack.stats
        await asyncio.sleep(interval)
        trimmer.trim()  # what start-up freed (BPF objects and BTF loaded, TLS libraries analysed)
        while True:
            await asyncio.sleep(interval)
            trimmer.tick(st.connections_closed, st.data_bytes)

    async def _metrics_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            log.info("metrics %s", msgspec.json.encode(self.snapshot()).decode())


def run_agent(options: AgentOptions | None = None, config: Config | None = None) -> int:
    """Run on uvloop until SIGINT/SIGTERM (no config: the default config, JSON lines on stdout)."""
    import uvloop

    return uvloop.run(Agent(options, config=config).run())
