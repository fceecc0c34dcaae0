"""The agent's one telemetry surface: every metric it exports, declared once, and the registry /metrics serves.

Each metric is a ``MetricDef`` below: its sample name, type, help text and label names. Nothing else in the
agent writes a metric name or builds label syntax: a stage names its counters by the declaration
(``SINK_DELIVERED_EVENTS.name``, or ``STACK_TRANSACTIONS.key(stack="default")`` for a labelled sample).

The stages keep plain integer counters (cheap on the hot path) and publish them as a flat snapshot keyed by
``MetricDef.key`` (``Agent.snapshot``; ``qtap run --stats`` prints the same keys). ``SnapshotCollector`` turns
the snapshot into metric families at scrape time, so nothing is copied or locked while the agent drains the
ring buffer; a sample whose name is not declared here is left out (and logged once), so the exposition holds
only what this module documents. ``tests/telemetry/test_metrics.py`` scrapes a real agent to check that every
declaration is exported and that no metric name is spelled out anywhere else.
"""

from __future__ import annotations

import logging
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("qtap.metrics")

Snapshot = Mapping[str, int | float]
SnapshotSource = Callable[[], Snapshot]
Kind = Literal["counter", "gauge", "info", "summary", "histogram"]
#: Histogram families built whole by their owner at scrape time (the http_metrics histograms).
FamilySource = Callable[[], Iterable["Histograms"]]

_KEY = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    """``{a="x",b="y"}`` with the values escaped, or "" for no labels: the one place label syntax is written."""
    text = ",".join(k + '="' + _escape(v) + '"' for k, v in pairs)
    return "{" + text + "}" if text else ""


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One exported metric. ``name`` is the sample name as scraped (a counter's ends in ``_total``)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """The family name prometheus-client exposes in HELP/TYPE (a counter's without ``_total``)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name.removesuffix("_info")

    def key(self, **labels: str) -> str:
        """The snapshot key of one sample: the name, then the labels (exactly the declared ones) if any."""
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name}: labels {sorted(labels)}, declared {list(self.labels)}")
        return self.name + format_labels((k, labels[k]) for k in self.labels)


Catalog = dict[str, MetricDef]
#: The agent's metrics (its /metrics); Pulse's and the control plane's are PULSE and CONTROL at the end.
DECLARED: Catalog = {}


def _declare(name: str, kind: Kind, help: str, labels: tuple[str, ...] = (), *, into: Catalog = DECLARED,
             counter_suffix: bool = True) -> MetricDef:
    if name in into:
        raise ValueError(f"metric {name} declared twice")
    if counter_suffix and (kind == "counter") != name.endswith("_total"):
        raise ValueError(f"metric {name}: a counter's name ends in _total, and only a counter's")
    m = MetricDef(name, kind, help, labels)
    if any(d.family == m.family for d in into.values()):
        raise ValueError(f"metric {name}: family {m.family} is taken (a gauge named like a counter's stem?)")
    into[name] = m
    return m


def _counter(name: str, help: str, *labels: str) -> MetricDef:
    return _declare(name, "counter", help, labels)


def _gauge(name: str, help: str, *labels: str) -> MetricDef:
    return _declare(name, "gauge", help, labels)


def declared(name: str) -> MetricDef:
    """The declaration of a sample name (KeyError for a name nobody declared)."""
    return DECLARED[name]


# -- the scrape itself ----------------------------------------------------------------------------
BUILD_INFO = _declare("qtap_build_info", "info", "Build and runtime of this agent (value is always 1).",
                      ("version", "python", "kernel", "implementation", "bpf_objects", "allocator"))
METRICS_SOURCE_ERRORS = _counter("qtap_metrics_source_errors_total", "Snapshot sources that failed during a scrape.")

