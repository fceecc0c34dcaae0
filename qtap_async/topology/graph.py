"""The graph of a run, built from a ``Config`` (``config.default_config()`` when no file is given).

    source  -> raw channel -> TrackingStage                                           -> out channel -> Writer
    (ring buffer       decode -> conntrack -> enrich -> dispatch (filters, stacks/output)   (stores, or the
     or record file)          transforms/    transforms/  topology/dispatch.py               local output)

The same stages, the same writer and the same counters whichever way a run starts. The one difference
without a config file (``local``): transactions are formatted by transforms/output.py at the run's
level (``--level``) and everything goes to the local output (JSON lines, or the CLI's console/text
formats) instead of the default config's stack and stdout store, so ``qtap run`` prints what the README
shows; the default config's filters (loopback included, both directions, the agent's own processes
ignored) apply all the same.

A reload (``apply``) builds the new filters, stacks and stores completely before switching: all or
nothing. When the stores changed, the new ones start first, then the old ones are closed (they flush).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from qtap_async.bpf.loader import CaptureSettings
from qtap_async.config import Config, default_config, summarize
from qtap_async.errors import QtapError
from qtap_async.plugins.redact import warn_if_clear
from qtap_async.protocols import ProtocolSession
from qtap_async.protocols.limits import Limits
from qtap_async.telemetry import metrics
from qtap_async.tls.manager import TlsOptions
from qtap_async.topology.dispatch import Dispatch, FocusCheck, Pipeline
from qtap_async.topology.stage import TrackingStage
from qtap_async.topology.writer import StdoutWriter, Writer, build_stores, start_runners
from qtap_async.transforms.conntrack import Connection, Conntrack, Session, SessionFactory, default_session_factory
from qtap_async.transforms.enrich import Enrich

__all__ = ["AgentOptions", "Graph"]

log = logging.getLogger("qtap.pipeline")

_SUMMARY_LIMITS = Limits(headers=False, max_body_bytes=0)


def summary_session_factory(conn: Connection, layer: int) -> Session | None:
    """Sessions for the local output at summary level, which shows no headers and no bodies: HTTP/1 heads are
    framed and checked but their header lists are not built (about a tenth of the replay's CPU per
    transaction), and body bytes are counted, never copied."""
    return ProtocolSession(local_port=conn.lport, remote_port=conn.rport, limits=_SUMMARY_LIMITS)


@dataclass
class AgentOptions:
    capture: CaptureSettings = field(default_factory=lambda: CaptureSettings(self_tgid=os.getpid()))
    max_connections: int = 65536
    idle_timeout_s: float = 300.0
    raw_queue_events: int = 4096
    raw_queue_bytes: int = 16 << 20  # 4 ring-buffer batches (MAX_BATCH_BYTES); see docs/deploy.md "Memory"
    out_queue_events: int = 4096
    out_queue_bytes: int = 16 << 20  # events and the bodies they carry (level full), on their way to the sinks
    emit_gaps: bool = True
    metrics_interval_s: float = 0.0  # > 0: log a metrics line to stderr this often
    heap_trim_interval_s: float = 5.0  # > 0: this often, after large releases, malloc_trim (glibc) the heap
    stop_drain_s: float = 10.0  # at stop, process the queued backlog this long; the rest is dropped, counted
    tls: bool = True  # attach uprobes to TLS libraries for plaintext
    tls_options: TlsOptions = field(default_factory=TlsOptions)  # analysis cache, PATH pre-attach, held exec
    http_level: Literal["summary", "details", "full"] = "details"  # without a config: headers: details, bodies: full
    show_secrets: bool = False  # credentials in clear in the output (qtap run --show-secrets)
    status_listen: str = ""  # HOST:PORT of /healthz /readyz /metrics ("" or "off": none)
    status_check_interval_s: float = 10.0  # how often /readyz checks each store
    status_required: bool = True  # False: a status address that cannot be bound is logged, not fatal
    container_metadata: bool = True  # ask the container runtimes' sockets for names, images, labels, pods


class Graph:
    """The stages of one run and the (reloadable) config they follow."""

    def __init__(self, config: Config | None = None, options: AgentOptions | None = None, *,
                 local: StdoutWriter | None = None, focus: FocusCheck | None = None,
                 session_factory: SessionFactory | None = default_session_factory,
                 access_log: Callable[[str], None] | None = None, sweep: bool = True) -> None:
        self.options = o = options or AgentOptions()
        self.access_log = access_log
        self.show_secrets = o.show_secrets
        self.local = local is not None
        if self.local and o.http_level == "summary" and session_factory is default_session_factory:
            session_factory = summary_session_factory  # without a config nothing else reads the headers
        cfg = config if config is not None else default_config()
        self.conntrack = Conntrack(max_connections=o.max_connections, idle_timeout_s=o.idle_timeout_s,
                                   session_factory=session_factory, emit_gaps=o.emit_gaps)
        self.enrich = Enrich(self.conntrack)
        # Without a file, the default config's stacks are not run: the local output formats transactions.
        pipeline = Pipeline(cfg, access_log=access_log, show_secrets=o.show_secrets, stacks=not self.local)
        self.dispatch = Dispatch(pipeline, self.conntrack, local=o.http_level if self.local else None, focus=focus)
        self.stage = TrackingStage(self.conntrack, self.enrich, self.dispatch, sweep=sweep)
        if local is not None:
            self.writer = Writer([], [], local=local)
        else:
            events, objects = build_stores(cfg.services)
            self.writer = Writer(events, objects)
        self.reloads = 0
        self.failed_reloads = 0
        self.last_reload_error = ""  # why the last failed reload failed (the control link reports it)
        self.snapshot: Callable[[], dict[str, int]] | None = None  # every counter of the run, once it runs

    @property
    def config(self) -> Config:
        return self.dispatch.pipeline.config

    @property
    def pipeline(self) -> Pipeline:
        return self.dispatch.pipeline

    async def start(self) -> None:
        """Start the stores (SinkError when one is unusable)."""
        await self.writer.start()

    def stats(self) -> dict[str, int]:
        out = self.writer.stats()
        filtered = out.get(metrics.PIPELINE_FILTERED_EVENTS.name, 0)
        out.update(self.dispatch.stats())
        out[metrics.PIPELINE_FILTERED_EVENTS.name] += filtered  # by dispatch, and by the writer's keep
        out[metrics.CONFIG_RELOADS.name] = self.reloads
        out[metrics.CONFIG_RELOAD_FAILURES.name] = self.failed_reloads
        return out

    # -- reloads --------------------------------------------------------------------------------
    async def apply(self, config: Config) -> None:
        """Switch to ``config``: everything is built (and new stores started) before anything changes,
        so a failure leaves the running config untouched. Raises QtapError on failure."""
        pipeline = Pipeline(config, access_log=self.access_log, show_secrets=self.show_secrets, stacks=not self.local)
        if pipeline.redactor.enabled != self.pipeline.redactor.enabled:
            warn_if_clear(pipeline.redactor)
        if config.services != self.config.services and not self.local:
            events, objects = build_stores(config.services)
            await start_runners([*objects, *events])
            self.dispatch.pipeline = pipeline
            await self.writer.replace(events, objects)
        else:
            self.dispatch.pipeline = pipeline
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
