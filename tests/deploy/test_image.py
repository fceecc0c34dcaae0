"""The OCI image, built offline by `scripts/image build` and run under podman (runc): `qtap inspect` says capture
works, `qtap run` in the container captures a curl made on the host, and Pulse starts from the same image."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import free_port, start_http_server
from tests.plugins.test_run_config import curl

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc"]
RUN_FLAGS = ["--privileged", "--pid=host", "--network=host", "-v", "/sys:/sys:ro"]


@pytest.fixture(scope="module")
def image() -> str:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "image"), "build"], capture_output=True, text=True,
                       timeout=3000, cwd=ROOT)
    if r.returncode != 0:
        pytest.fail(f"scripts/image build failed:\n{r.stderr[-4000:]}")
    return r.stdout.strip().splitlines()[-1]


def test_image_inspect(image: str) -> None:
    r = subprocess.run([*PODMAN, "run", "--rm", *RUN_FLAGS, image, "inspect"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "capture: WILL WORK" in r.stdout
    r = subprocess.run([*PODMAN, "image", "inspect", image, "--format", "{{json .Config.Entrypoint}}"],
                       capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(r.stdout) == ["qtap"]


def test_image_run_captures_a_host_curl(image: str) -> None:
    server, port = start_http_server()
    status = free_port()
    name = f"qtap-image-{uuid.uuid4().hex[:8]}"
    subprocess.run([*PODMAN, "run", "-d", "--name", name, *RUN_FLAGS, image, "run", "--no-tls",
                    "--status-listen", f"127.0.0.1:{status}"], check=True, capture_output=True, timeout=120)
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{status}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.3)
        logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True, timeout=60)
        assert ready, logs.stderr[-3000:]
        for _ in range(3):
            curl(f"http://127.0.0.1:{port}/from-host-to-image?n=64")
        deadline = time.monotonic() + 60
        seen: list[dict[str, object]] = []
        while time.monotonic() < deadline and not seen:
            time.sleep(0.5)
            logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True, timeout=60)
            events = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
            seen = [e for e in events if e.get("type") == "http_transaction"
                    and str(e.get("path", "")).startswith("/from-host-to-image") and e.get("dst_port") == port]
        assert seen, logs.stderr[-3000:]
        assert any(str(e.get("exe", "")).endswith("curl") for e in seen)
        stop = subprocess.run([*PODMAN, "stop", "-t", "30", name], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0
        code = subprocess.run([*PODMAN, "inspect", name, "--format", "{{.State.ExitCode}}"], capture_output=True,
                              text=True, timeout=60)
        assert code.stdout.strip() == "0", subprocess.run([*PODMAN, "logs", name], capture_output=True,
                                                          text=True).stderr[-2000:]
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, timeout=120)
        server.terminate()
        server.wait()


def test_pulse_runs_from_the_same_image(image: str) -> None:
    r = subprocess.run([*PODMAN, "run", "--rm", image, "pulse", "serve", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "Serve the HTTP API" in r.stdout, r.stderr
