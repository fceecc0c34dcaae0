"""The OCI image, built offline by `scripts/image build` and run under podman (runc): `qtap inspect` says capture
works, `qtap run` in the container captures a curl made on the host, and Pulse and the control plane run from the
same image the way the Helm chart runs them (user 65534, read-only root filesystem, no capabilities): Pulse
ingests a batch over HTTP with a token and answers queries for it; the control plane, with the settings file the
chart renders, answers its health endpoints and its API."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.control.conftest import Postgres
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


# As the chart runs Pulse and the control plane: an unprivileged user, a read-only root filesystem with only the
# data volume and /tmp writable, no capabilities, no privilege escalation.
POD_FLAGS = ["--user", "65534:65534", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def volume(path: Path) -> Path:
    """A host directory the container's user 65534 can write (the chart's fsGroup does this in a pod)."""
    path.mkdir()
    os.chown(path, 65534, 65534)
    return path


def wait_http(url: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = subprocess.run([*PODMAN, "inspect", name, "--format", "{{.State.Running}}"], capture_output=True,
                               text=True, timeout=60)
        if state.stdout.strip() != "true":
            break
        time.sleep(0.5)
    logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True, timeout=60)
    pytest.fail(f"{url} did not answer 200:\n{logs.stdout[-2000:]}\n{logs.stderr[-3000:]}")


def stop_cleanly(name: str, grace_s: int = 30) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` (the pod's terminationGracePeriodSeconds): it must exit 0 before."""
    t0 = time.monotonic()
    stop = subprocess.run([*PODMAN, "stop", "-t", str(grace_s), name], capture_output=True, text=True,
                          timeout=grace_s + 120)
    took = time.monotonic() - t0
    assert stop.returncode == 0, stop.stderr
    code = subprocess.run([*PODMAN, "inspect", name, "--format", "{{.State.ExitCode}}"], capture_output=True,
                          text=True, timeout=60)
    logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True, timeout=60)
    assert code.stdout.strip() == "0", f"exit {code.stdout.strip()} after {took:.0f} s\n{logs.stderr[-2000:]}"