# -- kernel side (BPF counters summed over CPUs) ----------------------------------------------------
_KERNEL_HELP = {
    "records": "records the kernel programs wrote to the ring buffer",
    "drop_ringbuf": "records dropped because the ring buffer was full",
    "drop_inflight": "calls not followed because the in-flight table was full",
    "truncated_bytes": "payload bytes cut from records over the chunk size",
    "tls_muted_bytes": "socket bytes not captured because TLS plaintext is captured for that connection",
    "drop_bytes": "payload bytes of dropped records",
    "tls_unassociated": "TLS plaintext calls that could not be matched to a socket",
    "tls_by_thread": "TLS objects bound to a socket by a read, through the socket the calling thread received on last",
    "stale_socks": "socket entries found stale (the socket was reused) and replaced",
    "closed_sock_io": "I/O seen on sockets already closed",
    "mmsg_uncounted": "sendmmsg/recvmmsg messages beyond those captured",
    "io_uring_bytes": "bytes moved through io_uring",
    "swept_socks": "connections the once-a-second sweep ended (released by every process, or freed unseen)",
    "close_deferred": "close records the full ring buffer refused, kept and sent later by the sweep",
    "delete_busy": "socket table deletes the kernel refused (bucket lock busy), retried later",
    "tls_held": "TLS writes of an object with no socket yet, sent unbound for the thread's next send to bind",
    "tls_bound_by_send": "TLS objects bound to the socket of their thread's next send after a write",
    "tls_stale_binding": "TLS object bindings dropped because their connection had ended",
    "program_misses": "events the kernel skipped because the program was already running on that CPU",
}
#: Kernel counter name (``Capture.counters()`` keys: ``abi.Counter`` names in lower case, and program_misses)
#: -> its metric. Listed here rather than read from qtap_async.bpf.abi: Pulse and the control plane import
#: this module and must load no capture code; tests/telemetry checks the list against abi.Counter.
KERNEL: dict[str, MetricDef] = {k: _counter("qtap_kernel_" + k + "_total", "Kernel: " + why + ".")
                                for k, why in _KERNEL_HELP.items()}

# -- ring-buffer reader, channels, decoding, tracking ------------------------------------------------
SOURCE_RECORDS = _counter("qtap_source_records_total", "Records read from the ring buffer.")
SOURCE_BATCHES = _counter("qtap_source_batches_total",
                          "Batches read from the ring buffer (each costs a task switch and a write whatever its size).")
SOURCE_DROPPED_RECORDS = _counter("qtap_source_dropped_records_total",
                                  "Records read but dropped because the raw channel was full.")
CHANNEL_DEPTH = {name: _gauge("qtap_channel_" + name + "_depth_events", f"Items queued in the {name} channel.")
                 for name in ("raw", "out")}
CHANNEL_DROPPED = {name: _counter("qtap_channel_" + name + "_dropped_events_total",
                                  f"Items dropped because the {name} channel was full.") for name in ("raw", "out")}
DECODE_ERRORS = _counter("qtap_decode_errors_total", "Ring-buffer records that did not match the ABI.")
INTERNAL_ERRORS = _counter("qtap_internal_errors_total", "Records whose tracking raised a bug (one record lost each).")
STAGE_DROPPED_AT_STOP = _counter("qtap_stage_dropped_at_stop_records_total",
                                 "Records still queued past the stop deadline, dropped.")
CONNECTIONS_OPEN = _gauge("qtap_connections_open", "Connections tracked now.")
CONNECTIONS_OPENED = _counter("qtap_connections_opened_total", "Connections opened.")
CONNECTIONS_CLOSED = _counter("qtap_connections_closed_total", "Connections closed.")
CONNECTIONS_EVICTED_IDLE = _counter("qtap_connections_evicted_idle_total", "Connections dropped after idling.")
CONNECTIONS_EVICTED_FULL = _counter("qtap_connections_evicted_full_total",
                                    "Connections dropped because the table was full.")
TLS_UNBOUND_DROPPED_RECORDS = _counter(
    "qtap_tls_unbound_dropped_records_total",
    "TLS plaintext records of an object never bound to a connection in time (or over the held-bytes limit), dropped.")
TLS_UNBOUND_DROPPED_BYTES = _counter("qtap_tls_unbound_dropped_bytes_total",
                                     "Payload bytes of the dropped unbound TLS plaintext records.")
TLS_UNBOUND_BOUND_RECORDS = _counter("qtap_tls_unbound_bound_records_total",
                                     "TLS plaintext records held unbound, then handed to their connection.")
ORPHAN_DATA_RECORDS = _counter("qtap_orphan_data_records_total", "Data records of no tracked connection.")
CONNECTIONS_RESUMED = _counter("qtap_connections_resumed_total", "Connections picked up mid-stream.")
CONNECTION_OWNER_CHANGES = _counter("qtap_connection_owner_changes_total",
                                    "Connections whose owning process changed (a socket passed on).")
INFLIGHT_PARKED = _counter("qtap_inflight_at_attach_parked_total",
                           "Calls blocked on sockets at attach time, parked so their bytes are not lost.")
