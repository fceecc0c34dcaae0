"""Discovery over real processes started here: Python (libssl), node (static OpenSSL), Go (plain and
stripped), wget (GnuTLS), a file only visible inside another mount namespace, and vanishing pids."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qtap_async.tls import Scanner, describe, describe_data, describe_text, parse_maps
from qtap_async.tls.model import FileKey, TlsLibrary

from .conftest import PYTHON

PY_SSL = (
    "import ssl, socket, sys; ctx = ssl.create_default_context(); s = socket.socket(); "
    "print('ready', flush=True); sys.stdin.readline()"
)


def _by_kind(libs: dict[FileKey, TlsLibrary], kind: str) -> list[TlsLibrary]:
    return [lib for lib in libs.values() if lib.kind == kind]


def test_parse_maps() -> None:
    text = (
        "55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1234 /usr/bin/python3.11\n"
        "7f00aa000000-7f00aa0a0000 r-xp 00020000 08:02 99 /usr/lib/libssl.so.3 (deleted)\n"
        "7f00ab000000-7f00ab001000 rw-p 00000000 00:00 0 \n"
        "7ffd1e9f0000-7ffd1ea11000 rw-p 00000000 00:00 0                          [stack]\n"
        "7f00ac000000-7f00ac001000 r-xp 00000000 00:05 77 /memfd:x (deleted)\n"
    )
    maps = parse_maps(text)
    assert [(m.path, m.deleted) for m in maps] == [
        ("/usr/bin/python3.11", False),
        ("/usr/lib/libssl.so.3", True),
        ("/memfd:x", True),  # kept: /proc/PID/map_files still opens it
    ]
    assert maps[1].dev == os.makedev(8, 2) and maps[1].inode == 99 and maps[1].start == 0x7F00AA000000


def test_python_libssl_and_cache(spawn: Any) -> None:
    p1 = spawn([PYTHON, "-c", PY_SSL])
    p2 = spawn([PYTHON, "-c", PY_SSL])
    sc = Scanner()
    libs = sc.scan_pid(p1.pid)
    ossl = _by_kind(libs, "openssl")
    assert len(ossl) == 1, describe_text(libs)
    lib = ossl[0]
    st = os.stat(f"/proc/{p1.pid}/root{lib.path}")
    assert lib.key == FileKey(st.st_dev, st.st_ino)
    assert os.path.basename(lib.path).startswith("libssl.so") and lib.linkage == "shared"
    assert lib.version.startswith("3.") and "symbol version" not in lib.version  # read from libcrypto
    assert lib.pids == [p1.pid] and {p.function for p in lib.plans} >= {"SSL_read", "SSL_write"}
    # The second process maps the same files: no new analysis at all.
    before = sc.analyses
    libs2 = sc.scan_pid(p2.pid)
    assert sc.analyses == before
    assert libs2[lib.key].plans == lib.plans and libs2[lib.key].pids == [p2.pid]
    both = sc.scan_all([p1.pid, p2.pid])
    assert sorted(both[lib.key].pids) == sorted([p1.pid, p2.pid])


def test_node_static_openssl(spawn: Any) -> None:
    p = spawn(["node", "-e", "require('tls'); console.log('ready'); process.stdin.resume()"])
    libs = Scanner().scan_pid(p.pid)
    node = [lib for lib in libs.values() if lib.path == os.path.realpath(shutil.which("node") or "")]
    assert len(node) == 1, describe_text(libs)
    assert node[0].kind == "openssl" and node[0].linkage == "static"
    assert all(plan.fast for plan in node[0].plans)


@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_go_process(spawn: Any, go_binaries: dict[str, Path], variant: str) -> None:
    p = spawn([str(go_binaries[variant])])
    libs = Scanner().scan_pid(p.pid)
    go = _by_kind(libs, "go")
    assert len(go) == 1, describe_text(libs)
    lib = go[0]
    assert lib.path == str(go_binaries[variant]) and lib.go_abi == "register"
    assert lib.stripped is (variant == "stripped")
    assert lib.go_offsets is not None
    assert lib.go_offsets.source == ("dwarf" if variant == "plain" else "table")
    assert {f.name for f in lib.functions} == {"crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"}


def test_wget_gnutls(spawn: Any) -> None:
    wget = shutil.which("wget")
    assert wget, "wget is installed by scripts/bootstrap"
    ldd = subprocess.run(["ldd", wget], capture_output=True, text=True).stdout
    assert "libgnutls" in ldd, ldd
    # A listener that accepts and never answers: wget sits in the TLS handshake while we scan it.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        p = spawn(
            [
                wget,
                "-q",
                "-O",
                "/dev/null",
                "--tries=1",
                "--timeout=60",
                "--no-check-certificate",
                f"https://127.0.0.1:{port}/",
            ],
            ready=None,
        )
        conn, _ = srv.accept()
        try:
            libs = Scanner().scan_pid(p.pid)
        finally:
            conn.close()
    gnutls = _by_kind(libs, "gnutls")
    assert len(gnutls) == 1, describe_text(libs)
    assert {plan.function for plan in gnutls[0].plans} == {"gnutls_record_send", "gnutls_record_recv"}
    assert gnutls[0].version.count(".") == 2


def test_file_only_visible_in_another_mount_namespace(spawn: Any, go_binaries: dict[str, Path], tmp_path: Path) -> None:
    """Container case: the process's /app/server exists only in its own mount namespace and root."""
    root = tmp_path / "root"
    root.mkdir()
    # Like a container runtime: a private mount namespace, a new root filesystem, pivot_root into it.
    script = (
        f"mount -t tmpfs none {root} && mkdir {root}/app {root}/old && "
        f"cp {go_binaries['stripped']} {root}/app/server && cd {root} && pivot_root . old && "
        "exec /app/server"
    )
    p = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    assert not (root / "app" / "server").exists()  # not visible from here
    libs = Scanner().scan_pid(p.pid)
    go = _by_kind(libs, "go")
    assert len(go) == 1, describe_text(libs)
    assert go[0].path == "/app/server"
    assert go[0].open_path == f"/proc/{p.pid}/root/app/server"
    assert any(plan.fast for plan in go[0].plans)


