"""The C reference consumer (benchmarks/reference/qtap_ref.c) loads the agent's objects and sees every record."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qtap_async.bpf.loader import objects_dir

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
BLASTER = Path(__file__).with_name("blaster.py")


@pytest.fixture(scope="module")
def qtap_ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("ref") / "qtap_ref"
    subprocess.run(["clang", "-O2", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "benchmarks" / "reference" /
                                                                       "qtap_ref.c"), "-lbpf", "-lelf", "-lz"],
                   check=True)
    return exe


def test_reference_consumer_counts_every_record_of_a_traced_process(qtap_ref: Path) -> None:
    child = subprocess.Popen([sys.executable, str(BLASTER), "300", "700"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    ref = None
    try:
        assert child.stdout.readline().strip() == "READY"
        ref = subprocess.Popen([str(qtap_ref), str(objects_dir()), "--target-tgid", str(child.pid)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert ref.stderr is not None
        assert ref.stderr.readline().strip() == "ATTACHED"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("DONE 210000")
        ref.send_signal(signal.SIGINT)
        out, _ = ref.communicate(timeout=60)
    finally:
        child.stdin.close()
        child.wait(10)
        if ref is not None and ref.poll() is None:
            ref.kill()
    d = json.loads(out.strip().splitlines()[-1])
    # Nothing dropped, and the consumer received exactly what the kernel counted as delivered.
    assert d["kernel_drop_ringbuf"] == 0, d
    assert d["records"] == d["kernel_records"], d
    # 300 sends (one record each, 700 B < one chunk) plus the receiving side, opens and closes.
    assert d["records"] >= 300 + 2, d
    assert d["bytes"] >= 300 * 700, d