STREAM_GAPS = _counter("qtap_stream_gaps_total", "Gaps in reassembled streams.")
STREAM_GAP_BYTES = _counter("qtap_stream_gap_bytes_total", "Bytes missing in reassembled streams.")
PARSE_ERRORS = _counter("qtap_parse_errors_total",
                        "Input a parser could not make sense of or gave up on (parse_error events), by parser.",
                        "protocol")
EVENTS_WRITTEN = _counter("qtap_events_written_total", "Events the output stage wrote.")
TRANSACTIONS = _counter("qtap_transactions_total", "HTTP/1.x, h2 and gRPC transactions and DNS messages parsed.",
                        "protocol")

# -- process and name caches (qtap_async/context) ------------------------------------------------------
PROCESS_CACHE_ENTRIES = _gauge("qtap_process_cache_entries", "Processes in the process cache.")
PROCESS_CACHE_EVICTED = _counter(
    "qtap_process_cache_evicted_total",
    "Processes the cache forgot: reason=exited (EXITED_KEEP exits after their own), full (its LRU bound).",
    "reason")
PYTHON_HEAP_BLOCKS = _gauge(
    "qtap_python_heap_blocks",
    "Memory blocks the interpreter has allocated now (sys.getallocatedblocks): grows with live objects, unlike "
    "RSS, which also keeps memory the allocator holds after a burst.")
HOSTS_PATHS = _gauge("qtap_hosts_paths_watched", "Hosts files (one per process root) looked at for names.")
HOSTS_PATHS_FORGOTTEN = _counter(
    "qtap_hosts_paths_forgotten_total", "Hosts file paths dropped: reason=exited (their process), full (the bound).",
    "reason")

# -- TLS ------------------------------------------------------------------------------------------------
TLS_LIBRARIES_ATTACHED = _gauge("qtap_tls_libraries_attached",
                                "TLS libraries attached, by kind and probe path (fast: emulated; slow: single-step).",
                                "kind", "path")
TLS_LIBRARIES_ATTACHED_PATH = _gauge("qtap_tls_libraries_attached_path", "TLS libraries attached, by probe path.",
                                     "path")
TLS_FUNCTIONS_ATTACHED = _gauge("qtap_tls_functions_attached", "TLS functions attached, by probe path.", "path")
TLS_LIBRARIES_FAILED = _gauge("qtap_tls_libraries_failed", "TLS libraries found but not attached.")
TLS_FILES_ATTACHED = _gauge("qtap_tls_files_attached", "Files with TLS probes attached.")
TLS_FILES_FAILED = _gauge("qtap_tls_files_failed", "Files whose TLS probes failed to attach.")
TLS_ANALYSES = _counter("qtap_tls_analyses_total", "Executables and libraries analysed for TLS functions.")
TLS_CACHE_ENTRIES = _gauge("qtap_tls_cache_entries", "Entries in the TLS analysis cache.")
TLS_CACHE_EVICTED = _counter("qtap_tls_cache_evicted_total",
                             "TLS analysis cache entries forgotten (least recently used) to stay within its bound.")
TLS_CACHE_WRITE_ERRORS = _counter("qtap_tls_cache_write_errors_total", "TLS analysis cache entries not written.")
TLS_RESTORED_FILES = _counter("qtap_tls_restored_files_total", "Files re-attached from the cache at start-up.")
TLS_PATH_FILES = _counter("qtap_tls_path_files_total", "Files looked at by the PATH pre-scan.")
TLS_PATH_ERRORS = _counter("qtap_tls_path_errors_total", "Files the PATH pre-scan could not analyse.")
TLS_SCAN_ERRORS = _counter("qtap_tls_scan_errors_total", "Process scans for TLS libraries that failed.")
TLS_EXEC_HELD = _counter("qtap_tls_exec_held_total", "Processes held at exec until their TLS probes were attached.")
TLS_EXEC_RELEASED = _counter("qtap_tls_exec_released_total", "Held processes released.")
TLS_EXEC_RELEASED_BY_TIMEOUT = _counter("qtap_tls_exec_released_by_timeout_total",
                                        "Held processes released by the timeout rather than by the attach.")
