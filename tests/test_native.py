"""qtap_async.native: the mypyc-compiled parser modules and their pure-Python fallback give the same events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtap_async import native

ROOT = Path(__file__).resolve().parents[1]

# Replays every fixture at every level and prints, per level, the events without their volatile fields,
# and which file each compiled-or-not module was loaded from.
_REPLAY = """
import json, sys
from pathlib import Path
from qtap_async.replay import RecordFile, Replayer, comparable
import qtap_async.protocols.http1, qtap_async.protocols.hpack, qtap_async.protocols.http2
from qtap_async import native
out = {"files": {m: sys.modules[m].__file__ for m in native.MODULES}, "events": {}}
for p in sorted(Path("tests/data").glob("*.qrec")):
    for level in ("summary", "details", "full"):
        rp = Replayer(level, keep_events=True)
        rp.feed(RecordFile.load(p).records)
        out["events"][f"{p.stem}/{level}"] = [
            {k: v for k, v in comparable(e).items() if k != "ts_ns"} for e in rp.finish().captured]
print(json.dumps(out))
"""


def _replay(pure: bool) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), native.PURE_ENV: "1" if pure else "0"}
    done = subprocess.run([sys.executable, "-c", _REPLAY], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_compiled_and_pure_python_give_the_same_events() -> None:
    if any(how != "compiled" for how in native.status().values()):
        pytest.skip(f"compiled modules not built ({native.status()}): python -m qtap_async.native_cli build")
    compiled, pure = _replay(pure=False), _replay(pure=True)
    assert all(str(f).endswith(".so") for f in compiled["files"].values())  # type: ignore[attr-defined]
    assert all(str(f).endswith(".py") for f in pure["files"].values())  # type: ignore[attr-defined]
    events = compiled["events"]
    assert isinstance(events, dict) and len(events) >= 12
    assert sum(len(v) for v in events.values()) > 1000
    assert events == pure["events"]


def test_an_extension_built_from_other_source_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    stale = tmp_path / "native.json"
    stale.write_text(json.dumps({m: "0" * 64 for m in native.MODULES}))
    monkeypatch.setattr(native, "MANIFEST", stale)
    for m, how in native.status().items():
        assert how in ("source (not built)", "source (extension built from another version of the source)"), m
    # Without a record of the build, nothing compiled is trusted either.
    monkeypatch.setattr(native, "MANIFEST", tmp_path / "missing.json")
    assert "compiled" not in native.status().values()


def test_pure_python_environment_wins() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), native.PURE_ENV: "1"}
    code = "import sys, qtap_async.protocols.http1 as h; print(h.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("qtap_async/protocols/http1.py")


def test_cli_status_and_usage() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "qtap_async.native_cli", "status"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == list(native.MODULES)
    assert "RuntimeWarning" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "qtap_async.native_cli", "bogus"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
