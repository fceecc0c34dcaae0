"""`pip install .` builds a real wheel whose `qtap` finds the BPF objects inside the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    (whl,) = out.glob("qtap_async-*.whl")
    return whl


def test_wheel_carries_the_bpf_objects_and_manifest(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for obj in ("socket", "process", "tls", "features"):
        assert f"qtap_async/bpf/objects/{obj}.bpf.o" in names
    assert "qtap_async/bpf/objects/manifest.json" in names
    assert "cli/main.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "qtap = cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _installed_env(wheel: Path, tmp_path: Path) -> tuple[dict[str, str], Path]:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    # The installed copy first; dependencies from this interpreter's environment; not the checkout.
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONSAFEPATH="1")
    env.pop("QTAP_BPF_DIR", None)
    return env, target


def test_installed_agent_finds_its_objects(wheel: Path, tmp_path: Path) -> None:
    env, target = _installed_env(wheel, tmp_path)
    code = "from qtap_async.bpf.loader import objects_dir; print(objects_dir())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    where = Path(out.stdout.strip())
    assert where.is_relative_to(target), where
    manifest = json.loads((where / "manifest.json").read_text())
    assert set(manifest["objects"]) >= {"socket.bpf.o", "process.bpf.o", "tls.bpf.o"}


@pytest.mark.bpf
def test_installed_inspect_runs(wheel: Path, tmp_path: Path) -> None:
    env, _ = _installed_env(wheel, tmp_path)
    out = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "inspect", "--json"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["capture_possible"] is True
    assert {o["name"] for o in report["objects"]} >= {"socket.bpf.o", "tls.bpf.o"}


def test_missing_libbpf_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, QTAP_LIBBPF="libbpf-does-not-exist.so.1")
    out = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "run"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "libbpf" in out.stderr and "apt-get install libbpf1" in out.stderr
    assert "Traceback" not in out.stderr
