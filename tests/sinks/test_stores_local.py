"""The stores that need no service: stdout, dir, disabled, and the Pulse sink against an in-process
HTTP transport."""

import gzip
import io
import json
import os
from pathlib import Path

import httpx
import msgspec
import pytest

from qtap_async.errors import ConfigError, SinkError, SinkTransientError
from qtap_async.sinks import EventRecord, StoredObject
from qtap_async.sinks.dir import DirObjectSink
from qtap_async.sinks.pulse import PulseEventSink
from qtap_async.sinks.stdout import DisabledObjectSink, StdoutEventSink, StdoutObjectSink


async def test_stdout_events_are_json_lines() -> None:
    out = io.BytesIO()
    sink = StdoutEventSink(stream=out)
    await sink.send([EventRecord(b"k", b'{"a":1}'), EventRecord(None, b'{"b":2}')])
    assert out.getvalue() == b'{"a":1}\n{"b":2}\n'


async def test_stdout_objects_text_and_binary() -> None:
    out = io.BytesIO()
    sink = StdoutObjectSink(stream=out)
    ref = await sink.put(StoredObject(b'{"x": 1}', conn_id=5, transaction_id="t"))
    await sink.put(StoredObject(b"\xff\x00"))
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["body"] == '{"x": 1}' and lines[0]["digest"] == ref.digest
    assert lines[1]["body_b64"] == "/wA=" and "body" not in lines[1]
    assert ref.transaction_id == "t"


async def test_stdout_text_objects_are_written_as_text() -> None:
    out = io.BytesIO()
    sink = StdoutObjectSink(stream=out)
    await sink.put(StoredObject(b"GET / HTTP/1.1\nhost: x\n", "text/plain; charset=utf-8"))
    assert out.getvalue() == b"GET / HTTP/1.1\nhost: x\n"


async def test_dir_store_writes_atomically_by_digest(tmp_path: Path) -> None:
    sink = DirObjectSink(str(tmp_path / "objs"), key="{{SHARD}}/{{DIGEST}}.json")
    await sink.check()
    obj = StoredObject(b'{"body": "x"}', conn_id=1, transaction_id="t1")
    ref = await sink.put(obj)
    path = tmp_path / "objs" / obj.digest[:2] / f"{obj.digest}.json"
    assert path.read_bytes() == obj.data
    assert ref.url == f"file://{path}"
    mtime = path.stat().st_mtime_ns
    await sink.put(StoredObject(obj.data, transaction_id="t2"))  # same content: same file, not rewritten
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


async def test_dir_store_check_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SinkError, match=r"object store dir: directory .*file/sub is not usable"):
        await DirObjectSink(str(blocker / "sub")).check()


async def test_dir_store_refuses_keys_outside(tmp_path: Path) -> None:
    sink = DirObjectSink(str(tmp_path), key="../{{DIGEST}}")
    with pytest.raises(SinkError, match="leaves the directory"):
        await sink.put(StoredObject(b"x"))


def test_unknown_template_placeholder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"key: unknown placeholder \{\{DATE\}\}"):
        DirObjectSink("/tmp", key="{{DATE}}/{{DIGEST}}")


async def test_disabled_object_store_accepts() -> None:
    ref = await DisabledObjectSink().put(StoredObject(b"abc"))
    assert ref.size == 3


class PulseStub:
    """Answers like Pulse's POST /v1/events and records what it got."""

    def __init__(self, status: int = 200, result: dict[str, object] | None = None) -> None:
        self.status = status
        self.result = result or {"accepted": 0, "rejected": 0, "errors": []}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.result)


async def test_pulse_posts_gzip_json_with_bearer_token() -> None:
    stub = PulseStub(result={"accepted": 1, "rejected": 1, "errors": [{"index": 1, "error": "bad"}]})
    sink = PulseEventSink("https://pulse.test", "tok", transport=httpx.MockTransport(stub))
    await sink.send([EventRecord(b"c", b'{"a":1}'), EventRecord(b"c", b'{"b":2}')])
    await sink.close()
    req = stub.requests[0]
    assert req.url == "https://pulse.test/v1/events"
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["content-encoding"] == "gzip"
    body = json.loads(gzip.decompress(req.content))
    assert body["events"] == [{"a": 1}, {"b": 2}] and body["sent_at"] > 0
    assert sink.rejected_items == 1


