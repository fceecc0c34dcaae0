"""Optional mypyc builds of the hot parser modules, with the pure-Python source as the fallback.

``python -m qtap_async.native_cli build`` compiles each module of ``MODULES`` with mypyc (part of mypy, the
``dev`` extra) into an extension next to its source, and records the source's SHA-256 in
``qtap_async/native.json``. ``clean`` removes them; ``status`` says which module runs which way.

``install()`` (called when ``qtap_async`` is imported) puts a finder first on ``sys.meta_path`` that
loads a module of ``MODULES`` from its ``.py`` source instead of the extension when:

- the environment has ``QTAP_PURE_PYTHON=1`` (tests run both ways; see tests/test_native.py);
- the extension was built from another version of the source (its recorded hash differs), so an
  edited module never runs stale compiled code;
- no build is recorded at all.

Compiled, the replay benchmark runs about 1.4-1.6x faster per core (benchmarks/bench_replay.py); the
behaviour is the same, which the tests check by replaying every fixture both ways.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["MODULES", "build", "clean", "install", "status"]

# Each is compiled on its own (one mypyc run per module), so no shared runtime library lands outside
# the package. They are mypy-strict and use nothing mypyc refuses (no monkeypatching of their classes).
MODULES = ("qtap_async.protocols.http1", "qtap_async.protocols.hpack", "qtap_async.protocols.http2",
           "qtap_async.protocols.bodies")
PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
MANIFEST = PACKAGE / "native.json"
PURE_ENV = "QTAP_PURE_PYTHON"


def _source(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extensions(module: str) -> list[Path]:
    """The module's extension files: the importable one and the ``__mypyc`` library it loads."""
    src = _source(module)
    return [p for stem in (src.stem, src.stem + "__mypyc") for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if (p := src.with_name(stem + suffix)).exists()]


def _manifest() -> dict[str, str]:
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _compiled_ok(module: str, manifest: dict[str, str]) -> bool:
    """An extension exists and was built from the source as it is now."""
    recorded = manifest.get(module)
    return bool(recorded) and bool(_extensions(module)) and recorded == _digest(_source(module))


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds ``names`` from their ``.py`` files, ahead of the extension the default finder prefers."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def install() -> None:
    """Route the modules that must run from source (see the module docstring) to their ``.py`` files."""
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return
    if os.environ.get(PURE_ENV) == "1":
        pure = set(MODULES)
    else:
        manifest = _manifest()
        pure = {m for m in MODULES if _extensions(m) and not _compiled_ok(m, manifest)}
    if pure:
        sys.meta_path.insert(0, _SourceFinder(pure))


def status() -> dict[str, str]:
    """Per module: "compiled" when an up-to-date extension would be loaded, else why it runs from source."""
    manifest = _manifest()
    out = {}
    for m in MODULES:
        if not _extensions(m):
            out[m] = "source (not built)"
        elif not _compiled_ok(m, manifest):
            out[m] = "source (extension built from another version of the source)"
        elif os.environ.get(PURE_ENV) == "1":
            out[m] = f"source ({PURE_ENV}=1)"
        else:
            out[m] = "compiled"
    return out


def clean() -> None:
    for m in MODULES:
        for ext in _extensions(m):
            ext.unlink()
    MANIFEST.unlink(missing_ok=True)


def build(modules: Sequence[str] = MODULES) -> None:
    """Compile ``modules`` in place with mypyc (a minute or more each); RuntimeError when a build fails."""
    clean()
    manifest: dict[str, str] = {}
    for m in modules:
        src = _source(m)
        done = subprocess.run([sys.executable, "-m", "mypyc", str(src.relative_to(ROOT))], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:  # mypyc's and the compiler's own words say why
            raise RuntimeError(f"mypyc failed on {m}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        if not _extensions(m):
            raise RuntimeError(f"mypyc built no extension for {m}")
        manifest[m] = _digest(src)
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
