"""Keep-alive HTTP client: one request, wait for a line on stdin, a second request on the SAME connection."""

from __future__ import annotations

import http.client
import sys

port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port)
conn.request("GET", "/bytes?n=500&chunk=65536")
conn.getresponse().read()
print("first done", flush=True)
sys.stdin.readline()
conn.request("GET", "/bytes?n=777&chunk=65536")
conn.getresponse().read()
print("second done", flush=True)
sys.stdin.readline()
conn.close()