TLS_EXEC_HOLD_VANISHED = _counter("qtap_tls_exec_hold_vanished_total", "Held processes that exited while held.")
TLS_EXEC_HOLD_NS = _counter("qtap_tls_exec_hold_ns_total", "Nanoseconds processes spent held, in all.")
TLS_EXEC_HOLD_NS_MAX = _gauge("qtap_tls_exec_hold_ns_max", "The longest hold, in nanoseconds.")
# Java (JSSE) through qtap's Java agent (qtap_async/tls/java_*.py)
JAVA_JVMS_ATTACHED = _gauge("qtap_java_jvms_attached", "JVMs with qtap's Java agent loaded and capturing.")
JAVA_ATTACH_FAILED = _counter("qtap_java_attach_failed_total", "JVMs that refused qtap's Java agent (after retries).")
JAVA_CHUNKS = _counter("qtap_java_chunks_total", "Plaintext chunks from Java agents tied to their connection.")
JAVA_BAD_FRAMES = _counter("qtap_java_bad_frames_total", "Java agent channels closed for a malformed frame.")
JAVA_DROPPED = _counter("qtap_java_chunks_dropped_total",
                        "Plaintext chunks from Java agents not tied to a connection, by reason.", "reason")
TLS_KNOWN_FILES_FULL = _counter("qtap_tls_known_files_full_total",
                                "Analysed files not remembered in the kernel because its table was full.")

# -- container metadata -------------------------------------------------------------------------------
CONTAINER_CACHE_HITS = _counter("qtap_container_cache_hits_total", "Container lookups answered from the cache.")
CONTAINER_CACHE_MISSES = _counter("qtap_container_cache_misses_total", "Container lookups not in the cache.")
CONTAINER_LOOKUPS = _counter("qtap_container_lookups_total", "Container runtime lookups made.")
CONTAINER_LOOKUPS_FOUND = _counter("qtap_container_lookups_found_total", "Container lookups that found it.")
CONTAINER_LOOKUPS_UNKNOWN = _counter("qtap_container_lookups_unknown_total",
                                     "Container lookups no runtime knew the container for.")
CONTAINER_LOOKUP_ERRORS = _counter("qtap_container_lookup_errors_total", "Container lookups that failed.")
CONTAINER_LOOKUP_QUEUE_DROPPED = _counter("qtap_container_lookup_queue_dropped_total",
                                          "Container lookups dropped because their queue was full.")
CONTAINER_CACHE_EVICTED = _counter("qtap_container_cache_evicted_total", "Container cache entries evicted.")
CONTAINER_CACHE_ENTRIES = _gauge("qtap_container_cache_entries", "Containers in the cache.")

# -- stores (each sample labelled with store="event:NAME" or "object:NAME") -----------------------------------
SINK_DELIVERED_EVENTS = _counter("qtap_sink_delivered_events_total", "Events (objects) the store took.", "store")
SINK_DELIVERED_BYTES = _counter("qtap_sink_delivered_bytes_total", "Bytes the store took.", "store")
SINK_ATTEMPTS = _counter("qtap_sink_attempts_total", "Delivery calls made.", "store")
SINK_ERRORS = _counter("qtap_sink_errors_total", "Delivery calls that failed.", "store")
SINK_RETRIED = _counter("qtap_sink_retried_total", "Delivery calls retried.", "store")
SINK_RETRIED_EVENTS = _counter("qtap_sink_retried_events_total", "Events in retried calls.", "store")
SINK_SPOOLED_EVENTS = _counter("qtap_sink_spooled_events_total", "Events written to the spool.", "store")
SINK_SPOOLED_BYTES = _counter("qtap_sink_spooled_bytes_total", "Bytes written to the spool.", "store")
SINK_UNSPOOLED_EVENTS = _counter("qtap_sink_unspooled_events_total", "Spooled events delivered later.", "store")
SINK_DROPPED_EVENTS = _counter("qtap_sink_dropped_events_total", "Events dropped, for any reason.", "store")
SINK_DROPPED_BYTES = _counter("qtap_sink_dropped_bytes_total", "Bytes dropped, for any reason.", "store")
SINK_QUEUE_DEPTH_EVENTS = _gauge("qtap_sink_queue_depth_events", "Events queued in memory for the store.", "store")
SINK_QUEUE_DEPTH_BYTES = _gauge("qtap_sink_queue_depth_bytes", "Bytes queued in memory for the store.", "store")
SINK_SPOOL_DEPTH_EVENTS = _gauge("qtap_sink_spool_depth_events", "Events waiting in the spool.", "store")
SINK_SPOOL_DEPTH_BYTES = _gauge("qtap_sink_spool_depth_bytes", "Bytes waiting in the spool.", "store")
SINK_SPOOL_DISK_BYTES = _gauge("qtap_sink_spool_disk_bytes", "Bytes the spool's files take on disk.", "store")
SINK_LATENCY_SUM = _gauge("qtap_sink_latency_microseconds_sum",
                          "Time in successful delivery calls, in all (microseconds).", "store")
