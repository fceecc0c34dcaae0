"""The container metadata cache: a miss never waits for the runtime, answers are cached, everything is bounded."""

from __future__ import annotations

import threading
import time

from qtap_async.context import ContainerCache, ContainerInfo, container_fields, install
from qtap_async.context.containers import MAX_LABEL_CHARS, MAX_LABELS, info_from
from qtap_async.errors import ContainerRuntimeError

CID = "a" * 64


class BlockedRuntime:
    """A runtime whose answer waits until the test releases it (a hung socket, in effect)."""

    name = "blocked"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: list[str] = []

    def available(self) -> bool:
        return True

    def lookup(self, container_id: str) -> ContainerInfo | None:
        self.asked.append(container_id)
        self.release.wait(30)
        return info_from(container_id, self.name, "web", "img:1",
                         {"io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "shop",
                          "io.kubernetes.pod.uid": "u-1", "io.kubernetes.container.name": "nginx"})


class BrokenRuntime:
    name = "broken"

    def available(self) -> bool:
        return True

    def lookup(self, container_id: str) -> ContainerInfo | None:
        raise ContainerRuntimeError("socket refused")


def wait_until(pred: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_miss_returns_at_once_while_the_runtime_hangs() -> None:
    rt = BlockedRuntime()
    cache = ContainerCache([BrokenRuntime(), rt])
    install(cache)
    try:
        assert container_fields(CID) == {}  # the runtime has not answered: no fields, and no waiting
        assert wait_until(lambda: rt.asked == [CID])
        assert cache.get(CID) is None  # asked already: not queued again
        assert rt.asked == [CID]
        rt.release.set()
        assert wait_until(lambda: cache.get(CID) is not None)
        fields = container_fields(CID)
        assert fields["container_name"] == "nginx"  # the pod spec's container name
        assert fields["pod_name"] == "web-0" and fields["pod_namespace"] == "shop" and fields["pod_uid"] == "u-1"
        snap = cache.snapshot()
        assert snap["qtap_container_lookup_errors_total"] == 1  # the broken runtime, counted
        assert snap["qtap_container_lookups_found_total"] == 1
    finally:
        install(None)
        rt.release.set()
        cache.close()


def test_bounded_entries_and_labels() -> None:
    cache = ContainerCache([], max_entries=3)
    for i in range(5):
        cache.put(ContainerInfo(id=f"{i:064x}"))
    assert cache.snapshot()["qtap_container_cache_entries"] == 3
    assert cache.snapshot()["qtap_container_cache_evicted_total"] == 2
    labels = {f"k{i:03}": "v" * 1000 for i in range(MAX_LABELS + 10)}
    info = info_from(CID, "docker", "n", "i", labels)
    assert len(info.labels) == MAX_LABELS and info.labels_truncated == 10
    assert all(len(v) == MAX_LABEL_CHARS for v in info.labels.values())
    assert cache.get("") is None and container_fields("") == {}
