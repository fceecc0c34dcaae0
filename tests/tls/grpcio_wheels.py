"""Real grpcio builds for the BoringSSL tests: each version's ``grpc`` package unpacked from its PyPI wheel
(manylinux, this Python), cached under .services/cache so fresh machines download once."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("QTAP_SERVICES_CACHE") or ROOT / ".services" / "cache") / "tls-peers"
# Two older releases than the venv's (BoringSSL of late 2023 and early 2025).
VERSIONS = ("1.60.0", "1.70.0")


def grpcio_dir(version: str) -> str:
    """A directory to put on PYTHONPATH holding grpcio ``version``'s ``grpc`` package."""
    d = CACHE / f"grpcio-{version}-py{sys.version_info.major}{sys.version_info.minor}"
    if not glob.glob(str(d / "grpc" / "_cython" / "cygrpc*.so")):
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d),
                        f"grpcio=={version}", "--only-binary=:all:"], check=True, timeout=300)
        (wheel,) = glob.glob(str(d / f"grpcio-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(d, [n for n in z.namelist() if n.startswith("grpc/")])
    return str(d)


def cygrpc(version: str) -> str:
    """Path of grpcio ``version``'s core library (``installed``: the one this venv imports)."""
    if version == "installed":
        import grpc  # type: ignore[import-untyped]

        base = os.path.dirname(grpc.__file__)
    else:
        base = os.path.join(grpcio_dir(version), "grpc")
    (path,) = glob.glob(os.path.join(base, "_cython", "cygrpc*.so"))
    return path