SINK_LATENCY_COUNT = _gauge("qtap_sink_latency_seconds_count", "Successful delivery calls timed.", "store")
SINK_LATENCY_MAX = _gauge("qtap_sink_latency_microseconds_max", "The slowest successful delivery call (microseconds).",
                          "store")
SINK_UP = _gauge("qtap_sink_up", "1 while the store takes deliveries, 0 while it fails.", "store")
_DROP_HELP = {
    "queue_full": "the in-memory queue was full",
    "spool_full": "the spool was full",
    "spool_corrupt": "a spool file was corrupt",
    "spool_disk_full": "the spool's disk was full",
    "rejected": "the store refused them one by one (they would be refused again)",
    "shutdown": "they were still queued when the agent stopped",
}
#: Why a store dropped events -> (events, bytes) metrics. Every reason is exported from the start (0 until
#: it happens), so a dashboard never waits for a first drop to see the series.
SINK_DROPPED_BY_REASON: dict[str, tuple[MetricDef, MetricDef]] = {
    reason: (_counter("qtap_sink_dropped_" + reason + "_events_total", f"Events dropped because {why}.", "store"),
             _counter("qtap_sink_dropped_" + reason + "_bytes_total", f"Bytes dropped because {why}.", "store"))
    for reason, why in _DROP_HELP.items()
}
OTEL_SPANS = _counter("qtap_otel_spans_total", "Spans the OpenTelemetry store exported.", "store")
OTEL_LOG_RECORDS = _counter("qtap_otel_log_records_total", "Log records the OpenTelemetry store exported.", "store")
OTEL_REJECTED_SPANS = _counter("qtap_otel_rejected_spans_total", "Spans the Collector refused.", "store")
OTEL_REJECTED_LOG_RECORDS = _counter("qtap_otel_rejected_log_records_total", "Log records the Collector refused.",
                                     "store")
OTEL_SKIPPED_EVENTS = _counter("qtap_otel_skipped_events_total",
                               "Events the OpenTelemetry store has no signal for (or whose signal is off).", "store")
OTEL_METRIC_EXPORTS = _counter("qtap_otel_metric_exports_total", "RED metric exports sent.", "store")
OTEL_METRIC_EXPORT_ERRORS = _counter("qtap_otel_metric_export_errors_total",
                                     "RED metric exports that failed (the next one carries the totals).", "store")
OTEL_METRIC_REJECTED_POINTS = _counter("qtap_otel_metric_rejected_points_total",
                                       "RED metric data points the Collector refused.", "store")
OTEL_METRIC_SERIES = _gauge("qtap_otel_metric_series", "RED metric series kept now.", "store")
OTEL_METRIC_FOLDED = _counter("qtap_otel_metric_folded_total",
                              "Observations folded into the \"other\" series past max_series.", "store")
OTEL_METRIC_OBSERVATIONS = _counter("qtap_otel_metric_observations_total", "Transactions the RED metrics counted.",
                                    "store")
STORE_PRUNED_OBJECTS = _counter("qtap_store_pruned_objects_total", "Objects retention deleted.", "store")
STORE_PRUNED_BYTES = _counter("qtap_store_pruned_bytes_total", "Bytes retention deleted.", "store")
STORE_PRUNE_RUNS = _counter("qtap_store_prune_runs_total", "Retention passes over the store.", "store")
STORE_PRUNE_ERRORS = _counter("qtap_store_prune_errors_total", "Retention passes that failed.", "store")

# -- plugins, stacks and the config -------------------------------------------------------------------
PIPELINE_OBJECTS_DISCARDED = _counter("qtap_pipeline_objects_discarded_total",
                                      "Objects no object store was configured to take.")
PIPELINE_EVENTS_DISCARDED = _counter("qtap_pipeline_events_discarded_total",
                                     "Events no event store was configured to take.")
PIPELINE_FILTERED_EVENTS = _counter("qtap_pipeline_filtered_events_total", "Events the filters left out.")
PIPELINE_IGNORED_CONNECTIONS = _counter("qtap_pipeline_ignored_connections_total",
                                        "Connections no stack was selected for.")
PIPELINE_OWN_SERVICE_CONNECTIONS = _counter("qtap_pipeline_own_service_connections_total",
                                            "Connections to or of the agent's own services, never captured.")
