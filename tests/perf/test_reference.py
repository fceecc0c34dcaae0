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
TLS_BLASTER = Path(__file__).with_name("tls_blaster.py")


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


def _tls_run(qtap_ref: Path, cert: tuple[Path, Path], with_plan: bool) -> tuple[dict[str, int], str]:
    """One TLS blaster run (200 writes of 700 B) traced by the reference, with or without the agent's TLS plan."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import tls_plan_file

    child = subprocess.Popen([sys.executable, str(TLS_BLASTER), str(cert[0]), str(cert[1]), "200", "700"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    ref = None
    plan = None
    try:
        assert child.stdout.readline().strip() == "READY"
        cmd = [str(qtap_ref), str(objects_dir()), "--target-tgid", str(child.pid)]
        if with_plan:
            plan = tls_plan_file(child.pid)
            cmd += ["--tls-plan", str(plan)]
        ref = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert ref.stderr is not None
        lines = []
        while (line := ref.stderr.readline()) and line.strip() != "ATTACHED":
            lines.append(line)
        assert line.strip() == "ATTACHED", lines
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("DONE 140000")
        ref.send_signal(signal.SIGINT)
        out, err = ref.communicate(timeout=60)
    finally:
        child.stdin.close()
        child.wait(10)
        if ref is not None and ref.poll() is None:
            ref.kill()
        if plan is not None:
            plan.unlink()
    return json.loads(out.strip().splitlines()[-1]), "".join(lines) + err


def test_reference_with_the_agents_tls_plan_sees_the_plaintext(qtap_ref: Path,
                                                               tmp_path: Path) -> None:
    """`--tls-plan` attaches the agent's own uprobes (probe_groups) to the process's libssl: on top of the
    ciphertext the socket hooks see, the reference receives a plaintext record for every SSL write and read."""
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    plain, _ = _tls_run(qtap_ref, (crt, key), with_plan=False)
    tls, err = _tls_run(qtap_ref, (crt, key), with_plan=True)
    attached = [ln for ln in err.splitlines() if "TLS uprobes attached" in ln]
    assert attached and int(attached[0].split()[1]) > 0, err
    assert plain["kernel_drop_ringbuf"] == 0 and tls["kernel_drop_ringbuf"] == 0
    # 200 x 700 B written and read in plaintext: at least 140,000 B each way more than the ciphertext alone.
    assert tls["bytes"] >= plain["bytes"] + 2 * 140_000, (plain, tls)
    assert tls["records"] >= plain["records"] + 200, (plain, tls)
