"""The control plane imports the shared config types and validator, never the capture side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ("qtap_async.topology", "qtap_async.bpf", "qtap_async.transforms", "qtap_async.sources", "qtap_async.tls",
           "qtap_async.context.process",
           "qtap_async.context.listeners", "qtap_async.context.domains", "qtap_async.context.dns_cache",
           "qtap_async.protocols", "qtap_async.control_client")


def test_service_and_validator_load_no_capture_module() -> None:
    code = (
        "import sys\n"
        "import qtap_async.control.server, cli.control\n"
        "from qtap_async.control.configs import check_config\n"
        "check_config('version: 2\\nstacks: {}\\n', 64)\n"
        f"print([m for m in sys.modules if m.startswith({CAPTURE!r})])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
