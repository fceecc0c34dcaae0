"""Container runtime APIs the metadata cache asks: the Docker Engine API on a unix socket, which podman's
service speaks too (``podman system service``), and containerd's own API (qtap_async.context.containerd), which
on a Kubernetes node carries the kubelet's pod labels. CRI-O is not asked yet.

Each call is blocking with a short timeout: they run on the cache's worker thread, never on the event loop.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from collections.abc import Sequence
from typing import Any

from qtap_async.context.containers import ContainerInfo, Runtime, info_from
from qtap_async.errors import ContainerRuntimeError

# Where runtimes put their API sockets (the DaemonSet mounts the host's /run so these are the host's).
DOCKER_SOCKETS = ("/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock")
TIMEOUT_S = 2.0
MAX_RESPONSE = 4 << 20  # an inspect document is a few KiB; refuse anything absurd


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class DockerApi:
    """``GET /containers/{id}/json`` on the Docker Engine API (Docker, or podman's compatible service)."""

    name = "docker"

    def __init__(self, socket_path: str, timeout_s: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def available(self) -> bool:
        return _is_socket(self.socket_path)

    def _get(self, path: str) -> tuple[int, Any]:
        conn = _UnixConnection(self.socket_path, self.timeout_s)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_RESPONSE + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise ContainerRuntimeError(f"{self.socket_path}: {exc}") from None
        finally:
            conn.close()
        if len(body) > MAX_RESPONSE:
            raise ContainerRuntimeError(f"{self.socket_path}: answer over {MAX_RESPONSE} bytes")
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            raise ContainerRuntimeError(f"{self.socket_path}: {path} did not answer JSON") from None

    def lookup(self, container_id: str) -> ContainerInfo | None:
        status, doc = self._get(f"/containers/{container_id}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(doc, dict):
            raise ContainerRuntimeError(f"{self.socket_path}: HTTP {status} for container {container_id[:12]}")
        config: dict[str, Any] = doc["Config"] if isinstance(doc.get("Config"), dict) else {}
        labels: dict[str, Any] = config["Labels"] if isinstance(config.get("Labels"), dict) else {}
        name = str(doc.get("Name") or "").lstrip("/")
        image = str(config.get("Image") or doc.get("ImageName") or doc.get("Image") or "")
        return info_from(str(doc.get("Id") or container_id), self.name, name, image,
                         {str(k): str(v) for k, v in labels.items()})


CONTAINERD_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock")


def default_runtimes(sockets: Sequence[str] | None = None) -> list[Runtime]:
    """The runtimes whose sockets exist here (``QTAP_CONTAINER_SOCKETS``, colon-separated, overrides): the Docker
    API for docker/podman sockets, containerd's API for a socket named ``containerd*``."""
    from qtap_async.context.containerd import ContainerdApi

    env = os.environ.get("QTAP_CONTAINER_SOCKETS")
    if sockets is None and env is not None:
        sockets = [s for s in env.split(":") if s]
    paths = list(DOCKER_SOCKETS + CONTAINERD_SOCKETS) if sockets is None else list(sockets)
    out: list[Runtime] = []
    for path in paths:
        rt: Runtime = ContainerdApi(path) if "containerd" in os.path.basename(path) else DockerApi(path)
        if rt.available():
            out.append(rt)
    return out
