"""Start-up checks against the real services: each misconfiguration is a SinkError naming the store and
the reason, raised by runner.start() (and by the sink's check(), which `qtap validate` can call)."""

import msgspec
import pytest

from qtap_async.errors import SinkError
from qtap_async.sinks import KafkaEventStore, KafkaSasl, S3ObjectStore, build_event_runner, build_object_runner
from tests.sinks.conftest import Services

pytestmark = pytest.mark.services


def s3(services: Services, **kw: object) -> S3ObjectStore:
    base = S3ObjectStore(name="payloads", bucket=services.s3_bucket, endpoint=services.s3_endpoint,
                         region=services.s3_region, access_key=services.s3_access_key,
                         secret_key=services.s3_secret_key, timeout=5.0)
    return msgspec.structs.replace(base, **kw)


async def test_s3_good_settings_pass(services: Services) -> None:
    runner = build_object_runner(s3(services))
    await runner.start()
    await runner._close_resources()


@pytest.mark.parametrize(("change", "reason"), [
    ({"secret_key": "not-the-secret"}, r"wrong credentials: the secret key does not match"),
    ({"access_key": "nobody"}, r"wrong credentials: the access key is not known"),
    ({"bucket": "qtap-no-such-bucket"}, r"the bucket does not exist"),
    ({"endpoint": "http://127.0.0.1:1"}, r"cannot reach the endpoint"),
])
async def test_s3_misconfiguration(services: Services, change: dict[str, str], reason: str) -> None:
    runner = build_object_runner(s3(services, **change))
    bucket = change.get("bucket", services.s3_bucket)
    with pytest.raises(SinkError, match=rf"^object store payloads \(bucket '{bucket}' at [^)]+\): {reason}"):
        await runner.start()


async def test_kafka_unknown_topic(services: Services) -> None:
    runner = build_event_runner(KafkaEventStore(name="events", brokers=[services.kafka_bootstrap],
                                                topic="qtap-no-such-topic"))
    with pytest.raises(SinkError, match=r"^event store events \(topic 'qtap-no-such-topic'.*unknown topic"):
        await runner.start()


async def test_kafka_unreachable_broker() -> None:
    runner = build_event_runner(KafkaEventStore(name="events", brokers=["127.0.0.1:1"], topic="t",
                                                request_timeout=3.0))
    with pytest.raises(SinkError, match=r"^event store events .*127\.0\.0\.1:1.*brokers unreachable"):
        await runner.start()


async def test_kafka_wrong_credentials(services: Services, topic: str) -> None:
    runner = build_event_runner(KafkaEventStore(
        name="events", brokers=[services.kafka_sasl_bootstrap], topic=topic, request_timeout=5.0,
        sasl=KafkaSasl(username=services.kafka_sasl_username, password="wrong")))
    with pytest.raises(SinkError, match=r"^event store events .*wrong credentials or SASL settings"):
        await runner.start()


async def test_kafka_good_settings_pass(services: Services, topic: str) -> None:
    sink = build_event_runner(KafkaEventStore(
        brokers=[services.kafka_sasl_bootstrap], topic=topic,
        sasl=KafkaSasl(username=services.kafka_sasl_username, password=services.kafka_sasl_password))).sink
    await sink.check()
    await sink.close()
