"""Container and pod metadata by container id, from the runtime's own API, cached and looked up off the hot path.

The drain asks ``ContainerCache.get(id)`` for every event it builds: a hit is a dict lookup; a miss returns
None at once and queues the id for a worker thread that asks the runtimes (podman/Docker socket, then the
CRI), so a slow or absent runtime never blocks the ring-buffer drain. The first events of a new container
carry only ``container_id``; the ones after the lookup carry its name, image, labels and pod.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from qtap_async.errors import ContainerRuntimeError
from qtap_async.telemetry import metrics

log = logging.getLogger("qtap.context")

MAX_LABELS = 32  # labels kept per container (sorted by key; the rest counted as truncated)
MAX_LABEL_CHARS = 256  # per key and per value
MAX_ENTRIES = 4096
MISS_RETRY_S = 30.0  # an id no runtime knows is asked again after this long (it may be starting)
QUEUE_MAX = 1024  # ids waiting for a lookup; more are dropped (counted) and asked again on a later event

# Pod labels the kubelet sets on every container (CRI, and Docker/containerd containers made by it).
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
K8S_CONTAINER_NAME = "io.kubernetes.container.name"


class ContainerInfo(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    id: str
    name: str = ""
    image: str = ""
    labels: dict[str, str] = {}
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    runtime: str = ""  # which API answered: "docker" (podman's compat API too), "cri"
    labels_truncated: int = 0


def bounded_labels(labels: dict[str, str] | None) -> tuple[dict[str, str], int]:
    """At most MAX_LABELS labels of at most MAX_LABEL_CHARS each; how many were left out."""
    if not labels:
        return {}, 0
    items = sorted((str(k)[:MAX_LABEL_CHARS], str(v)[:MAX_LABEL_CHARS]) for k, v in labels.items())
    return dict(items[:MAX_LABELS]), max(0, len(items) - MAX_LABELS)


def info_from(cid: str, runtime: str, name: str, image: str, labels: dict[str, str] | None) -> ContainerInfo:
    labels = labels or {}
    kept, cut = bounded_labels(labels)
    return ContainerInfo(
        id=cid,
        # A container made by the kubelet is best known by its container name in the pod spec.
        name=labels.get(K8S_CONTAINER_NAME) or name,
        image=image,
        labels=kept,
        pod_name=labels.get(POD_NAME, ""),
        pod_namespace=labels.get(POD_NAMESPACE, ""),
        pod_uid=labels.get(POD_UID, ""),
        runtime=runtime,
        labels_truncated=cut,
    )


class Runtime(Protocol):
    """One container runtime API. ``lookup`` blocks (it runs on the worker thread): the container's metadata,
    None when this runtime does not know the id, ContainerRuntimeError when it cannot be asked."""

    name: str

    def available(self) -> bool: ...

    def lookup(self, container_id: str) -> ContainerInfo | None: ...


class ContainerStats:
    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.lookups = 0
        self.found = 0
        self.unknown = 0
        self.errors = 0
        self.queue_dropped = 0
        self.evicted = 0


class ContainerCache:
    def __init__(self, runtimes: Sequence[Runtime], *, max_entries: int = MAX_ENTRIES,
                 miss_retry_s: float = MISS_RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtimes = list(runtimes)
        self.max_entries = max_entries
        self.miss_retry_s = miss_retry_s
        self.clock = clock
        self.stats = ContainerStats()
        self._known: OrderedDict[str, ContainerInfo] = OrderedDict()
        self._asked: dict[str, float] = {}  # id -> when it was queued or found unknown (no re-ask before retry)
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._queued = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards _known/_asked between the drain and the worker

    # -- the drain's side: never blocks ---------------------------------------------------------------
    def get(self, container_id: str) -> ContainerInfo | None:
        if not container_id:
            return None
        info = self._known.get(container_id)
        if info is not None:
            self.stats.hits += 1
            return info
        self.stats.misses += 1
        now = self.clock()
        asked = self._asked.get(container_id)
        if asked is not None and now - asked < self.miss_retry_s:
            return None
        if self._queued >= QUEUE_MAX or not self.runtimes:
            if self.runtimes:
                self.stats.queue_dropped += 1
            return None
        with self._lock:
            self._asked[container_id] = now
            if len(self._asked) > 4 * self.max_entries:  # ids of containers long gone
                for old in list(self._asked)[: self.max_entries]:
                    del self._asked[old]
        self._queued += 1
        self._queue.put(container_id)
        self._ensure_worker()
        return None

    # -- the worker's side -------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="container-lookup", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            cid = self._queue.get()
            self._queued -= 1
            if cid is None:
                return
            self.resolve(cid)

    def resolve(self, container_id: str) -> ContainerInfo | None:
        """Ask each runtime in turn (blocking) and cache the answer."""
        self.stats.lookups += 1
        for rt in self.runtimes:
            try:
                info = rt.lookup(container_id)
            except ContainerRuntimeError as exc:
                self.stats.errors += 1
                log.debug("container %s: %s", container_id[:12], exc)
                continue
            if info is not None:
                self.stats.found += 1
                self.put(info)
                return info
        self.stats.unknown += 1
        with self._lock:
            self._asked[container_id] = self.clock()
        return None

    def put(self, info: ContainerInfo) -> None:
        with self._lock:
            self._known[info.id] = info
            self._asked.pop(info.id, None)
            if len(self._known) > self.max_entries:
                self._known.popitem(last=False)
                self.stats.evicted += 1

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    def snapshot(self) -> dict[str, int]:
        s = self.stats
        return {
            metrics.CONTAINER_CACHE_HITS.name: s.hits,
            metrics.CONTAINER_CACHE_MISSES.name: s.misses,
            metrics.CONTAINER_LOOKUPS.name: s.lookups,
            metrics.CONTAINER_LOOKUPS_FOUND.name: s.found,
            metrics.CONTAINER_LOOKUPS_UNKNOWN.name: s.unknown,
            metrics.CONTAINER_LOOKUP_ERRORS.name: s.errors,
            metrics.CONTAINER_LOOKUP_QUEUE_DROPPED.name: s.queue_dropped,
            metrics.CONTAINER_CACHE_EVICTED.name: s.evicted,
            metrics.CONTAINER_CACHE_ENTRIES.name: len(self._known),
        }


# -- the fields events carry ---------------------------------------------------------------------------
_EMPTY: dict[str, object] = {}
_cache: ContainerCache | None = None


def install(cache: ContainerCache | None) -> None:
    """The cache events take their container fields from (the agent installs one while it runs)."""
    global _cache
    _cache = cache


def installed() -> ContainerCache | None:
    return _cache


def container_fields(container_id: str) -> dict[str, object]:
    """The container and pod fields of an event, for ``**`` into its constructor: empty ones left out, so
    an event of a host process (or of a container not looked up yet) is as before."""
    cache = _cache
    if cache is None or not container_id:
        return _EMPTY
    info = cache.get(container_id)
    if info is None:
        return _EMPTY
    out: dict[str, object] = {}
    if info.name:
        out["container_name"] = info.name
    if info.image:
        out["container_image"] = info.image
    if info.labels:
        out["container_labels"] = info.labels
    if info.pod_name:
        out["pod_name"] = info.pod_name
        out["pod_namespace"] = info.pod_namespace
        out["pod_uid"] = info.pod_uid
    return out