CONFIG_RELOADS = _counter("qtap_config_reloads_total", "Config reloads applied (SIGHUP, file change, control plane).")
CONFIG_RELOAD_FAILURES = _counter("qtap_config_reload_failures_total", "Config reloads refused (the old one stays).")
STACK_TRANSACTIONS = _counter("qtap_stack_transactions_total", "Transactions a plugin stack processed.", "stack")
STACK_PLUGIN_ERRORS = _counter("qtap_stack_plugin_errors_total", "Plugin calls that raised.", "stack")

# -- the http_metrics plugin (docs/otel.md): RED histograms under the OpenTelemetry HTTP metric names, mapped
# to Prometheus (dots to underscores, the unit as suffix). Egress is the client side, ingress the server's. Each
# sample carries the ``stack`` label and the labels its config chose, a subset of HTTP_METRIC_LABELS.
HTTP_METRIC_LABELS = ("stack", "method", "status_class", "domain", "route", "direction", "process", "container")
_HTTP_HELP = {"request_duration_seconds": "Duration of HTTP requests seen by the agent, in seconds",
              "request_body_size_bytes": "Size of HTTP request bodies seen by the agent, in bytes",
              "response_body_size_bytes": "Size of HTTP response bodies seen by the agent, in bytes"}
#: (side, measure) -> its histogram; side is "client" (egress) or "server" (ingress), measure a _HTTP_HELP key.
HTTP_HISTOGRAMS: dict[tuple[str, str], MetricDef] = {
    (side, measure): _declare(f"http_{side}_{measure}", "histogram", f"{why} ({side} side).", HTTP_METRIC_LABELS)
    for side in ("client", "server") for measure, why in _HTTP_HELP.items()
}
HTTP_METRICS_SERIES = _gauge("qtap_http_metrics_series", "Series the http_metrics plugin keeps now.", "stack")
HTTP_METRICS_OBSERVATIONS = _counter("qtap_http_metrics_observations_total",
                                     "Transactions the http_metrics plugin counted.", "stack")
HTTP_METRICS_FOLDED = _counter("qtap_http_metrics_folded_total",
                               "Observations whose labels folded into \"other\" (max_series or max_values).",
                               "stack")

# -- the status server and readiness --------------------------------------------------------------------
READY = _gauge("qtap_ready", "1 while /readyz answers 200.")
STORE_CHECKS = _counter("qtap_store_checks_total", "Readiness checks of the stores.")
STORE_CHECK_FAILURES = _counter("qtap_store_check_failures_total", "Readiness checks that found a store failing.")
STATUS_REQUESTS = _counter("qtap_status_requests_total", "Requests to the status server, by answer status.", "code")


# -- Pulse (its own /metrics, rendered by qtap_async.pulse.metrics.Metrics) ----------------------------------------
PULSE: Catalog = {}


def _pulse(name: str, kind: Kind, help: str, *labels: str) -> MetricDef:
    return _declare(name, kind, help, labels, into=PULSE)


PULSE_BUILD_INFO = _pulse("pulse_build_info", "gauge", "The running version.", "version")
PULSE_HTTP_REQUESTS = _pulse("pulse_http_requests_total", "counter", "HTTP requests by route and status.",
                             "route", "status")
PULSE_EVENTS_ACCEPTED = _pulse("pulse_events_accepted_total", "counter", "Events that passed validation.")
PULSE_EVENTS_REJECTED = _pulse("pulse_events_rejected_total", "counter", "Events rejected with a per-item error.")
PULSE_EVENTS_STRIPPED = _pulse("pulse_events_stripped_total", "counter",
                               "Events that carried header/body fields (dropped, never stored).")
PULSE_EVENTS_SKEW_CORRECTED = _pulse("pulse_events_skew_corrected_total", "counter",
                                     "Events whose time was corrected for clock skew.")
PULSE_AUTH_FAILURES = _pulse("pulse_auth_failures_total", "counter",
                             "Requests refused for a missing, invalid, revoked or under-scoped token.", "status")
PULSE_INGEST_BUSY = _pulse("pulse_ingest_busy_total", "counter", "Ingest requests refused because Pulse was busy.")
PULSE_CONNECTIONS_REFUSED = _pulse("pulse_connections_refused_total", "counter",
                                   "Connections refused before a request (too many, or a slow header).", "reason")
