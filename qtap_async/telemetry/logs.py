"""Logging set-up: stderr, so stdout stays pure JSON lines.

Under systemd (journald sets ``JOURNAL_STREAM`` for the unit's stderr) each line starts with a syslog priority
prefix (``<3>`` for errors, ``<4>`` warnings...), which journald turns into the entry's priority, and carries no
timestamp of its own: the journal has one. ``QTAP_LOG_FORMAT=journald|plain`` forces either form.
"""

from __future__ import annotations

import logging
import os
import sys

# logging level -> syslog priority (sd-daemon(3) prefixes)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournaldFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        # One journal entry per line: a multi-line message (a verifier log) keeps its priority on every line.
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines() or [""])


def log_format() -> str:
    forced = os.environ.get("QTAP_LOG_FORMAT", "")
    if forced in ("journald", "plain"):
        return forced
    return "journald" if os.environ.get("JOURNAL_STREAM") else "plain"


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format() == "journald":
        handler.setFormatter(JournaldFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("qtap")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