def test_vanished_and_bogus_pids_are_reported_not_raised(spawn: Any, tmp_path: Path) -> None:
    p = spawn([PYTHON, "-c", PY_SSL])
    pid = p.pid
    p.stop()
    sc = Scanner()
    assert sc.scan_pid(pid) == {}
    assert any(pr.pid == pid and "vanished" in pr.error for pr in sc.problems)
    # A fake /proc: a maps file naming a file that does not exist, and a "maps" that is a directory.
    fake = tmp_path / "proc"
    (fake / "100").mkdir(parents=True)
    (fake / "100" / "maps").write_text("7f0000000000-7f0000001000 r-xp 00000000 08:01 4242 /nope/libssl.so.3\n")
    (fake / "101" / "maps").mkdir(parents=True)
    sc2 = Scanner(proc=str(fake))
    assert sc2.scan_all() == {}
    errors = {pr.pid: pr.error for pr in sc2.problems}
    assert set(errors) == {100, 101} and "not found" in errors[100]


def test_process_exits_mid_scan(spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies between reading its maps and opening its files: reported, never raised."""
    p = spawn([PYTHON, "-c", PY_SSL])
    sc = Scanner()
    import qtap_async.tls.discover as discover

    real = discover.parse_maps

    def parse_then_kill(text: str) -> list[discover.Mapping]:
        maps = real(text)
        p.stop()
        return maps

    monkeypatch.setattr(discover, "parse_maps", parse_then_kill)
    assert sc.scan_pid(p.pid) == {}
    assert sc.problems and all(pr.pid == p.pid for pr in sc.problems)


def test_describe(spawn: Any, go_binaries: dict[str, Path]) -> None:
    p1 = spawn([PYTHON, "-c", PY_SSL])
    p2 = spawn([str(go_binaries["plain"])])
    libs = Scanner().scan_all([p1.pid, p2.pid])
    text = describe_text(libs)
    assert "[openssl 3." in text and "[go go1." in text
    assert "SSL_read: FAST" in text and "crypto/tls.(*Conn).Read: SLOW" in text
    assert "single-step" in text and "emulated" in text and "Sysfd +16" in text and "sp_delta=+0" in text
    data = describe_data(libs)
    assert {d["kind"] for d in data} == {"openssl", "go"}
    assert all(isinstance(d["plans"][0]["sites"][0]["offset"], int) for d in data)
    # what `qtap inspect` renders: one flat-ish dict per file, every value JSON-able
    import msgspec

    rows = {r["kind"]: r for r in describe(libs)}
    assert set(rows) == {"openssl", "go"}
    assert "SSL_read" in rows["openssl"]["fast"] and rows["go"]["slow"] == ["crypto/tls.(*Conn).Read"]
    assert any("emulated" in s for s in rows["openssl"]["sites"]) and rows["go"]["reasons"]
    assert msgspec.json.decode(msgspec.json.encode(list(rows.values())))


def test_fake_proc_root_resolution_and_non_elf(tmp_path: Path) -> None:
    """Files are opened under /proc/PID/root; a non-ELF executable mapping is not a problem; the same
    file seen by two pids is analysed once and reported with both pids."""
    from .test_probe_points import _ldconfig

    proc = tmp_path / "proc"
    for pid in (200, 201):
        (proc / str(pid)).mkdir(parents=True)
    root = proc / "200" / "root"
    (root / "lib").mkdir(parents=True)
    shutil.copy(_ldconfig("libssl.so.3"), root / "lib" / "libssl.so.3")
    (root / "lib" / "jit.bin").write_bytes(b"not an elf at all" * 10)
    os.symlink(root, proc / "201" / "root")
    lines = []
    for i, name in enumerate(("libssl.so.3", "jit.bin")):
        st = os.stat(root / "lib" / name)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
        lines.append(f"7f000000{i}000-7f000000{i}fff r-xp 00000000 {dev} {st.st_ino} /lib/{name}")
    for pid in (200, 201):
        (proc / str(pid) / "maps").write_text("\n".join(lines) + "\n")
    sc = Scanner(proc=str(proc))
    libs = sc.scan_all()
    assert sc.problems == []
    assert len(libs) == 1
    lib = next(iter(libs.values()))
    assert lib.kind == "openssl" and lib.path == "/lib/libssl.so.3"
    assert lib.open_path == f"{proc}/200/root/lib/libssl.so.3" and sorted(lib.pids) == [200, 201]
    assert sc.analyses == 2  # libssl and the non-ELF, each once


def test_deleted_executable_is_read_through_map_files(spawn: Any, go_binaries: dict[str, Path], tmp_path: Path) -> None:
    """A binary replaced or removed after start (package upgrade) is still analysed, via map_files."""
    exe = tmp_path / "server"
    shutil.copy(go_binaries["stripped"], exe)
    p = spawn([str(exe)])
    exe.unlink()
    libs = Scanner().scan_pid(p.pid)
    go = _by_kind(libs, "go")
    assert len(go) == 1, describe_text(libs)
    assert go[0].path == str(exe) and "/map_files/" in go[0].open_path
