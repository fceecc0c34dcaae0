"""Logging set-up (stderr, so stdout stays pure JSON lines) and metric naming."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("qtap")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
