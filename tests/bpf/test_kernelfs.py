"""`qtap inspect` and `qtap run` on a host where tracefs (and debugfs, and bpffs) are not mounted.

Each case runs in a private mount namespace (`unshare --mount --propagation private`): the filesystems are
unmounted there only, so other processes on the machine (other agents included) keep theirs, and the
namespace's copies are remounted in a `trap ... EXIT` before it goes away.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import start_http_server

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]

# Unmount every place tracefs is reachable (debugfs automounts a tracefs instance under it) and bpffs;
# remount on the way out in any case.
UNMOUNT = """
set -u
remount() {
  mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || true
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
}
trap remount EXIT
umount /sys/kernel/debug/tracing 2>/dev/null || true
umount /sys/kernel/debug 2>/dev/null || true
umount /sys/kernel/tracing
umount /sys/fs/bpf 2>/dev/null || true
if [ -d /sys/kernel/tracing/events ] || [ -d /sys/kernel/debug/tracing/events ]; then
  echo "tracefs is still reachable in the namespace" >&2; exit 97
fi
"""


def in_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.fail("this test needs unshare (util-linux)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QTAP_PY": sys.executable}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", UNMOUNT + script],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_inspect_mounts_missing_filesystems_as_root() -> None:
    r = in_namespace('"$QTAP_PY" -m cli.main inspect --json; echo "rc=$?" >&2; '
                     'grep -E " (tracefs|bpf) " /proc/self/mounts >&2')
    assert "rc=0" in r.stderr, r.stderr
    report = json.loads(r.stdout)
    fs = {f["name"]: f for f in report["features"]["filesystems"]}
    assert fs["tracefs"] == {"name": "tracefs", "mounted": True, "path": "/sys/kernel/tracing", "action": "mounted",
                             "error": ""}
    assert fs["bpffs"]["action"] == "mounted"
    assert report["capture_possible"] is True
    hooks = {h["hook"]: h for h in report["features"]["hooks"]}
    assert hooks["tracepoint"]["attaches"] is True  # attached through the tracefs inspect mounted
    assert " /sys/kernel/tracing tracefs " in r.stderr
    # The text form says what it did.
    r = in_namespace('"$QTAP_PY" -m cli.main inspect')
    assert "tracefs: was missing, mounted at /sys/kernel/tracing" in r.stdout, r.stdout + r.stderr


def test_run_mounts_tracefs_and_captures() -> None:
    server, port = start_http_server()
    try:
        script = f"""
"$QTAP_PY" -m cli.main run --no-tls > "$OUT" 2> "$ERR" &
agent=$!
for i in $(seq 1 300); do grep -q "capture attached" "$ERR" && break; sleep 0.1; done
curl -s -o /dev/null http://127.0.0.1:{port}/kernelfs-probe
sleep 1
kill -INT $agent; wait $agent; echo "rc=$?"
"""
        out = ROOT / f".pytest-kernelfs-{os.getpid()}"
        env_script = f'OUT="{out}.out"; ERR="{out}.err"\n' + script
        r = in_namespace(env_script)
        stdout = Path(f"{out}.out").read_text()
        stderr = Path(f"{out}.err").read_text()
    finally:
        server.terminate()
        server.wait()
        for suffix in (".out", ".err"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
    assert "rc=0" in r.stdout, r.stdout + r.stderr + stderr
    assert "tracefs was not mounted; mounted it at /sys/kernel/tracing" in stderr
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert any(e.get("type") == "http_transaction" and e.get("path") == "/kernelfs-probe" for e in events), stdout


# As a user without root: nothing can be mounted, so both commands say what is missing and how to fix it.
# The interpreter lives under root's home (mode 700 here), so the process starts as root, runs `inspect` once to
# import everything the commands import lazily, unmounts again what that mounted, and then gives up root for
# good before running the command under test.
AS_NOBODY = """
"$QTAP_PY" - COMMAND <<'PY'
import contextlib, ctypes, io, os, sys
import concurrent.futures.thread, uvloop
import cli.main, cli.run_cmd, qtap_async.topology, qtap_async.bpf.kernelfs, qtap_async.telemetry.server
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    cli.main.app(["inspect"])
libc = ctypes.CDLL("libc.so.6", use_errno=True)
for path in (b"/sys/kernel/tracing", b"/sys/fs/bpf"):
    libc.umount2(path, 0)
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
try:
    cli.main.app(sys.argv[1:])
except SystemExit as e:
    print(f"rc={e.code}", file=sys.stderr)
PY
"""


@pytest.mark.parametrize("command", ["inspect", "run"])
def test_without_root_says_what_is_missing(command: str) -> None:
    r = in_namespace(AS_NOBODY.replace("COMMAND", command))
    text = r.stdout + r.stderr
    assert "rc=1" in r.stderr, text
    assert ("tracefs is not mounted at /sys/kernel/tracing and only root can mount it: "
            "run `sudo mount -t tracefs nodev /sys/kernel/tracing`") in text
