"""From a ``Config`` to what the agent runs: connection filters, stacks, stores, and live reloads.

    runtime = ConfiguredRuntime(config)            # compiles filters and stacks, builds the stores
    await runtime.start()                          # starts the stores (SinkError when one is unusable)
    agent = Agent(options, writer=runtime.writer, session_factory=runtime.session_factory,
                  on_protocol_record=runtime.on_protocol_record)
    await runtime.apply(new_config)                # reload: all or nothing

Filtering happens at the first point user space knows the connection: the exe/group filters, the
direction and the loopback setting are decided once per connection (from its process and addresses)
and cached; an ignored connection gets no protocol session (nothing is parsed) and its connection
events are not stored. The kernel only knows the agent's own pid and ``--pid``, so that is all it
filters. The stack is chosen per transaction from its host (Host / ``:authority``, else the SNI).

A reload builds the new filters, stacks and stores completely before switching; connections already
open keep their filter decision and their parser state, and their next transactions use the new
stacks. When the stores changed, the new ones start first, then the old ones are closed (they flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtap_async.agent import AgentOptions, StdoutWriter
from qtap_async.buffers.channel import Channel, ChannelClosed
from qtap_async.config import Config, Services, load_config, summarize
from qtap_async.context.containers import installed as installed_containers
from qtap_async.context.domains import offer
from qtap_async.context.filters import ContainerFilter
from qtap_async.errors import QtapError
from qtap_async.events.connection import ConnectionEvent, GapEvent
from qtap_async.events.dns import DnsMessage
from qtap_async.events.http import HttpTransaction
from qtap_async.events.objects import ObjectRef
from qtap_async.events.tls import TlsClientHello
from qtap_async.filters import SKIP_ALL, OwnServices, StackSelector, TrafficFilter
from qtap_async.plugins.exchange import HttpExchange, conn_context, host_of
from qtap_async.plugins.redact import redactor_from, warn_if_clear
from qtap_async.plugins.stack import Stack, build_stacks
from qtap_async.protocols import ProtocolSession
from qtap_async.sinks.base import StoredObject
from qtap_async.sinks.factory import build_event_runner, build_object_runner
from qtap_async.sinks.pulse import PulseEventStore
from qtap_async.sinks.runner import EventSinkRunner, ObjectSinkRunner
from qtap_async.transforms.conntrack import Connection, Conntrack, Session
from qtap_async.transforms.output import ProtocolOutput

if TYPE_CHECKING:
    from qtap_async.agent import Agent

__all__ = [
    "ConfigReloader",
    "ConfiguredRuntime",
    "Pipeline",
    "StoreWriter",
    "build_stores",
    "run_with_config",
]

log = logging.getLogger("qtap.pipeline")


# -- the compiled config ------------------------------------------------------------------------


class Pipeline:
    """The parts of a config that decide per connection and per transaction, compiled once."""

    __slots__ = ("config", "containers", "include_dns", "own", "redactor", "selector", "stacks", "traffic")

    def __init__(self, config: Config, *, access_log: Callable[[str], None] | None = None,
                 show_secrets: bool = False) -> None:
        self.config = config
        self.redactor = redactor_from(config.tap.redaction, show_secrets)
        self.traffic = TrafficFilter.from_config(config.tap)
        #: Pulse endpoints of the config: their traffic is never captured (it would feed Pulse itself).
        self.own = OwnServices.from_urls(
            s.url for s in config.services.event_stores if isinstance(s, PulseEventStore))
        self.containers = ContainerFilter(config.tap.filters.containers)
        self.selector = StackSelector.from_config(config.tap)
        self.stacks: dict[str, Stack] = build_stacks(config, access_log=access_log)
        self.include_dns = config.tap.audit_include_dns

    def skipped(self, *, ingress: bool, remote_ip: str, exe: str) -> frozenset[str]:
        """What to skip for a connection: everything (SKIP_ALL) when it is not captured, else the
        ``only`` parts of the exe filters that match its process."""
        if not self.traffic.captures(ingress=ingress, remote_ip=remote_ip, exe=exe or None):
            return SKIP_ALL
        return self.traffic.processes.skipped(exe) if exe else frozenset()

    def stack_for(self, host: str) -> Stack | None:
        name = self.selector.select(host)
        return self.stacks.get(name) if name is not None else None


# -- stores -------------------------------------------------------------------------------------


def build_stores(services: Services) -> tuple[list[EventSinkRunner], list[ObjectSinkRunner]]:
    """Runners for the enabled stores (``disabled`` ones are left out: nothing is sent to them).

    Each object store sends the reference event of every object it stored to every event store.
    Raises ConfigError (e.g. a secret's variable is not set) before anything is started.
    """
    events = [build_event_runner(s) for s in services.event_stores if s.type != "disabled"]
    objects: list[ObjectSinkRunner] = []
    channels = [r.channel for r in events]

    def on_ref(ref: ObjectRef) -> None:
        for ch in channels:
            if not ch.closed:
                ch.send_nowait(ref)  # never wait here: a full event queue drops and counts the reference

    for s in services.object_stores:
        if s.type == "disabled":
            continue
        runner = build_object_runner(s)
        runner.on_ref = on_ref if events else None
        objects.append(runner)
    return events, objects


AnyRunner = EventSinkRunner | ObjectSinkRunner


def _runners(events: list[EventSinkRunner], objects: list[ObjectSinkRunner]) -> list[AnyRunner]:
    out: list[AnyRunner] = [*objects]
    out.extend(events)
    return out


class StoreWriter(StdoutWriter):
    """The agent's output stage with a config: events go to every event store, objects to every object
    store, connection events of ignored connections nowhere. Stores can be swapped while running."""

    def __init__(self, events: list[EventSinkRunner], objects: list[ObjectSinkRunner],
                 keep: Callable[[Any], bool] | None = None) -> None:
        super().__init__(out=None)
        self.events = events
        self.objects = objects
        self.keep = keep
        self.objects_discarded = 0  # objects made while no object store is enabled
        self.events_discarded = 0  # events made while no event store is enabled
        self.extra_stats: Callable[[], dict[str, int]] | None = None
        self.filtered = 0
        self._tasks: dict[asyncio.Task[None], AnyRunner] = {}
        self._running = False

    @staticmethod
    async def start_runners(runners: list[AnyRunner]) -> None:
        """Start every runner or none: when one fails, the ones already started are closed."""
        started: list[AnyRunner] = []
        try:
            for r in runners:
                await r.start()
                started.append(r)
        except BaseException:
            for r in started:
                r.channel.close()
                with contextlib.suppress(Exception):
                    await r.run()  # closes the sink and the spool
            raise

    async def start(self) -> None:
        await self.start_runners(_runners(self.events, self.objects))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def _spawn(self, runners: list[EventSinkRunner] | list[ObjectSinkRunner]) -> None:
        for r in runners:
            task = asyncio.create_task(r.run(), name=f"sink-{r.kind}-{r.name}")
            self._tasks[task] = r
            task.add_done_callback(self._forget)

    async def replace(self, events: list[EventSinkRunner], objects: list[ObjectSinkRunner]) -> None:
        """Switch to new (already started) stores; the old ones flush what they hold and close."""
        old_events, old_objects = self.events, self.objects
        self.events, self.objects = events, objects
        if self._running:
            self._spawn(events)
            self._spawn(objects)
            await self._close(old_events, old_objects)
        else:
            for r in _runners(old_events, old_objects):
                r.channel.close()
                with contextlib.suppress(Exception):
                    await r.run()

    async def _close(self, events: list[EventSinkRunner], objects: list[ObjectSinkRunner]) -> None:
        # Objects first: the reference events of what they still store must reach open event stores.
        for group in (objects, events):
            for r in group:
                r.channel.close()
            tasks = [t for t, r in list(self._tasks.items()) if r in group]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _route(self, item: Any) -> None:
        if isinstance(item, StoredObject):
            if not self.objects:
                self.objects_discarded += 1
                return
            for r in self.objects:
                with contextlib.suppress(ChannelClosed):  # a store being replaced right now
                    await r.channel.send(item)
            return
        if not self.events:
            self.events_discarded += 1
            return
        for e in self.events:
            with contextlib.suppress(ChannelClosed):
                await e.channel.send(item)

    async def run(self, rx: Channel[list[Any]]) -> None:
        self._running = True
        self._spawn(self.events)
        self._spawn(self.objects)
        try:
            while True:
                try:
                    batch = await rx.recv()
                except ChannelClosed:
                    break
                keep = self.keep
                for item in batch:
                    if keep is not None and not keep(item):
                        self.filtered += 1
                        continue
                    await self._route(item)
                    self.written += 1
        finally:
            await self._close(self.events, self.objects)
            while self._tasks:  # stores being replaced at this very moment
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Close stores that were started but never ran (the agent failed before its output stage)."""
        if self._running:
            return
        for r in _runners(self.events, self.objects):
            r.channel.close()
            with contextlib.suppress(Exception):
                await r.run()

    def stats(self) -> dict[str, int]:
        """Counters with stable qtap_* names (the agent's snapshot includes them)."""
        out: dict[str, int] = {
            "qtap_pipeline_objects_discarded_total": self.objects_discarded,
            "qtap_pipeline_events_discarded_total": self.events_discarded,
            "qtap_pipeline_filtered_events_total": self.filtered,
        }
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        for r in _runners(self.events, self.objects):
            for k, v in r.stats().items():
                if isinstance(v, float):  # latency in seconds: the agent's snapshot holds integers
                    k, v = k.replace("_seconds", "_microseconds"), round(v * 1e6)
                out[f'{k}{{store="{r.kind}:{r.name}"}}'] = v
        return out


# -- the runtime --------------------------------------------------------------------------------


class ConfiguredRuntime:
    """The agent hooks for one (reloadable) config: session factory, protocol record handler, writer."""

    def __init__(self, config: Config, *, access_log: Callable[[str], None] | None = None,
                 conntrack: Conntrack | None = None, show_secrets: bool = False) -> None:
        self.access_log = access_log
        self.show_secrets = show_secrets
        self.pipeline = Pipeline(config, access_log=access_log, show_secrets=show_secrets)
        events, objects = build_stores(config.services)
        self.writer = StoreWriter(events, objects, keep=self._keep)
        self.writer.extra_stats = self.stats
        self._skips: dict[int, frozenset[str]] = {}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._conntrack = conntrack
        self._output: ProtocolOutput | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self.last_reload_error = ""  # why the last failed reload failed (the control link reports it)
        self.snapshot: Callable[[], dict[str, int]] | None = None  # the agent's counters, once it exists
        self.ignored_connections = 0
        self.own_service_connections = 0  # connections to or of our own Pulse, never captured

    @property
    def config(self) -> Config:
        return self.pipeline.config

    def stats(self) -> dict[str, int]:
        out = {
            "qtap_pipeline_ignored_connections_total": self.ignored_connections,
            "qtap_pipeline_own_service_connections_total": self.own_service_connections,
            "qtap_config_reloads_total": self.reloads,
            "qtap_config_reload_failures_total": self.failed_reloads,
        }
        for name, stack in self.pipeline.stacks.items():
            out[f'qtap_stack_transactions_total{{stack="{name}"}}'] = stack.transactions
            out[f'qtap_stack_plugin_errors_total{{stack="{name}"}}'] = stack.errors
        return out

    def bind(self, conntrack: Conntrack) -> None:
        """The agent's conntrack (for wall-clock times); set by ``attach``."""
        self._conntrack = conntrack
        self._output = ProtocolOutput(conntrack, "summary")

    async def start(self) -> None:
        await self.writer.start()

    # -- connections ----------------------------------------------------------------------------
    def _decide(self, conn_id: int, ingress: bool, remote_ip: str, exe: str, container_id: str = "") -> frozenset[str]:
        skip = self._skips.get(conn_id)
        if skip is None:
            skip = self.pipeline.skipped(ingress=ingress, remote_ip=remote_ip, exe=exe)
            cache = installed_containers()
            if skip is not SKIP_ALL and container_id and self.pipeline.containers and cache is not None \
                    and self.pipeline.containers.ignores(cache.get(container_id)):
                skip = SKIP_ALL
            self._skips[conn_id] = skip
            if skip is SKIP_ALL:
                self.ignored_connections += 1
        return skip

    def skip_for(self, conn: Connection) -> frozenset[str]:
        ingress = conn.direction == "ingress"
        own = self.pipeline.own
        if own and conn.conn_id not in self._skips and own.involves(
                ingress=ingress, local=(conn.laddr, conn.lport), remote=(conn.raddr, conn.rport)):
            self._skips[conn.conn_id] = SKIP_ALL
            self.ignored_connections += 1
            self.own_service_connections += 1
        return self._decide(conn.conn_id, ingress, conn.raddr, conn.process.exe, conn.process.container_id)

    def session_factory(self, conn: Connection, layer: int) -> Session | None:
        skip = self.skip_for(conn)
        if "data" in skip or "http" in skip or (layer == 1 and "tls" in skip):
            return None  # nothing of it is parsed: the cheapest place to drop a connection
        return ProtocolSession(local_port=conn.lport, remote_port=conn.rport)

    def _keep(self, item: Any) -> bool:
        """The writer's filter for the conntrack's own events (connections, gaps)."""
        if isinstance(item, ConnectionEvent):
            ingress = item.direction == "ingress"
            own = self.pipeline.own
            if own and item.conn_id not in self._skips:
                local = (item.dst_ip, item.dst_port) if ingress else (item.src_ip, item.src_port)
                remote = (item.src_ip, item.src_port) if ingress else (item.dst_ip, item.dst_port)
                if own.involves(ingress=ingress, local=local, remote=remote):
                    self._skips[item.conn_id] = SKIP_ALL
                    self.ignored_connections += 1
                    self.own_service_connections += 1
            skip = self._decide(item.conn_id, ingress, item.src_ip if ingress else item.dst_ip, item.exe,
                                getattr(item, "container_id", ""))
            if item.event == "close":
                self._skips.pop(item.conn_id, None)
            return skip is not SKIP_ALL
        if isinstance(item, GapEvent):
            return self._skips.get(item.conn_id) is not SKIP_ALL
        return True

    # -- records --------------------------------------------------------------------------------
    def on_protocol_record(self, conn: Connection, rec: Any, layer: int) -> list[Any]:
        if isinstance(rec, HttpTransaction):
            return self._http(conn, rec, layer)
        if self._output is None:
            if isinstance(rec, TlsClientHello) and rec.sni:
                offer(conn, rec.sni, "sni")
            return []
        # Converted even when not stored: the output stage learns domains from SNI and DNS answers.
        out = self._output.convert(conn, rec, layer)
        if isinstance(rec, DnsMessage) and not self.pipeline.include_dns:
            return []
        return out

    def _http(self, conn: Connection, tx: HttpTransaction, layer: int) -> list[Any]:
        host = host_of(tx.authority)
        offer(conn, host, "host")
        pipeline = self.pipeline  # one config for the whole transaction, even across a reload
        stack = pipeline.stack_for(host or conn.domain)
        if stack is None:
            return []
        start = tx.request_start_ns or tx.response_start_ns or conn.last_ns
        ct = self._conntrack
        if ct is not None:
            ts, ts_ns = ct.rfc3339(start), ct.wall_ns(start)
        else:
            ts, ts_ns = "", start
        ex = HttpExchange(tx, conn_context(conn, layer), id=f"{self._id_prefix}-t{next(self._ids)}", ts=ts,
                          ts_ns=ts_ns, redactor=pipeline.redactor)
        return list(stack.on_http(ex))

    # -- reloads --------------------------------------------------------------------------------
    async def apply(self, config: Config) -> None:
        """Switch to ``config``: everything is built (and new stores started) before anything changes,
        so a failure leaves the running config untouched. Raises QtapError on failure."""
        pipeline = Pipeline(config, access_log=self.access_log, show_secrets=self.show_secrets)
        if pipeline.redactor.enabled != self.pipeline.redactor.enabled:
            warn_if_clear(pipeline.redactor)
        if config.services != self.config.services:
            events, objects = build_stores(config.services)
            await StoreWriter.start_runners(_runners(events, objects))
            self.pipeline = pipeline
            await self.writer.replace(events, objects)
        else:
            self.pipeline = pipeline
        self.reloads += 1

    async def reload(self, load: Callable[[], Config]) -> bool:
        """Load and apply a config; on failure log why and keep the current one. True when applied."""
        try:
            config = load()
            await self.apply(config)
        except (QtapError, OSError) as exc:
            self.failed_reloads += 1
            self.last_reload_error = str(exc)
            log.error("config reload failed, keeping the current config: %s", exc)
            return False
        log.info("config reloaded: %s", "; ".join(summarize(config)))
        return True


class ConfigReloader:
    """Reloads on SIGHUP and when the file's mtime (or size) changes, checked every ``interval`` s."""

    def __init__(self, path: Path, runtime: ConfiguredRuntime, interval: float = 2.0) -> None:
        self.path = path
        self.runtime = runtime
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
            await self.runtime.reload(lambda: load_config(self.path))


async def run_with_config(config: Config, options: AgentOptions, *, path: Path | None = None,
                          reload_interval: float = 2.0,
                          on_ready: Callable[[ConfiguredRuntime], Awaitable[None] | None] | None = None,
                          on_agent: Callable[[Agent], None] | None = None) -> int:
    """Run the agent with ``config`` until SIGINT/SIGTERM; with ``path``, reload on SIGHUP and on change.
    ``on_agent`` sees the agent before it starts (the CLI wraps its hooks and announces the start)."""
    from qtap_async.agent import Agent

    runtime = ConfiguredRuntime(config, show_secrets=options.show_secrets)
    for line in summarize(config):
        log.info("config: %s", line)
    warn_if_clear(runtime.pipeline.redactor)
    await runtime.start()
    agent = Agent(options, writer=runtime.writer, session_factory=runtime.session_factory,
                  on_protocol_record=runtime.on_protocol_record)
    runtime.bind(agent.conntrack)
    runtime.snapshot = agent.snapshot
    if on_agent is not None:
        on_agent(agent)
    loop = asyncio.get_running_loop()
    reloader: asyncio.Task[None] | None = None
    hup = False
    if path is not None:
        r = ConfigReloader(path, runtime, reload_interval)
        loop.add_signal_handler(signal.SIGHUP, r.request)
        hup = True
        reloader = asyncio.create_task(r.run(), name="config-reload")
    if on_ready is not None:
        res = on_ready(runtime)
        if res is not None:
            await res
    try:
        return await agent.run()
    finally:
        if reloader is not None:
            reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloader
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await runtime.writer.aclose()
