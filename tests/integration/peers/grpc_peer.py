"""gRPC peer without generated code (raw bytes in and out): `server` prints PORT <n>; `client PORT` makes a
unary call and a server-streaming call over an insecure (h2c) channel and prints the results. With
`--tls CERT KEY` (server) / `--tls CERT` (client) both use TLS (grpcio's own BoringSSL, inside cygrpc.so)."""

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


def server(tls: tuple[str, str] | None = None) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, _identity, _identity),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("qtap.test.Echo", handlers),))
    if tls is None:
        port = s.add_insecure_port("127.0.0.1:0")
    else:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = s.add_secure_port("127.0.0.1:0", creds)
    s.start()
    print(f"PORT {port}", flush=True)
    s.wait_for_termination()


def client(port: int, ca: str | None = None) -> None:
    target = f"127.0.0.1:{port}"
    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        with open(ca, "rb") as c:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=c.read()))
    with channel as ch:
        u = ch.unary_unary("/qtap.test.Echo/Unary", request_serializer=_identity, response_deserializer=_identity)
        print(u(b"hello").decode(), flush=True)
        st = ch.unary_stream("/qtap.test.Echo/Stream", request_serializer=_identity, response_deserializer=_identity)
        print(",".join(m.decode() for m in st(b"abc")), flush=True)
        f = ch.unary_unary("/qtap.test.Echo/Fail", request_serializer=_identity, response_deserializer=_identity)
        try:
            f(b"x")
        except grpc.RpcError as exc:
            print(f"error {exc.code().value[0]}", flush=True)


def many(port: int, n: int, ca: str) -> None:
    """``n`` TLS channels (one connection each), all calling Unary at once from their own threads."""
    import threading

    with open(ca, "rb") as c:
        creds = grpc.ssl_channel_credentials(root_certificates=c.read())
    chans = [grpc.secure_channel(f"127.0.0.1:{port}", creds) for _ in range(n)]
    go = threading.Barrier(n)
    out: dict[int, bytes] = {}

    def call(i: int) -> None:
        u = chans[i].unary_unary("/qtap.test.Echo/Unary", request_serializer=_identity,
                                 response_deserializer=_identity)
        grpc.channel_ready_future(chans[i]).result(timeout=30)
        go.wait()
        out[i] = u(f"many-{i}".encode())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ch in chans:
        ch.close()
    print(",".join(out[i].decode() for i in range(n)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "many":
        many(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "server":
        server((sys.argv[3], sys.argv[4]) if sys.argv[2:3] == ["--tls"] else None)
    else:
        client(int(sys.argv[2]), sys.argv[4] if sys.argv[3:4] == ["--tls"] else None)
