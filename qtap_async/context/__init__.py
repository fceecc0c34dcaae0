"""Process, container and pod metadata caches (/proc, container runtime sockets)."""

from __future__ import annotations

from qtap_async.context.containers import ContainerCache, ContainerInfo, container_fields, install, installed
from qtap_async.context.runtimes import DockerApi, default_runtimes

__all__ = ["ContainerCache", "ContainerInfo", "DockerApi", "container_fields", "default_runtimes", "install",
           "installed"]
