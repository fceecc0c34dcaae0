"""containerd's own API (gRPC on its socket): ``containerd.services.containers.v1.Containers/Get``.

On a Kubernetes node whose runtime is containerd, the kubelet creates containers through containerd's CRI
plugin, which keeps the pod labels (``io.kubernetes.pod.name`` ...) on the containerd container: so this one call
gives the pod as well. The two messages are small enough to encode here by hand (protobuf wire format), which
spares generated stubs: only grpcio is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtap_async.context.containers import ContainerInfo, info_from
from qtap_async.errors import ContainerRuntimeError

GET = "/containerd.services.containers.v1.Containers/Get"
NAMESPACES = ("k8s.io", "default", "moby")  # kubelet's, ctr's and Docker's
TIMEOUT_S = 2.0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of one protobuf message: ints for varints, bytes for length-delimited fields."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((num, value))
        elif wire == 2:
            n, pos = _varint(data, pos)
            if pos + n > len(data):
                raise ValueError("truncated field")
            out.append((num, data[pos:pos + n]))
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def encode_get(container_id: str) -> bytes:
    raw = container_id.encode()
    return b"\x0a" + _encode_len(len(raw)) + raw


def _encode_len(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_container(response: bytes) -> tuple[str, str, dict[str, str]]:
    """GetContainerResponse -> (id, image, labels)."""
    container = next((v for n, v in fields(response) if n == 1 and isinstance(v, bytes)), b"")
    cid = image = ""
    labels: dict[str, str] = {}
    for n, v in fields(container):
        if n == 1 and isinstance(v, bytes):
            cid = v.decode("utf-8", "replace")
        elif n == 3 and isinstance(v, bytes):
            image = v.decode("utf-8", "replace")
        elif n == 2 and isinstance(v, bytes):  # map entry: key = 1, value = 2
            entry = dict((k, x) for k, x in fields(v) if isinstance(x, bytes))
            labels[entry.get(1, b"").decode("utf-8", "replace")] = entry.get(2, b"").decode("utf-8", "replace")
    return cid, image, labels


class ContainerdApi:
    name = "containerd"

    def __init__(self, socket_path: str, namespaces: Sequence[str] = NAMESPACES,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.namespaces = tuple(namespaces)
        self.timeout_s = timeout_s
        self._channel: Any = None
        self._get: Any = None

    def available(self) -> bool:
        import os
        import stat

        try:
            return stat.S_ISSOCK(os.stat(self.socket_path).st_mode)
        except OSError:
            return False

    def _stub(self) -> Any:
        if self._get is None:
            try:
                import grpc  # type: ignore[import-untyped]
            except ImportError:
                raise ContainerRuntimeError(f"{self.socket_path}: asking containerd needs grpcio") from None
            self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
            self._get = self._channel.unary_unary(GET, request_serializer=None, response_deserializer=None)
        return self._get

    def lookup(self, container_id: str) -> ContainerInfo | None:
        import grpc

        get = self._stub()
        for ns in self.namespaces:
            try:
                resp = get(encode_get(container_id), timeout=self.timeout_s,
                           metadata=(("containerd-namespace", ns),))
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.NOT_FOUND:
                    continue
                raise ContainerRuntimeError(f"{self.socket_path}: {code}: "
                                            f"{exc.details() if hasattr(exc, 'details') else exc}") from None
            try:
                cid, image, labels = decode_container(resp)
            except ValueError as exc:
                raise ContainerRuntimeError(f"{self.socket_path}: unreadable answer: {exc}") from None
            return info_from(cid or container_id, self.name, cid or container_id, image, labels)
        return None
