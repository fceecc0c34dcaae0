"""Build qtap's Java agent jar from java/qtap-agent/src and check that the committed one is fresh.

`python -m qtap_async.tls.java_build` compiles the sources with the JDK's javac (no Maven: the bytecode
rewriting uses the JDK's own copy of ASM, exported to the agent at attach) and writes a jar whose bytes depend
only on the class files (fixed entry times and order), plus manifest.json with the sha256 of every source.
`--check` fails when the committed manifest does not match the sources: a stale jar never goes unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "java" / "qtap-agent" / "src"
OUT = Path(__file__).resolve().parent / "java_agent"  # package data, committed like the BPF objects
JAR = OUT / "qtap-agent.jar"
MANIFEST = (
    "Manifest-Version: 1.0\r\n"
    "Agent-Class: qtap.agent.Agent\r\n"
    "Can-Retransform-Classes: true\r\n"
    "Can-Redefine-Classes: true\r\n"
    "\r\n"
)
_EXPORTS = ["jdk.internal.org.objectweb.asm", "jdk.internal.org.objectweb.asm.commons"]
_EPOCH = (1980, 1, 1, 0, 0, 0)


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.java"))


def source_hashes() -> dict[str, str]:
    return {str(p.relative_to(SRC)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sources()}


def build(out: Path = OUT, javac: str = "javac") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qtap-java-") as tmp:
        cmd = [javac, "-nowarn", "-source", "17", "-target", "17", "-d", tmp]
        for pkg in _EXPORTS:
            cmd += ["--add-exports", f"java.base/{pkg}=ALL-UNNAMED"]
        subprocess.run([*cmd, *map(str, sources())], check=True)
        jar = out / JAR.name
        with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", _EPOCH), MANIFEST)
            for cls in sorted(Path(tmp).rglob("*.class")):
                info = zipfile.ZipInfo(str(cls.relative_to(tmp)), _EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, cls.read_bytes())
    manifest = {"sources": source_hashes(), "jar": hashlib.sha256(jar.read_bytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return jar


def check() -> int:
    """0 when the committed jar was built from the sources as they are (and is the jar the manifest names)."""
    path = OUT / "manifest.json"
    if not path.exists() or not JAR.exists():
        sys.stderr.write(f"missing {JAR} or its manifest: run python -m qtap_async.tls.java_build\n")
        return 1
    committed = json.loads(path.read_text())
    if committed.get("sources") != source_hashes():
        sys.stderr.write("java/qtap-agent/src changed since the jar was built: "
                         "run python -m qtap_async.tls.java_build\n")
        return 1
    if committed.get("jar") != hashlib.sha256(JAR.read_bytes()).hexdigest():
        sys.stderr.write(f"{JAR} is not the jar its manifest names: rebuild it\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed jar is stale")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    if shutil.which("javac") is None:
        sys.stderr.write("javac not found: install a JDK 17 or later\n")
        return 1
    sys.stderr.write(f"built {build()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
