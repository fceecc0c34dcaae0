"""The agent's own attack surface: file modes, a world-writable config, secrets in logs, metrics and
`qtap validate`, payloads in logs and `qtap inspect`. Real CLI processes; the agent runs with real BPF."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.harness import free_port, start_http_server

ROOT = Path(__file__).resolve().parents[2]
QTAP = [sys.executable, "-m", "cli.main"]
SECRET = "s3cr3t-KNOWN-5f1e2d3c4b"
BODY = "payload-KNOWN-a9b8c7d6e5"


def qtap(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QTAP, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def secret_config(tmp: Path, port: int) -> Path:
    """Every place a secret can be written in a config, all holding SECRET; the stores are unreachable,
    so the agent logs errors about each of them."""
    cfg = tmp / "qpoint.yaml"
    cfg.write_text(f"""version: 2
services:
  event_stores:
    - type: pulse
      name: pulse-store
      url: http://127.0.0.1:{port}
      token: {{type: text, value: {SECRET}}}
      check_on_start: false
      retry: {{initial: 0.05, maximum: 0.2, spool_after: 0.2}}
    - type: kafka
      name: kafka-store
      brokers: ["127.0.0.1:{port}"]
      topic: t
      sasl: {{mechanism: PLAIN, username: user, password: {{type: text, value: {SECRET}}}}}
      check_on_start: false
      request_timeout: 1
  object_stores:
    - type: s3
      name: s3-store
      endpoint: http://127.0.0.1:{port}
      bucket: b
      access_key: {{type: text, value: AKIAKNOWN}}
      secret_key: {{type: text, value: {SECRET}}}
      check_on_start: false
stacks:
  default:
    plugins:
      - type: http_capture
        config: {{level: details}}
tap:
  direction: egress
  http:
    stack: default
""")
    os.chmod(cfg, 0o600)
    return cfg


# ---- config file permissions ------------------------------------------------------------------------


def test_world_writable_config_is_refused_and_says_why(tmp_path: Path) -> None:
    cfg = tmp_path / "qpoint.yaml"
    cfg.write_text("version: 2\n")
    os.chmod(cfg, 0o666)
    for args in (["validate", str(cfg)], ["run", "--config", str(cfg)]):
        r = qtap(*args)
        assert r.returncode in (1, 2), (args, r.returncode, r.stdout, r.stderr)
        out = r.stdout + r.stderr
        assert "world-writable" in out and "chmod o-w" in out and "Traceback" not in out, out
    pulse_cfg = tmp_path / "pulse.yaml"
    pulse_cfg.write_text(f"data_dir: {tmp_path / 'pd'}\n")
    os.chmod(pulse_cfg, 0o646)
    r = qtap("pulse", "serve", "--config", str(pulse_cfg), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "world-writable" in r.stderr, (r.returncode, r.stderr)
    os.chmod(cfg, 0o644)  # group/other readable is fine, only writable is refused
    assert qtap("validate", str(cfg)).returncode == 0


def test_pulse_data_dir_and_token_file_are_private(tmp_path: Path) -> None:
    data = tmp_path / "pulse"
    r = qtap("pulse", "token", "create", "--data-dir", str(data), "--team", "t")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for f in data.iterdir():
        if f.name.startswith("tokens.sqlite3"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    token = r.stdout.strip().split()[-1]
    listing = qtap("pulse", "token", "list", "--data-dir", str(data))
    assert listing.returncode == 0 and token not in listing.stdout + listing.stderr


# ---- secrets ----------------------------------------------------------------------------------------


def test_validate_never_prints_a_secret(tmp_path: Path) -> None:
    cfg = secret_config(tmp_path, free_port())
    for args in (["validate", str(cfg)], ["validate", "--check-services", str(cfg)]):
        r = qtap(*args)
        out = r.stdout + r.stderr
        assert SECRET not in out and "Traceback" not in out, out
        assert "pulse-store" in out or "pulse" in out, out  # it did describe the stores
    # An invalid config echoes no secret either (the error names the field, not its value).
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("mechanism: PLAIN", "mechanism: NOPE"))
    r = qtap("validate", str(bad))
    assert r.returncode != 0 and SECRET not in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.bpf
def test_secrets_and_payloads_never_in_logs_metrics_or_inspect(tmp_path: Path) -> None:
    proc_srv, server = start_http_server()
    cfg = secret_config(tmp_path, free_port())
    err = tmp_path / "stderr"
    with err.open("wb") as e:
        agent = subprocess.Popen([*QTAP, "run", "--no-tls", "--config", str(cfg), "--metrics-interval", "0.3",
                                  "--log-level", "DEBUG"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=e)
    try:
        deadline = time.monotonic() + 60
        while "capture attached" not in err.read_text(errors="replace"):
            assert agent.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.1)
        for _ in range(3):
            subprocess.run(["/usr/bin/curl", "-sS", "-o", "/dev/null", "--data-binary", BODY,
                            "-H", f"Authorization: Bearer {SECRET}", f"http://127.0.0.1:{server}/echo"],
                           check=True, timeout=30)
        # Long enough for the stores' failures, retries and several metrics lines to be logged.
        deadline = time.monotonic() + 30
        while err.read_text(errors="replace").count("delivery failed") < 3:
            assert agent.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
        inspect = qtap("inspect", "--json")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(90)
        proc_srv.kill()
        proc_srv.wait()
    log = err.read_text(errors="replace")
    assert " metrics {" in log
    assert SECRET not in log, [ln for ln in log.splitlines() if SECRET in ln][:3]
    assert BODY not in log, [ln for ln in log.splitlines() if BODY in ln][:3]
    assert "Traceback" not in log
    assert SECRET not in inspect.stdout + inspect.stderr and BODY not in inspect.stdout + inspect.stderr