def test_pulse_runs_from_the_same_image(image: str, tmp_path: Path) -> None:
    data = volume(tmp_path / "pulse")
    mount = ["-v", f"{data}:/var/lib/pulse"]
    made = subprocess.run([*PODMAN, "run", "--rm", *POD_FLAGS, *mount, image, "pulse", "token", "create",
                           "--data-dir", "/var/lib/pulse", "--team", "image", "--agent", "node-1"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    token = made.stdout.split()[-1]
    assert token.startswith("qtp_")
    port = free_port()
    name = f"qtap-pulse-{uuid.uuid4().hex[:8]}"
    subprocess.run([*PODMAN, "run", "-d", "--name", name, "--network=host", *POD_FLAGS, *mount, image, "pulse",
                    "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", "/var/lib/pulse"],
                   check=True, capture_output=True, timeout=120)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", name, timeout=180)
        now = time.time_ns()
        path, domain = "/from-image/orders", f"api-{uuid.uuid4().hex[:8]}.image.test"
        conn_id = uuid.uuid4().int >> 80
        batch = {"sent_at": now, "events": [
            {"type": "request", "id": f"r-{domain}", "ts": now, "conn_id": conn_id, "domain": domain,
             "path": path, "method": "POST", "status": 503, "duration_ns": 2_000_000},
            {"type": "connection", "id": f"c-{domain}", "ts": now, "conn_id": conn_id, "event": "close",
             "dst_ip": "10.1.2.3", "dst_port": 443, "domain": domain, "bytes_sent": 10},
        ]}
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/v1/events", json=batch, timeout=30).status_code == 401  # no token: nothing
        r = httpx.post(f"{url}/v1/events", json=batch, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 2 and r.json()["rejected"] == 0
        window = {"start": now - 3600 * 10**9, "end": now + 60 * 10**9}
        r = httpx.get(f"{url}/v1/query/top/endpoints", params={**window, "domain": domain},
                      headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        rows = [row for row in r.json() if row.get("path") == path]
        assert len(rows) == 1, r.json()
        assert rows[0]["method"] == "POST" and rows[0]["requests"] == 1 and rows[0]["errors"] == 1
        r = httpx.get(f"{url}/v1/query/connections", params={**window, "conn_id": conn_id}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        conns = r.json()
        assert [(c["dst_ip"], c["dst_port"], c["event"]) for c in conns] == [("10.1.2.3", 443, "close")], conns
        # The token's team confines the query: another team's token sees nothing of it.
        other = subprocess.run([*PODMAN, "exec", name, "qtap", "pulse", "token", "create", "--data-dir",
                                "/var/lib/pulse", "--team", "other"], capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        r = httpx.get(f"{url}/v1/query/top/endpoints", params=window,
                      headers={"authorization": f"Bearer {other.stdout.split()[-1]}"}, timeout=30)
        assert r.status_code == 200 and not [x for x in r.json() if x.get("path") == path], r.text
        stop_cleanly(name)
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, timeout=120)


def chart_control(port: int, *values: str) -> tuple[str, dict[str, Any]]:
    """The control plane's settings file and container exactly as the Helm chart renders them."""
    sets = [f"--set={v}" for v in ("control.enabled=true", f"control.port={port}", "control.cookieSecure=false",
                                   *values)]
    r = subprocess.run(["bash", str(ROOT / "scripts" / "chart"), "helm", "template", "x",
                        str(ROOT / "deploy" / "helm" / "qtap-async"), "--show-only", "templates/control.yaml", *sets],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    objs = {d["kind"]: d for d in yaml.safe_load_all(r.stdout) if d}
    (container,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return str(objs["ConfigMap"]["data"]["control.yaml"]), container


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_control_plane_runs_from_the_same_image(image: str, tmp_path: Path, store: str) -> None:
    port = free_port()
    env: list[str] = []
    pg: Postgres | None = None
    if store == "postgresql":
        settings_text, container = chart_control(port, "control.database.existingSecret=control-db")
        # The variable the chart fills from the Secret's key `url`, set here as the kubelet would.
        (var,) = [e["name"] for e in container["env"] if e["valueFrom"]["secretKeyRef"]["key"] == "url"]
        pg = Postgres()
        database = pg.new_database()
        env = ["-e", f"{var}={database}"]
    else:
        settings_text, container = chart_control(port)
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "control.yaml").write_text(settings_text)
    data = volume(tmp_path / "control")
    mounts = ["-v", f"{settings}:/etc/qtap-control:ro", "-v", f"{data}:/var/lib/qtap-control"]
    name = f"qtap-control-{uuid.uuid4().hex[:8]}"
    try:
        # Bootstrap the first admin and a token in the store, as docs/control.md says (no network needed).
        user = subprocess.run([*PODMAN, "run", "--rm", "-i", "--network=host", *POD_FLAGS, *env, *mounts, image,
                               "control", "user", "create", "admin", "--role", "admin", "--team", "ops",
                               "--password-stdin", "--data-dir", "/var/lib/qtap-control"],
                              input="a long admin password\n", capture_output=True, text=True, timeout=300)
        assert user.returncode == 0, user.stderr[-3000:]
        made = subprocess.run([*PODMAN, "run", "--rm", "--network=host", *POD_FLAGS, *env, *mounts, image, "control",
                               "token", "create", "--user", "admin", "--data-dir", "/var/lib/qtap-control"],
                              capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stderr[-3000:]
        token = made.stdout.split()[-1]
        # The chart's container: its args, its settings file, its volumes, its environment.
        subprocess.run([*PODMAN, "run", "-d", "--name", name, "--network=host", *POD_FLAGS, *env, *mounts, image,
                        *container["args"]], check=True, capture_output=True, timeout=120)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}{container['livenessProbe']['httpGet']['path']}", name, timeout=180)
        r = httpx.get(f"{url}{container['readinessProbe']['httpGet']['path']}", timeout=10)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{url}/api/v1/me", timeout=10).status_code == 401
        r = httpx.get(f"{url}/api/v1/me", headers={"authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["user"] == "admin", r.json()
        assert [(m["team"], m["role"]) for m in r.json()["memberships"]] == [("ops", "admin")], r.json()
        r = httpx.post(f"{url}/api/v1/login", json={"username": "admin", "password": "a long admin password"},
                       timeout=30)
        assert r.status_code == 200, r.text
        metrics = httpx.get(f"{url}/metrics", timeout=10)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
        if pg is None:
            assert (data / "control.sqlite3").stat().st_uid == 65534  # on the volume, as the pod's user
        else:
            import psycopg

            assert not list(data.iterdir())  # the state is in PostgreSQL, the data directory stays empty
            with psycopg.connect(database) as c:
                assert c.execute("SELECT name FROM users").fetchall() == [("admin",)]
        stop_cleanly(name)
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, timeout=120)
        if pg is not None:
            pg.stop()


CONTROLLED_CONFIG = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: disabled}]
stacks:
  default:
    plugins:
      - type: http_capture
        config: {level: summary, format: json}
tap:
  direction: all
  http: {stack: default}
"""


def test_agent_from_the_image_joins_the_charts_control_plane(image: str, tmp_path: Path) -> None:
    """The DaemonSet's container with agent.control on (its args, its registration-token variable, its state
    directory on the node) against the control plane's container: the agent registers, runs the version the
    control plane activates, and keeps its identity across a restart."""
    cport, sport = free_port(), free_port()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "chart"), "helm", "template", "x",
                        str(ROOT / "deploy" / "helm" / "qtap-async"), "--show-only", "templates/daemonset.yaml",
                        "--set", "agent.control.enabled=true", "--set", f"agent.control.url=http://127.0.0.1:{cport}",
                        "--set", "agent.control.existingSecret=reg", "--set", f"agent.statusPort={sport}"],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    ds = next(d for d in yaml.safe_load_all(r.stdout) if d)
    grace = int(ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    (agent,) = ds["spec"]["template"]["spec"]["containers"]
    state_path = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}["control-state"]
    settings_text, control = chart_control(cport)
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "control.yaml").write_text(settings_text)
    data = volume(tmp_path / "control")
    node_state = tmp_path / "node-state"  # the hostPath on the node
    node_state.mkdir()
    cmounts = ["-v", f"{settings}:/etc/qtap-control:ro", "-v", f"{data}:/var/lib/qtap-control"]

    def control_cli(*args: str, stdin: str | None = None) -> str:
        p = subprocess.run([*PODMAN, "run", "--rm", "-i", *POD_FLAGS, *cmounts, image, "control", *args,
                            "--data-dir", "/var/lib/qtap-control"], input=stdin, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout.split()[-1]

    control_cli("user", "create", "admin", "--role", "admin", "--team", "ops", "--password-stdin",
                stdin="a long admin password\n")
    token = control_cli("token", "create", "--user", "admin")
    registration = control_cli("registration-token", "create", "--team", "ops")
    cname, aname = f"qtap-control-{uuid.uuid4().hex[:8]}", f"qtap-agent-{uuid.uuid4().hex[:8]}"
    env_var = next(e["name"] for e in agent["env"] if e.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
                   == "registration-token")
    agent_cmd = [*PODMAN, "run", "-d", "--name", aname, *RUN_FLAGS, "-v", f"{node_state}:{state_path}",
                 "-e", f"{env_var}={registration}", image, *agent["args"]]
    try:
        subprocess.run([*PODMAN, "run", "-d", "--name", cname, "--network=host", *POD_FLAGS, *cmounts, image,
                        *control["args"]], check=True, capture_output=True, timeout=120)
        url = f"http://127.0.0.1:{cport}"
        wait_http(f"{url}/readyz", cname, timeout=180)
        admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30)
        posted = admin.post("/api/v1/configs", content=CONTROLLED_CONFIG.encode(), params={"activate": "true"},
                            headers={"content-type": "application/yaml"})
        assert posted.status_code == 201, posted.text
        version = int(posted.json()["version"])
        subprocess.run(agent_cmd, check=True, capture_output=True, timeout=120)

        def agents() -> list[dict[str, Any]]:
            got = admin.get("/api/v1/agents")
            assert got.status_code == 200, got.text
            return list(got.json())

        def wait_running(what: str) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 180
            seen = agents()
            while time.monotonic() < deadline and not (seen and seen[0]["running_version"] == version):
                time.sleep(1)
                seen = agents()
            logs = subprocess.run([*PODMAN, "logs", aname], capture_output=True, text=True, timeout=60)
            assert seen and seen[0]["running_version"] == version, f"{what}: {seen}\n{logs.stderr[-3000:]}"
            return seen

        first = wait_running("the agent to register and run the activated version")
        assert len(first) == 1 and first[0]["state"] == "online"
        identity = node_state / "identity.json"
        assert identity.exists() and identity.stat().st_mode & 0o777 == 0o600
        wait_http(f"http://127.0.0.1:{sport}{agent['readinessProbe']['httpGet']['path']}", aname, timeout=180)
        # Rescheduled on the same node: the identity on the node is reused, no second registration.
        stop_cleanly(aname, grace)
        subprocess.run([*PODMAN, "rm", "-f", aname], capture_output=True, timeout=120)
        subprocess.run(agent_cmd, check=True, capture_output=True, timeout=120)
        wait_http(f"http://127.0.0.1:{sport}/healthz", aname, timeout=180)
        again = wait_running("the restarted agent to report")
        assert [a["id"] for a in again] == [first[0]["id"]]
        stop_cleanly(aname, grace)
        stop_cleanly(cname)
    finally:
        for name in (aname, cname):
            subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, timeout=120)
