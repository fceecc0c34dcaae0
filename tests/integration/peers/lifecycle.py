"""Socket lifecycles the kernel side must get right, each as a real process that prints its own truth.

`lifecycle.py MODE ARGS...`; every mode prints one JSON line with what it did (pid, local port, bytes sent
and received) so the test compares the agent's report against the process's own view.

  halfclose-server            listen; print {"port"}; accept one; read to EOF; send LATE; close
  halfclose-client PORT       connect, send "hello", shutdown(SHUT_WR), wait for the peer's FIN, then read
                              what is left (read after the socket reached TCP_CLOSE)
  refused PORT                non-blocking connect to a closed port, then a send that fails
  tfo PORT                    TCP Fast Open client: sendto(MSG_FASTOPEN) without connect, read the answer
  fork-server                 listen; print {"port"}; accept one; fork; the child answers; parent closes
  sendfile-server FILE        listen; print {"port"}; accept one; read the request; answer with sendfile
  splice-server FILE          the same with splice(file -> pipe -> socket)
  blocked-server              listen; print {"port"}; accept; print {"accepted"}; recv (blocks); answer
  peek-server                 listen; print {"port"}; accept one; recv(16, MSG_PEEK) (twice); read the
                              request; answer; then a second connection: recv(5, MSG_TRUNC), read the rest
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

LATE = b"late bytes after the peer's FIN " * 8


def _say(**kw: object) -> None:
    print(json.dumps({"pid": os.getpid(), **kw}), flush=True)


def _listen() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def _read_request(c: socket.socket) -> int:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    return len(got)


def halfclose_server() -> None:
    s = _listen()
    _say(port=s.getsockname()[1])
    c, _ = s.accept()
    received = 0
    while chunk := c.recv(65536):
        received += len(chunk)
    c.sendall(LATE)
    c.close()
    _say(role="server", received=received, sent=len(LATE))


def halfclose_client(port: int) -> None:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"hello")
    c.shutdown(socket.SHUT_WR)
    time.sleep(0.5)  # the peer answers and closes: this socket reaches TCP_CLOSE with LATE still queued
    received = 0
    while chunk := c.recv(65536):
        received += len(chunk)
    _say(role="client", lport=c.getsockname()[1], sent=5, received=received)
    c.close()


def refused(port: int) -> None:
    c = socket.socket()
    c.setblocking(False)
    err = c.connect_ex(("127.0.0.1", port))
    time.sleep(0.2)
    try:
        c.send(b"x")
        sent = 1
    except OSError:
        sent = 0
    _say(connect_errno=err, sent=sent, lport=c.getsockname()[1])
    c.close()


def tfo(port: int) -> None:
    c = socket.socket()
    msg = b"GET /tfo HTTP/1.0\r\nHost: tfo.test\r\n\r\n"
    c.sendto(msg, socket.MSG_FASTOPEN, ("127.0.0.1", port))
    received = 0
    while chunk := c.recv(65536):
        received += len(chunk)
    _say(lport=c.getsockname()[1], sent=len(msg), received=received)
    c.close()


_ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def fork_server() -> None:
    s = _listen()
    _say(port=s.getsockname()[1])
    c, _ = s.accept()
    child = os.fork()
    if child == 0:
        s.close()
        _read_request(c)
        c.sendall(_ANSWER)
        c.close()
        os._exit(0)
    c.close()
    os.waitpid(child, 0)
    _say(child=child)


def sendfile_server(path: str, use_splice: bool) -> None:
    s = _listen()
    _say(port=s.getsockname()[1])
    c, _ = s.accept()
    _read_request(c)
    size = os.path.getsize(path)
    head = f"HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
    c.sendall(head)
    with open(path, "rb") as f:
        if use_splice:
            r, w = os.pipe()
            left = size
            while left:
                n = os.splice(f.fileno(), w, min(left, 65536))
                if not n:
                    break
                left -= n
                while n:
                    n -= os.splice(r, c.fileno(), n)
        else:
            c.sendfile(f)
    c.close()
    _say(head=len(head), body=size)


def blocked_server() -> None:
    s = _listen()
    _say(port=s.getsockname()[1])
    c, _ = s.accept()
    _say(accepted=True)
    got = c.recv(65536)  # blocked here when the agent attaches
    c.sendall(_ANSWER)
    c.close()
    _say(received=len(got), sent=len(_ANSWER))


def peek_server() -> None:
    s = _listen()
    _say(port=s.getsockname()[1])
    c, _ = s.accept()
    peeked = c.recv(16, socket.MSG_PEEK)
    c.recv(16, socket.MSG_PEEK)  # sniffers peek more than once
    n = _read_request(c)
    c.sendall(_ANSWER)
    c.close()
    d, _ = s.accept()
    discarded = d.recv(5, socket.MSG_TRUNC)
    rest = _read_request(d)
    d.sendall(_ANSWER)
    d.close()
    _say(peeked=len(peeked), received=n, discarded=len(discarded), rest=rest)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "halfclose-server":
        halfclose_server()
    elif mode == "halfclose-client":
        halfclose_client(int(args[0]))
    elif mode == "refused":
        refused(int(args[0]))
    elif mode == "tfo":
        tfo(int(args[0]))
    elif mode == "fork-server":
        fork_server()
    elif mode in ("sendfile-server", "splice-server"):
        sendfile_server(args[0], mode == "splice-server")
    elif mode == "blocked-server":
        blocked_server()
    elif mode == "peek-server":
        peek_server()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