@pytest.mark.parametrize(("status", "error"), [(503, SinkTransientError), (429, SinkTransientError),
                                               (401, SinkTransientError), (400, SinkError)])
async def test_pulse_status_classes(status: int, error: type[Exception]) -> None:
    sink = PulseEventSink("https://pulse.test", "tok", use_gzip=False,
                          transport=httpx.MockTransport(PulseStub(status)))
    with pytest.raises(error, match=f"^event store pulse .*{status}"):
        await sink.send([EventRecord(None, b"{}")])


async def test_pulse_check_reports_a_refused_token() -> None:
    sink = PulseEventSink("https://pulse.test", "bad", transport=httpx.MockTransport(PulseStub(401)))
    with pytest.raises(SinkError, match="token was refused"):
        await sink.check()


async def test_pulse_unreachable_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sink = PulseEventSink("https://pulse.test", "t", transport=httpx.MockTransport(refuse))
    with pytest.raises(SinkTransientError, match="ConnectError"):
        await sink.send([EventRecord(None, b"{}")])
    with pytest.raises(SinkError, match="ConnectError"):
        await sink.check()


def test_stored_object_digest_survives_msgpack() -> None:
    obj = StoredObject(os.urandom(64), content_type="text/plain", conn_id=9, transaction_id="t")
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(obj), type=StoredObject)
    assert back == obj


def test_object_ref_is_a_pulse_object_ref_event_with_a_stable_id() -> None:
    from qtap_async.pulse.bounds import Event, bounded
    from qtap_async.sinks import ObjectRef

    ObjectRefEvent = bounded(ObjectRef)  # what Pulse decodes an object_ref into
    obj = StoredObject(b"body", conn_id=3, transaction_id="t1")
    ref = ObjectRef.of(obj, "s3://b/k", "s3")
    ev = msgspec.json.decode(msgspec.json.encode(ref), type=Event)
    assert isinstance(ev, ObjectRefEvent)
    assert (ev.digest, ev.conn_id, ev.transaction_id, ev.url, ev.size) == (obj.digest, 3, "t1", "s3://b/k", 4)
    assert ObjectRef.of(obj, "s3://b/k", "s3").id == ref.id  # a re-sent reference de-duplicates by id
    assert ObjectRef.of(StoredObject(b"body", conn_id=3, transaction_id="t2"), "s3://b/k", "s3").id != ref.id


S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{code} from the test '
            'endpoint</Message><Resource>/b/k</Resource><RequestId>1</RequestId></Error>')


@pytest.mark.parametrize(("status", "code", "error"), [
    (400, "RequestTimeout", SinkTransientError),  # a busy or restarting MinIO/S3 timed out reading the body
    (400, "IncompleteBody", SinkTransientError),  # the body was cut short on the way
    (503, "SlowDown", SinkTransientError),
    (503, "XMinioServerNotInitialized", SinkTransientError),
    (400, "EntityTooLarge", SinkError),  # the object's own fault: retrying cannot help
    (400, "InvalidArgument", SinkError),
    (409, "OperationAborted", SinkError),
])
async def test_s3_put_errors_are_classed_by_code_then_status(status: int, code: str,
                                                             error: type[Exception]) -> None:
    """The real aiobotocore client against an HTTP endpoint answering every PUT with one S3 error document:
    a 4xx that only says the transfer failed is retried (spooled when it lasts), never dropped."""
    from aiohttp import web

    from qtap_async.sinks.s3 import S3ObjectSink

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, text=S3_ERROR.format(code=code), content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sink = S3ObjectSink("b", endpoint=f"http://127.0.0.1:{port}", access_key="k", secret_key="s", timeout=5.0)
    try:
        with pytest.raises(error, match=code) as info:
            await sink.put(StoredObject(b"payload"))
        assert type(info.value) is error  # SinkTransientError is not a SinkError subclass, but be exact
    finally:
        await sink.close()
        await runner.cleanup()
