"""Pod metadata through containerd's own API: a container created in containerd (namespace k8s.io, with the pod
labels the kubelet's CRI plugin puts on every container), busybox `wget` inside it against a server on the host,
captured by a real `qtap run` with pod_name, pod_namespace and pod_uid. A real containerd daemon is started on a
socket of the test's own."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import start_http_server

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    for tool in ("containerd", "ctr", "podman"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (Debian packages containerd and podman; scripts/image installs them)")
    base = Path(f"/tmp/qtap-ctd-{secrets.token_hex(4)}")  # short: a unix socket path has a length limit
    base.mkdir()
    sock = base / "containerd.sock"
    (base / "config.toml").write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                                      f'[grpc]\n  address = "{sock}"\n')
    proc = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "containerd.log").open("wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not sock.exists():
        time.sleep(0.1)
    try:
        if not sock.exists():
            pytest.fail("containerd did not start: " + (tmp_path / "containerd.log").read_text()[-2000:])
        image = subprocess.run(["bash", str(ROOT / "scripts" / "image"), "busybox"], capture_output=True,
                               text=True, timeout=600, check=True).stdout.split()[-1]
        archive = tmp_path / "busybox.tar"
        subprocess.run(["podman", "save", "--format", "docker-archive", "-o", str(archive), image], check=True,
                       capture_output=True, timeout=120)
        subprocess.run(["ctr", "-a", str(sock), "-n", "k8s.io", "images", "import", str(archive)], check=True,
                       capture_output=True, timeout=120)
        yield str(sock), base
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run(["umount", "-R", str(base / "root")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_wget_in_containerd_container_carries_pod_fields(tmp_path: Path, containerd: tuple[str, Path]) -> None:
    sock, _ = containerd
    server, port = start_http_server()
    cid = secrets.token_hex(32)  # the kubelet's ids are 64 hex digits too
    out, err = tmp_path / "agent.out", tmp_path / "agent.err"
    env = {**os.environ, "QTAP_CONTAINER_SOCKETS": sock}
    with out.open("wb") as o, err.open("wb") as e:
        agent = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "--no-tls", "--status-listen", "off"],
                                 cwd=ROOT, stdout=o, stderr=e, env=env)
    try:
        deadline = time.monotonic() + 60
        while "capture attached" not in err.read_text() and time.monotonic() < deadline:
            assert agent.poll() is None, err.read_text()
            time.sleep(0.1)
        script = f"for i in $(seq 1 20); do wget -q -O /dev/null http://127.0.0.1:{port}/in-pod-$i; sleep 0.3; done"
        r = subprocess.run(["ctr", "-a", sock, "-n", "k8s.io", "run", "--rm", "--net-host",
                            "--label", "io.kubernetes.pod.name=web-0", "--label", "io.kubernetes.pod.namespace=shop",
                            "--label", "io.kubernetes.pod.uid=0b4c6f1e-uid", "--label",
                            "io.kubernetes.container.name=fetcher", "localhost/qtap-busybox:test", cid,
                            "sh", "-c", script], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        time.sleep(2)
    finally:
        agent.terminate()
        agent.wait(60)
        server.terminate()
        server.wait()
    events = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    mine = [e for e in events if e.get("type") == "http_transaction" and e.get("dst_port") == port
            and str(e.get("path", "")).startswith("/in-pod-") and e.get("direction") == "egress"]
    assert len(mine) >= 3, err.read_text()[-3000:]
    assert {e["container_id"] for e in mine} - {""} == {cid}
    pods = [e for e in mine if e.get("pod_name")]
    assert pods, "no event carried the pod"
    for e in pods:
        assert (e["pod_name"], e["pod_namespace"], e["pod_uid"]) == ("web-0", "shop", "0b4c6f1e-uid")
        assert e["container_name"] == "fetcher"
        assert e["container_image"] == "localhost/qtap-busybox:test"
