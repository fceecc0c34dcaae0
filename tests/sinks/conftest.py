"""Fixtures for the sink tests. Tests marked ``services`` need the real Kafka and MinIO that
``scripts/services up`` starts; they read the endpoints from .services/env and FAIL (never skip) with a
clear message when the services are not reachable."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / ".services" / "env"


class Services(msgspec.Struct, frozen=True):
    kafka_bootstrap: str
    kafka_sasl_bootstrap: str
    kafka_sasl_username: str
    kafka_sasl_password: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    s3_bucket: str
    script: str

    def run(self, *args: str) -> None:
        """scripts/services with these arguments (e.g. "stop", "kafka")."""
        proc = subprocess.run(["bash", self.script, *args], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"scripts/services {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _load() -> Services:
    if not ENV_FILE.exists():
        pytest.fail(f"services tests need Kafka and MinIO: {ENV_FILE} is missing; run `scripts/services up` "
                    "(as root) first", pytrace=False)
    env: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip()
    try:
        svc = Services(
            kafka_bootstrap=env["QTAP_KAFKA_BOOTSTRAP"],
            kafka_sasl_bootstrap=env["QTAP_KAFKA_SASL_BOOTSTRAP"],
            kafka_sasl_username=env["QTAP_KAFKA_SASL_USERNAME"],
            kafka_sasl_password=env["QTAP_KAFKA_SASL_PASSWORD"],
            s3_endpoint=env["QTAP_S3_ENDPOINT"],
            s3_access_key=env["QTAP_S3_ACCESS_KEY"],
            s3_secret_key=env["QTAP_S3_SECRET_KEY"],
            s3_region=env.get("QTAP_S3_REGION", "us-east-1"),
            s3_bucket=env.get("QTAP_S3_BUCKET", "qtap-test"),
            script=env.get("QTAP_SERVICES_SCRIPT", str(ROOT / "scripts" / "services")),
        )
    except KeyError as exc:
        pytest.fail(f"{ENV_FILE} lacks {exc.args[0]}; rerun `scripts/services up`", pytrace=False)
    down = [name for name, addr in (("Kafka", svc.kafka_bootstrap),
                                    ("MinIO", urlsplit(svc.s3_endpoint).netloc)) if not _reachable(addr)]
    if down:
        pytest.fail(f"services tests need {' and '.join(down)} at the addresses in {ENV_FILE}, but nothing "
                    "answers there; run `scripts/services up` (as root)", pytrace=False)
    return svc


@pytest.fixture(scope="session")
def services() -> Services:
    return _load()


@pytest.fixture
def topic(services: Services) -> Iterator[str]:
    """A fresh 3-partition topic."""
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"qtap-test-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap, request_timeout_ms=20000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    yield name


def s3_client(services: Services) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=services.s3_endpoint, aws_access_key_id=services.s3_access_key,
                        aws_secret_access_key=services.s3_secret_key, region_name=services.s3_region,
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def bucket(services: Services) -> str:
    """A fresh empty bucket."""
    name = f"qtap-test-{uuid.uuid4().hex[:10]}"
    s3_client(services).create_bucket(Bucket=name)
    return name


def consume_all(services: Services, topic: str, expect: int, timeout_s: float = 30) -> list[Any]:
    """Every record of ``topic`` read by an independent consumer (kafka-python), once at least ``expect``
    arrived or the timeout passed."""
    import time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=services.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=3000)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer:
                out.append(msg)
            if len(out) >= expect:
                # one more pass: anything beyond the expected count (duplicates) shows up too
                out.extend(consumer)
                break
    finally:
        consumer.close()
    return out
