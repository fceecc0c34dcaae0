"""The Docker Engine API client against a real HTTP server on a unix socket (as dockerd and podman's
service answer): an inspect document becomes ContainerInfo, an unknown id is None, every other answer is a
ContainerRuntimeError naming the socket; only sockets that exist are asked."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from qtap_async.context.containerd import ContainerdApi
from qtap_async.context.runtimes import MAX_RESPONSE, DockerApi, default_runtimes
from qtap_async.errors import ContainerRuntimeError

CID = "c0ffee" + "0" * 58
INSPECT = {
    "Id": CID,
    "Name": "/web-1",
    "Config": {"Image": "nginx:1.27", "Labels": {"app": "web", "io.kubernetes.pod.name": "web-7d9",
                                                 "io.kubernetes.pod.namespace": "shop",
                                                 "io.kubernetes.pod.uid": "uid-1",
                                                 "io.kubernetes.container.name": "nginx", "n": 3}},
}


class _Docker(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]] = {}
    requests: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Accept")))
        if self.path == "/hang-up":
            self.connection.close()
            return
        status, body = self.answers.get(self.path, (404, b'{"message": "No such container"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[tuple[str, type[_Docker]]]:
    path = str(tmp_path / "docker.sock")
    handler = type("Handler", (_Docker,), {"answers": {}, "requests": []})
    server = _UnixHTTP(path, handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield path, handler
    server.shutdown()
    server.server_close()


def test_inspect_document_becomes_container_info(docker: tuple[str, type[_Docker]]) -> None:
    path, handler = docker
    handler.answers[f"/containers/{CID[:12]}/json"] = (200, json.dumps(INSPECT).encode())
    api = DockerApi(path)
    assert api.available()
    info = api.lookup(CID[:12])
    assert info is not None
    assert (info.id, info.runtime, info.image) == (CID, "docker", "nginx:1.27")
    assert info.name == "nginx"  # the kubelet's container name wins over the runtime's "web-1"
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("web-7d9", "shop", "uid-1")
    assert info.labels["app"] == "web" and info.labels["n"] == "3"  # label values as text
    assert handler.requests == [(f"/containers/{CID[:12]}/json", "application/json")]


def test_a_plain_container_and_podmans_image_field(docker: tuple[str, type[_Docker]]) -> None:
    path, handler = docker
    handler.answers[f"/containers/{CID}/json"] = (200, json.dumps(
        {"Id": CID, "Name": "/db", "ImageName": "docker.io/library/postgres:16", "Config": {}}).encode())
    info = DockerApi(path).lookup(CID)
    assert info is not None
    assert (info.name, info.image, info.labels, info.pod_name) == ("db", "docker.io/library/postgres:16", {}, "")


def test_unknown_id_is_none(docker: tuple[str, type[_Docker]]) -> None:
    path, _ = docker
    assert DockerApi(path).lookup("f" * 64) is None


@pytest.mark.parametrize("status, body, message", [
    (500, b'{"message": "boom"}', "HTTP 500 for container c0ffee000000"),
    (200, b"[1, 2]", "HTTP 200 for container c0ffee000000"),
    (200, b"<html>not json</html>", "did not answer JSON"),
    (200, b" " * (MAX_RESPONSE + 1), f"answer over {MAX_RESPONSE} bytes"),
])
def test_other_answers_are_errors_naming_the_socket(docker: tuple[str, type[_Docker]], status: int, body: bytes,
                                                    message: str) -> None:
    path, handler = docker
    handler.answers[f"/containers/{CID}/json"] = (status, body)
    with pytest.raises(ContainerRuntimeError) as info:
        DockerApi(path).lookup(CID)
    assert path in str(info.value) and message in str(info.value)


def test_a_runtime_that_hangs_up_or_is_gone_is_an_error(docker: tuple[str, type[_Docker]], tmp_path: Path) -> None:
    path, _ = docker
    with pytest.raises(ContainerRuntimeError, match=r"docker\.sock"):
        DockerApi(path)._get("/hang-up")
    gone = DockerApi(str(tmp_path / "nobody.sock"))
    assert not gone.available()
    with pytest.raises(ContainerRuntimeError, match=r"nobody\.sock"):
        gone.lookup(CID)


def test_only_existing_sockets_are_asked(docker: tuple[str, type[_Docker]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = docker
    plain = tmp_path / "containerd.sock.txt"
    plain.write_text("not a socket")
    containerd = tmp_path / "containerd.sock"
    os.symlink(path, containerd)  # any unix socket will do to be "available"
    rts = default_runtimes([path, str(plain), str(tmp_path / "missing.sock"), str(containerd)])
    assert len(rts) == 2
    assert [(type(r), r.socket_path) for r in rts if isinstance(r, DockerApi | ContainerdApi)] == [
        (DockerApi, path), (ContainerdApi, str(containerd))]
    monkeypatch.setenv("QTAP_CONTAINER_SOCKETS", f"{tmp_path / 'missing.sock'}::{path}")
    assert [type(r) for r in default_runtimes()] == [DockerApi]
    monkeypatch.setenv("QTAP_CONTAINER_SOCKETS", "")
    assert default_runtimes() == []
