"""Kafka ingestion against the real broker (``scripts/services up``; QTAP_KAFKA_BOOTSTRAP overrides).

Pulse runs as its own process (``qtap pulse serve --kafka``) and is killed with SIGKILL while the
topic is still being written: offsets it had not committed are consumed again after the restart, and
every event must still be stored exactly once. Then a new consumer group replays the whole topic into
the same storage: still exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from qtap_async.pulse.tokens import TokenStore

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]
N_CONN = 6000
N_REQ = 6000


def bootstrap() -> str:
    addr = os.environ.get("QTAP_KAFKA_BOOTSTRAP")
    env_file = ROOT / ".services" / "env"
    if not addr and env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("QTAP_KAFKA_BOOTSTRAP="):
                addr = line.split("=", 1)[1].strip()
    addr = addr or "127.0.0.1:9092"
    host, _, port = addr.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        pytest.fail(f"Kafka is not reachable at {addr} ({e}); run `scripts/services up`", pytrace=False)
    return addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PulseProcess:
    def __init__(self, data_dir: Path, port: int, kafka: str, topic: str, team: str, group: str = "") -> None:
        self.args = [
            sys.executable,
            "-c",
            "from cli.pulse import pulse_app; pulse_app(prog_name='qtap pulse')",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--kafka",
            "--kafka-bootstrap",
            kafka,
            "--kafka-topic",
            topic,
            "--kafka-group",
            group or f"g-{topic}",
            "--kafka-team",
            team,
            "--log-level",
            "warning",
        ]
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir / "pulse.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"pulse exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "pulse did not become ready"
            time.sleep(0.1)

    def kill(self) -> None:
        """Never leave a server behind, whatever failed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(60)


@pytest.fixture
def topic() -> Iterator[str]:
    yield f"pulse-test-{uuid.uuid4().hex[:10]}"


def conn(i: int, now: int) -> dict[str, object]:
    return {
        "type": "connection",
        "id": f"c-{i}",
        "ts": now - i * 1000,
        "conn_id": i,
        "event": "open",
        "dst_ip": "10.0.0.1",
        "dst_port": 443,
        "domain": f"d{i % 7}.example",
    }


def req(i: int, now: int) -> dict[str, object]:
    return {
        "type": "request",
        "id": f"r-{i}",
        "ts": now - i * 1000,
        "conn_id": i,
        "domain": f"d{i % 7}.example",
        "path": "/p",
        "status": 500 if i % 10 == 0 else 200,
        "duration_ns": i,
    }


async def produce(kafka: str, topic: str, token: str, stop_after: asyncio.Event) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    now = time.time_ns()
    enc = msgspec.json.encode
    try:
        for i in range(N_CONN):
            # One event per message, keyed by connection, as the agents' Kafka sink writes them; requests
            # carry a token header (its team wins over the default), some in arrays of three.
            await producer.send(topic, enc(conn(i, now)), key=str(i).encode())
            if i % 3 == 0:
                batch = [req(j, now) for j in range(i, i + 3)]
                await producer.send(
                    topic, enc(batch), key=str(i).encode(), headers=[("authorization", f"Bearer {token}".encode())]
                )
            if i == 100:
                await producer.send(topic, b"not json at all", key=b"x")
            if i % 500 == 499:
                await producer.flush()
                await asyncio.sleep(0.15)  # keep the stream going while Pulse is killed and restarted
            if i == N_CONN // 2:
                stop_after.set()
        await producer.flush()
    finally:
        await producer.stop()


def connection_ids(url: str, token: str) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
        while True:
            page = c.get("/v1/query/connections", params={"limit": 1000, "offset": len(ids)})
            assert page.status_code == 200, page.text
            rows = page.json()
            ids += [r["id"] for r in rows]
            if len(rows) < 1000:
                return ids


def request_total(url: str, token: str) -> int:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
        return sum(d["requests"] for d in c.get("/v1/query/top/domains", params={"limit": 100}).json())


async def test_kill_mid_stream_restart_every_event_stored_exactly_once(tmp_path: Path, topic: str) -> None:
    kafka = bootstrap()
    tokens = TokenStore(tmp_path / "tokens.sqlite3")
    default_team = "kafka-default"
    reader = tokens.create(default_team, "reader", ("query",))[1]
    req_token = tokens.create("kafka-tokened", "agent-k")[1]
    req_reader = tokens.create("kafka-tokened", "reader", ("query",))[1]
    tokens.close()
    pulse = PulseProcess(tmp_path, free_port(), kafka, topic, default_team)
    try:
        await _run(pulse, kafka, topic, reader, req_token, req_reader)
    finally:
        pulse.kill()


async def _run(pulse: PulseProcess, kafka: str, topic: str, reader: str, req_token: str, req_reader: str) -> None:
    pulse.start()
    halfway = asyncio.Event()
    producer = asyncio.create_task(produce(kafka, topic, req_token, halfway))
    await halfway.wait()
    # Wait until Pulse has stored part of the stream, then crash it.
    deadline = time.monotonic() + 60
    while not connection_ids(pulse.url, reader):
        assert time.monotonic() < deadline, "pulse stored nothing from Kafka"
        await asyncio.sleep(0.2)
    assert pulse.stop(signal.SIGKILL) == -signal.SIGKILL
    pulse.start()
    await producer
    deadline = time.monotonic() + 120
    while True:
        ids = await asyncio.to_thread(connection_ids, pulse.url, reader)
        if len(ids) >= N_CONN and await asyncio.to_thread(request_total, pulse.url, req_reader) >= N_CONN:
            break
        assert time.monotonic() < deadline, f"only {len(ids)} of {N_CONN} connections stored"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # anything still arriving would be a duplicate
    ids = await asyncio.to_thread(connection_ids, pulse.url, reader)
    assert len(ids) == N_CONN and set(ids) == {f"c-{i}" for i in range(N_CONN)}
    assert await asyncio.to_thread(request_total, pulse.url, req_reader) == N_REQ
    async with httpx.AsyncClient(base_url=pulse.url, headers={"authorization": f"Bearer {req_reader}"}) as c:
        doms = {d["domain"]: (d["requests"], d["errors"]) for d in (await c.get("/v1/query/top/domains")).json()}
    want: dict[str, list[int]] = {}
    for i in range(N_REQ):
        w = want.setdefault(f"d{i % 7}.example", [0, 0])
        w[0] += 1
        w[1] += i % 10 == 0
    assert doms == {k: tuple(v) for k, v in want.items()}
    async with httpx.AsyncClient() as c:
        metrics = (await c.get(pulse.url + "/metrics")).text
    assert "pulse_kafka_commits_total" in metrics  # the restarted process consumed and committed
    assert pulse.stop(signal.SIGTERM) == 0

    # The worst replay: a new consumer group reads the whole topic again into the same storage.
    total_messages = N_CONN + N_CONN // 3 + 1
    pulse.args[pulse.args.index("--kafka-group") + 1] = f"replay-{topic}"
    pulse.start()
    deadline = time.monotonic() + 120
    while _messages_consumed(pulse.url) < total_messages:
        assert time.monotonic() < deadline, "the replay did not finish"
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    ids = connection_ids(pulse.url, reader)
    assert len(ids) == N_CONN and set(ids) == {f"c-{i}" for i in range(N_CONN)}
    assert request_total(pulse.url, req_reader) == N_REQ
    assert pulse.stop(signal.SIGTERM) == 0


def _messages_consumed(url: str) -> int:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("pulse_kafka_messages_total "):
            return int(float(line.split()[1]))
    return 0