PULSE_INSERT_ROWS = _pulse("pulse_insert_rows_total", "counter", "Rows written to storage.", "table")
PULSE_INSERT_BATCHES = _pulse("pulse_insert_batches_total", "counter", "INSERT statements run.", "table")
PULSE_INSERT_ERRORS = _pulse("pulse_insert_errors_total", "counter", "INSERT rounds that failed.")
PULSE_INSERT_SECONDS = _pulse("pulse_insert_seconds", "summary", "Time per INSERT.")
PULSE_QUERY_SECONDS = _pulse("pulse_query_seconds", "summary", "Time per query API call.", "route")
PULSE_KAFKA_MESSAGES = _pulse("pulse_kafka_messages_total", "counter", "Kafka messages consumed.")
PULSE_KAFKA_REJECTED = _pulse("pulse_kafka_rejected_total", "counter",
                              "Kafka messages dropped (undecodable or unauthenticated).", "reason")
PULSE_KAFKA_COMMITS = _pulse("pulse_kafka_commits_total", "counter", "Kafka offset commits after a stored batch.")
PULSE_ROLLUP_HOURS = _pulse("pulse_rollup_hours_built_total", "counter",
                            "(team, hour) rollups built or rebuilt for the dashboard and the dependency map.")
PULSE_ROLLUP_ERRORS = _pulse("pulse_rollup_errors_total", "counter",
                             "Rollup rounds that failed (their hours are read from the raw table until built).")

# -- the control plane (its own /metrics, the same renderer) ------------------------------------------------------
CONTROL: Catalog = {}


def _control(name: str, kind: Kind, help: str, *labels: str, counter_suffix: bool = True) -> MetricDef:
    return _declare(name, kind, help, labels, into=CONTROL, counter_suffix=counter_suffix)


# The control plane reports its version under Pulse's name: one build, one version series to query.
CONTROL_BUILD_INFO = _control("pulse_build_info", "gauge", "The running version.", "version")
CONTROL_HTTP_REQUESTS = _control("control_http_requests_total", "counter", "HTTP requests by route and status.",
                                 "route", "status")
CONTROL_AUTH_FAILURES = _control("control_auth_failures_total", "counter",
                                 "Requests refused for missing, invalid, revoked or insufficient credentials "
                                 "(by answer status, or by kind for agent registrations).", "kind", "status")
CONTROL_LOGINS = _control("control_logins_total", "counter", "Logins by method and result.", "method", "result")
CONTROL_CONNECTIONS_REFUSED = _control("control_connections_refused_total", "counter",
                                       "Connections refused before a request (too many, or a slow header).",
                                       "reason")
CONTROL_REJECTED_REQUESTS = _control("control_rejected_requests_total", "counter",
                                     "Requests refused for hostile or invalid input, by status.", "status")
CONTROL_CONFIGS_CREATED = _control("control_configs_created_total", "counter", "Config versions stored.")
CONTROL_CONFIGS_REJECTED = _control("control_configs_rejected_total", "counter", "Config bodies refused by validation.")
CONTROL_ACTIVATIONS = _control("control_activations_total", "counter", "Activations and rollbacks.", "action")
CONTROL_AGENT_REGISTRATIONS = _control("control_agent_registrations_total", "counter", "Agents that joined.")
CONTROL_AGENT_HEARTBEATS = _control("control_agent_heartbeats_total", "counter", "Agent status reports received.")
CONTROL_AGENT_REFUSALS = _control("control_agent_refusals_total", "counter",
                                  "Config versions an agent reported it refused.")
CONTROL_UI_PAYLOAD_URLS = _control("control_ui_payload_urls_total", "counter",
                                   "Payload URLs handed to browsers by the web UI (the bytes never pass here).")
# A counter without the _total suffix: its name predates this module and dashboards use it.
CONTROL_PUSH_STREAMS = _control("control_push_streams", "counter", "Event streams opened by agents.",
                                counter_suffix=False)


# -- exposition -----------------------------------------------------------------------------------------


def parse_key(key: str) -> tuple[str, dict[str, str]] | None:
    """``name{a="x",b="y"}`` -> (name, labels); None for a key that is not a valid metric name."""
    m = _KEY.match(key)
    if m is None:
        return None
    return m.group(1), {k: _unescape(v) for k, v in _LABEL.findall(m.group(2) or "")}


def version() -> str:
    try:
        return metadata.version("qtap-async")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_info() -> dict[str, str]:
    from qtap_async.bpf.loader import objects_dir

    objects = ""
    try:
        import json

        manifest = json.loads((objects_dir() / "manifest.json").read_text())
        objects = str(manifest["objects"]["socket.bpf.o"])[:12]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # an agent without a manifest still serves its metrics
    from qtap_async.telemetry.allocator import active

    return {"version": version(), "python": platform.python_version(), "kernel": platform.release(),
            "implementation": sys.implementation.name, "bpf_objects": objects, "allocator": active()}


