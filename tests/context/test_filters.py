"""tap.filters.containers: a connection of a matching container (namespace, image, name, labels) is ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtap_async.config import load_config
from qtap_async.context import ContainerCache, ContainerInfo, install
from qtap_async.errors import ConfigError
from qtap_async.filters import SKIP_ALL
from qtap_async.topology import Graph

CONFIG = """version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: disabled}]
tap:
  filters:
    containers:
      - pod_namespace: kube-system
      - container_image: "*/pause:*"
      - labels: {team: infra}
"""

SYSTEM = ContainerInfo(id="1" * 64, name="coredns", image="reg/coredns:1", pod_name="coredns-0",
                       pod_namespace="kube-system")
PAUSE = ContainerInfo(id="2" * 64, name="pause", image="registry.k8s.io/pause:3.9")
INFRA = ContainerInfo(id="3" * 64, name="x", image="i", labels={"team": "infra", "tier": "a"})
SHOP = ContainerInfo(id="4" * 64, name="web", image="reg/web:2", pod_name="web-0", pod_namespace="shop",
                     labels={"team": "shop"})


def test_matching_containers_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "qtap.yaml"
    path.write_text(CONFIG)
    runtime = Graph(load_config(path)).dispatch
    cache = ContainerCache([])
    for info in (SYSTEM, PAUSE, INFRA, SHOP):
        cache.put(info)
    install(cache)
    try:
        decide = runtime.decide
        assert decide(1, False, "10.0.0.1", "/usr/bin/coredns", SYSTEM.id) is SKIP_ALL
        assert decide(2, False, "10.0.0.1", "/pause", PAUSE.id) is SKIP_ALL
        assert decide(3, False, "10.0.0.1", "/x", INFRA.id) is SKIP_ALL
        assert decide(4, False, "10.0.0.1", "/web", SHOP.id) is not SKIP_ALL
        assert decide(5, False, "10.0.0.1", "/usr/bin/curl", "") is not SKIP_ALL  # a host process
        # Not looked up yet: decided on the id alone (captured), never waiting for the runtime.
        assert decide(6, False, "10.0.0.1", "/new", "5" * 64) is not SKIP_ALL
        assert runtime.ignored_connections == 3
    finally:
        install(None)


def test_an_empty_filter_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "qtap.yaml"
    path.write_text(CONFIG.replace("      - labels: {team: infra}\n", "      - {}\n"))
    with pytest.raises(ConfigError, match="container filter needs at least one"):
        load_config(path)
