"""HTTPS client on an arbitrary libssl through ctypes (no Python ssl module: the process maps only that libssl).

Usage: python -S ssl11_client.py LIBSSL PORT PATH DELAY_S. Loads LIBSSL (after the libcrypto beside it),
waits DELAY_S, sends one HTTP/1.1 GET over TLS to 127.0.0.1:PORT and writes the whole response (headers and
body) to stdout.
"""

import ctypes
import glob
import os
import socket
import sys
import time

lib_path, port, path, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
# Wheel-bundled libraries carry no RPATH of their own: load what libssl needs from beside it first (zlib for
# libcrypto, then libcrypto), by path.
for pattern in ("libz-*.so*", "libcrypto*.so*"):
    for dep in glob.glob(os.path.join(os.path.dirname(lib_path), pattern)):
        ctypes.CDLL(dep, mode=ctypes.RTLD_GLOBAL)
ssl = ctypes.CDLL(lib_path)
for name, res, args in (
    ("TLS_client_method", ctypes.c_void_p, []),
    ("SSL_CTX_new", ctypes.c_void_p, [ctypes.c_void_p]),
    ("SSL_new", ctypes.c_void_p, [ctypes.c_void_p]),
    ("SSL_set_fd", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    ("SSL_connect", ctypes.c_int, [ctypes.c_void_p]),
    ("SSL_write", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]),
    ("SSL_read", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]),
    ("SSL_shutdown", ctypes.c_int, [ctypes.c_void_p]),
):
    fn = getattr(ssl, name)
    fn.restype, fn.argtypes = res, args
time.sleep(delay)
sock = socket.create_connection(("127.0.0.1", port))
ctx = ssl.SSL_CTX_new(ssl.TLS_client_method())
s = ssl.SSL_new(ctx)
ssl.SSL_set_fd(s, sock.fileno())
if ssl.SSL_connect(s) != 1:
    sys.exit("handshake failed")
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
if ssl.SSL_write(s, req, len(req)) != len(req):
    sys.exit("write failed")
buf = ctypes.create_string_buffer(65536)
out = bytearray()
while True:
    n = ssl.SSL_read(s, buf, len(buf))
    if n <= 0:
        break
    out += buf.raw[:n]
ssl.SSL_shutdown(s)
sock.close()
sys.stdout.buffer.write(out)