class SnapshotCollector(Collector):
    """Metric families built from the snapshot sources at each scrape, typed by their declarations."""

    def __init__(self, sources: Iterable[SnapshotSource], info: Mapping[str, str] | None = None) -> None:
        self.sources = list(sources)
        self.family_sources: list[FamilySource] = []
        self.info = dict(info if info is not None else build_info())
        self.failed_sources = 0  # a source that raised during a scrape (counted; the scrape goes on)
        self.undeclared: set[str] = set()  # sample names left out because nothing declares them

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, int | float] = {}
        for source in self.sources:
            try:
                merged.update(source())
            except Exception:
                self.failed_sources += 1
        families: dict[str, Metric] = {}
        for key, value in merged.items():
            parsed = parse_key(key)
            if parsed is None:
                continue
            name, labels = parsed
            decl = DECLARED.get(name)
            if decl is None:
                if name not in self.undeclared:
                    self.undeclared.add(name)
                    log.warning("metric %s is not declared in qtap_async.telemetry.metrics; not exported", name)
                continue
            fam = families.get(decl.family)
            if fam is None:
                fam = families[decl.family] = Metric(decl.family, decl.help, decl.kind)
            fam.add_sample(name, labels, float(value))
        info = Metric(BUILD_INFO.family, BUILD_INFO.help, "info")
        info.add_sample(BUILD_INFO.name, self.info, 1.0)
        yield info
        errors = Metric(METRICS_SOURCE_ERRORS.family, METRICS_SOURCE_ERRORS.help, "counter")
        errors.add_sample(METRICS_SOURCE_ERRORS.name, {}, float(self.failed_sources))
        yield errors
        yield from families.values()

    def render_built(self) -> bytes:
        """The histograms of the family sources, as exposition text: only declared histograms whose labels
        are declared ones (the same rule as for snapshots: the exposition holds only what this module
        documents); one family's series from several sources under one HELP/TYPE. Rendered here rather than
        by prometheus_client, which escapes every label of every bucket line: a series' labels are written
        once for all its lines (2000 series: 0.2 s instead of 3 s per scrape)."""
        by_name: dict[str, list[Histograms]] = {}
        for source in self.family_sources:
            try:
                built = list(source())
            except Exception:
                self.failed_sources += 1
                continue
            for h in built:
                decl = DECLARED.get(h.decl.name)
                if decl != h.decl or decl.kind != "histogram" or not set(h.labels) <= set(decl.labels):
                    if h.decl.name not in self.undeclared:
                        self.undeclared.add(h.decl.name)
                        log.warning("histogram %s is not declared (or has undeclared labels); not exported",
                                    h.decl.name)
                    continue
                by_name.setdefault(decl.name, []).append(h)
        lines: list[str] = []
        for name, group in by_name.items():
            lines.append(f"# HELP {name} {group[0].decl.help}")
            lines.append(f"# TYPE {name} histogram")
            for h in group:
                les = [*(repr(float(b)) for b in h.bounds), "+Inf"]
                for values, counts, total in h.series:
                    lab = ",".join(k + '="' + _escape(v) + '"' for k, v in zip(h.labels, values, strict=True))
                    head = name + "_bucket{" + lab + ("," if lab else "") + 'le="'
                    lines.extend(f'{head}{le}"}} {n}' for le, n in zip(les, counts, strict=True))
                    lines.append(f"{name}_count{{{lab}}} {counts[-1]}")
                    lines.append(f"{name}_sum{{{lab}}} {total!r}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


@dataclass(slots=True)
class Histograms:
    """Series of one declared histogram, as a family source builds them for a scrape: label values (in
    ``labels`` order), cumulative bucket counts (one per bound, then ``+Inf``, which is the count) and sum."""

    decl: MetricDef
    labels: tuple[str, ...]
    bounds: tuple[float, ...]
    series: list[tuple[tuple[str, ...], list[int], float]]


class MetricRegistry:
    """What /metrics serves. A process may hold several (tests run agents side by side)."""

    def __init__(self, sources: Iterable[SnapshotSource] = (), info: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector(sources, info)
        self.registry.register(self.collector)

    def add_source(self, source: SnapshotSource) -> None:
        self.collector.sources.append(source)

    def add_families(self, source: FamilySource) -> None:
        self.collector.family_sources.append(source)

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + self.collector.render_built()
