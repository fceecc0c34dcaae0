"""Build the BPF objects from bpf/src and check that the committed ones are fresh.

`python -m qtap_async.bpf.build` compiles every bpf/src/*.bpf.c into qtap_async/bpf/objects (which
bpf/build links to) and writes manifest.json with the sha256 of every source file and object.
`--check` rebuilds into a temporary directory and fails when the committed objects or manifest differ
from what the sources produce: a stale object never reaches CI unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "bpf" / "src"
OUT = Path(__file__).resolve().parent / "objects"
CFLAGS = ["-g", "-O2", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"]


def _say(message: str) -> None:
    """A line for the person running the build (stderr: stdout stays free for what a tool pipes)."""
    sys.stderr.write(message + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sources() -> list[Path]:
    return sorted(p for p in SRC.iterdir() if p.suffix in (".c", ".h"))


def build(out: Path, clang: str = "clang", strip: str = "llvm-strip") -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    objects: dict[str, str] = {}
    for src in sorted(SRC.glob("*.bpf.c")):
        obj = out / (src.name[: -len(".c")] + ".o")
        # Relative source paths from inside bpf/src: BTF line info records file names, and the objects must
        # be byte-identical wherever the checkout lives (CI rebuilds them in another directory to compare).
        cmd = [clang, *CFLAGS, f"-fdebug-prefix-map={SRC}=.", "-I", ".", "-c", src.name, "-o", str(obj.resolve())]
        subprocess.run(cmd, check=True, cwd=SRC)
        # DWARF is only for debugging; BTF (kept by -g stripping) is what CO-RE needs.
        subprocess.run([strip, "-g", str(obj)], check=True)
        objects[obj.name] = _sha256(obj)
    manifest: dict[str, object] = {
        "sources": {p.name: _sha256(p) for p in sources()},
        "objects": objects,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check() -> int:
    committed_path = OUT / "manifest.json"
    if not committed_path.exists():
        _say("bpf: no manifest.json: run `just bpf`")
        return 1
    committed = json.loads(committed_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(Path(tmp))
    problems = []
    if committed.get("sources") != fresh["sources"]:
        problems.append("sources changed since the objects were built")
    if committed.get("objects") != fresh["objects"]:
        problems.append("the committed objects differ from a rebuild of the sources")
    for name, digest in dict(committed.get("objects", {})).items():
        obj = OUT / name
        if not obj.exists() or _sha256(obj) != digest:
            problems.append(f"{name} does not match the manifest")
    if problems:
        for p in problems:
            _say(f"bpf: stale objects: {p}; run `just bpf` and commit bpf/build")
        return 1
    _say(f"bpf: {len(fresh['objects'])} objects fresh")  # type: ignore[arg-type]
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if committed objects are stale")
    args = ap.parse_args()
    if not shutil.which("clang"):
        _say("bpf: clang not found (apt-get install clang llvm libbpf-dev)")
        return 1
    if args.check:
        return check()
    build(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
