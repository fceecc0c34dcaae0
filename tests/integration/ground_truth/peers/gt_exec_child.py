"""Exec'd by gt_server.py --mode exec: serves the connection on the inherited fd argv[1]."""

from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gt_server import serve  # type: ignore[import-not-found]

if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2], None, sys.argv[3] == "1", "")
