"""examples/production.yaml end to end: Kafka and MinIO (scripts/services), traffic that is not loopback.

The example captures egress only and ignores loopback, as in production, so the test makes a network
namespace with a veth pair (10.213.x.0/30) and runs the HTTP server there; curl on the host reaches it
through a real, non-loopback interface. Only the brokers, the S3 endpoint, the topic and the bucket are
replaced by the test's own."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers import ROOT, AgentRun
from tests.integration.harness import PEERS
from tests.sinks.conftest import Services, bucket, consume_all, s3_client, services, topic  # noqa: F401

pytestmark = [pytest.mark.bpf, pytest.mark.services]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def remote_server() -> Iterator[tuple[str, int]]:
    """The test HTTP server in a network namespace of its own, reachable at 10.213.N.2."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"qtapex{tag}", f"qxh{tag}", f"qxn{tag}"
    n = random.randint(1, 250)
    host_ip, ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    _ip("netns", "add", ns)
    proc = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(PEERS / "http_server.py"),
                                 "--host", ns_ip], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield ns_ip, int(line.split()[1])
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _curl(url: str, *extra: str) -> None:
    subprocess.run(["/usr/bin/curl", "-sS", "-o", "/dev/null", "--noproxy", "*", *extra, url], check=True,
                   timeout=30)


def test_production_example(remote_server: tuple[str, int], services: Services,  # noqa: F811
                            topic: str, bucket: str, tmp_path: Path) -> None:  # noqa: F811
    ip, port = remote_server
    text = (ROOT / "examples" / "production.yaml").read_text()
    text = text.replace('["kafka-1.internal:9092", "kafka-2.internal:9092"]', f'["{services.kafka_bootstrap}"]')
    text = text.replace("topic: qtap-events", f"topic: {topic}")
    text = text.replace("https://s3.eu-west-1.amazonaws.com", services.s3_endpoint)
    text = text.replace("bucket: qtap-payloads", f"bucket: {bucket}")
    text = text.replace("region: eu-west-1", f"region: {services.s3_region}")
    assert text.count(services.kafka_bootstrap) == 1 and bucket in text and services.s3_endpoint in text
    cfg = tmp_path / "production.yaml"
    cfg.write_text(text)
    env = {"QTAP_S3_ACCESS_KEY": services.s3_access_key, "QTAP_S3_SECRET_KEY": services.s3_secret_key}
    checked = subprocess.run([sys.executable, "-m", "cli.main", "validate", "--check-services", str(cfg)], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    path = "/prod-" + uuid.uuid4().hex[:8]
    run = AgentRun(["run", "--no-tls", "--config", str(cfg)], tmp_path, env=env)
    try:
        _curl(f"http://{ip}:{port}{path}?n=5")                       # ok: a usage report only
        _curl(f"http://{ip}:{port}{path}?n=7&status=503")            # failed: payload kept, issue raised
        _curl(f"http://{ip}:{port}{path}?n=9", "-H", "Host: db.internal.example.com")  # stack none: nothing
        records = consume_all(services, topic, expect=4, timeout_s=60)
    finally:
        assert run.stop() == 0
    events: list[dict[str, Any]] = [json.loads(r.value) for r in records]
    mine = [e for e in events if path in str(e.get("path", "")) or path in str(e.get("url", ""))]
    requests = [e for e in mine if e.get("type") == "request"]
    assert sorted(e["status"] for e in requests) == [200, 503], mine  # egress only: curl's side, once each
    assert all(e.get("domain") != "db.internal.example.com" and e.get("host") != "db.internal.example.com"
               for e in mine)
    issues = [e for e in events if e.get("type") == "issue" and e.get("status") in (503, "503")]
    assert issues, [e.get("type") for e in events]
    captured = [e for e in mine if e.get("type") == "http_transaction"]
    assert [e["status"] for e in captured] == [503] and captured[0]["level"] == "full", captured
    digest = captured[0]["object_digest"]
    s3 = s3_client(services)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(digest in k for k in keys), keys
    key = next(k for k in keys if digest in k)
    stored = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert stored["response"]["status"] == 503 and stored["request"]["path"].startswith(path)
