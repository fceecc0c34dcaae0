"""gRPC peer without generated code (raw bytes in and out): `server` prints PORT <n>; `client PORT` makes a
unary call and a server-streaming call over an insecure (h2c) channel and prints the results."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures

import grpc


def _identity(b: bytes) -> bytes:
    return b


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(3):
        yield f"part{i}:".encode() + request


def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b""


def server() -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, _identity, _identity),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("qtap.test.Echo", handlers),))
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(f"PORT {port}", flush=True)
    s.wait_for_termination()


def client(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        u = ch.unary_unary("/qtap.test.Echo/Unary", request_serializer=_identity, response_deserializer=_identity)
        print(u(b"hello").decode(), flush=True)
        st = ch.unary_stream("/qtap.test.Echo/Stream", request_serializer=_identity, response_deserializer=_identity)
        print(",".join(m.decode() for m in st(b"abc")), flush=True)
        f = ch.unary_unary("/qtap.test.Echo/Fail", request_serializer=_identity, response_deserializer=_identity)
        try:
            f(b"x")
        except grpc.RpcError as exc:
            print(f"error {exc.code().value[0]}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(int(sys.argv[2]))
