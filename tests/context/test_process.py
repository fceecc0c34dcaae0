"""The process cache on real processes: what /proc says of a live one, what the kernel's exec and fork
hints say of one that is gone or has exec'd since, the cgroup id -> path map on the real hierarchy."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.bpf.loader import Capture, CaptureSettings
from qtap_async.context.process import (
    CgroupPaths,
    ProcessCache,
    cgroup_path,
    container_id_from_cgroup,
    read_process,
    user_name,
)
from qtap_async.events.kernel import ProcExec
from qtap_async.sources.decode import decode

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")
TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
CID = "a" * 64


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _spawn(procs: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(argv, stdin=subprocess.PIPE)
    procs.append(p)
    _wait_exe(p.pid, os.path.realpath(argv[0]) if argv[0].startswith("/") else None)
    return p


def _wait_exe(pid: int, exe: str | None) -> None:
    """Until /proc shows the program (fork and exec have happened); a wait, not a timing assertion.

    The kernel switches /proc/PID/exe before it writes the new argv, so the cmdline is waited for too.
    """
    for _ in range(500):
        try:
            now = os.readlink(f"/proc/{pid}/exe")
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            now, args = "", b""
        if now and args and (exe is None or now == exe):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never showed {exe}")


def _gone_pid() -> int:
    """A pid that existed a moment ago and has been reaped."""
    p = subprocess.Popen([TRUE])
    p.wait()
    assert not Path(f"/proc/{p.pid}").exists()
    return p.pid


def _exe_key(path: str) -> tuple[int, int]:
    """(dev, inode) as the kernel's exec record gives them: s_dev is MAJOR << 20 | MINOR."""
    st = os.stat(path)
    return (os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino


def test_a_live_process_is_read_from_proc(procs: list[subprocess.Popen[bytes]]) -> None:
    p = _spawn(procs, SLEEP, "30")
    info = ProcessCache().get(p.pid)
    cgroup_text = Path(f"/proc/{p.pid}/cgroup").read_text()
    assert info.pid == p.pid
    assert info.exe == SLEEP
    assert info.comm == "sleep"
    assert info.cmdline == f"{SLEEP} 30"
    assert info.uid == os.getuid() and info.user == user_name(os.getuid())
    assert info.cgroup == cgroup_path(cgroup_text)
    assert info.container_id == container_id_from_cgroup(cgroup_text)


def test_an_exec_is_seen_only_once_the_kernel_says_so(procs: list[subprocess.Popen[bytes]]) -> None:
    p = _spawn(procs, BASH, "-c", f"read line; exec {SLEEP} 30")
    cache = ProcessCache()
    assert cache.get(p.pid).exe == BASH
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    _wait_exe(p.pid, SLEEP)
    assert cache.get(p.pid).exe == BASH  # cached: one /proc read per pid
    cache.on_exec(p.pid, "sleep", SLEEP)
    assert cache.exec_gen[p.pid] == 1
    info = cache.get(p.pid)
    assert (info.exe, info.comm, info.cmdline) == (SLEEP, "sleep", f"{SLEEP} 30")


def test_a_record_from_before_an_exec_names_the_program_that_made_it(procs: list[subprocess.Popen[bytes]]) -> None:
    # bash -c '...; exec sleep': a record bash wrote is read after the exec, when /proc already says sleep.
    p = _spawn(procs, BASH, "-c", f"read line; exec {SLEEP} 30")
    cache = ProcessCache()
    dev, ino = _exe_key(BASH)
    cache.on_exec(p.pid, "bash", "/bin/bash", exe_ino=ino, exe_dev=dev)  # the exec record that started bash
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    _wait_exe(p.pid, SLEEP)
    assert cache.get(p.pid).exe == SLEEP
    seen = cache.as_seen(p.pid, "bash")
    assert (seen.pid, seen.exe, seen.comm) == (p.pid, BASH, "bash")
    assert cache.as_seen(p.pid, "sleep").exe == SLEEP
    assert cache.as_seen(p.pid, "renamed-thread").exe == SLEEP  # no hint with that comm: /proc's answer


def test_a_gone_process_is_named_from_its_exec_record() -> None:
    pid = _gone_pid()
    dev, ino = _exe_key(TRUE)
    cache = ProcessCache()
    cache.on_exec(pid, "true", TRUE, uid=4242, exe_ino=ino, exe_dev=dev)
    info = cache.get(pid)
    assert (info.pid, info.exe, info.comm, info.cmdline) == (pid, TRUE, "true", "")
    assert (info.uid, info.user) == (4242, user_name(4242))


def test_the_same_binary_is_named_as_proc_named_it(procs: list[subprocess.Popen[bytes]]) -> None:
    # A live sleep tells the path of its (dev, inode); a gone process that exec'd the same file through
    # another name (a relative one, here) is named by that path.
    live = _spawn(procs, SLEEP, "30")
    dev, ino = _exe_key(SLEEP)
    cache = ProcessCache()
    cache.on_exec(live.pid, "sleep", SLEEP, exe_ino=ino, exe_dev=dev)
    assert cache.get(live.pid).exe == SLEEP
    gone = _gone_pid()
    cache.on_exec(gone, "sleep", "sleep", exe_ino=ino, exe_dev=dev)
    assert cache.get(gone).exe == SLEEP
    other = _gone_pid()
    cache.on_exec(other, "sleep", "sleep")  # no inode: the filename as the kernel gave it
    assert cache.get(other).exe == "sleep"


def test_a_gone_child_runs_its_parents_program(procs: list[subprocess.Popen[bytes]]) -> None:
    parent = _spawn(procs, SLEEP, "30")
    child = _gone_pid()
    cache = ProcessCache()
    cache.on_fork(child, parent.pid, uid=777)
    info = cache.get(child)
    assert (info.pid, info.exe, info.comm, info.cmdline) == (child, SLEEP, "sleep", f"{SLEEP} 30")
    assert (info.uid, info.user) == (777, user_name(777))  # what the fork record said of the child
    # An exec after the fork: the child is its own program again.
    cache.on_exec(child, "true", TRUE)
    assert cache.get(child).exe == TRUE


def test_processes_running_at_start_are_remembered(procs: list[subprocess.Popen[bytes]]) -> None:
    p = _spawn(procs, SLEEP, "30")
    cache = ProcessCache()
    assert cache.snapshot_at_start() > 1
    p.kill()
    p.wait()
    assert not Path(f"/proc/{p.pid}").exists()
    assert cache.get(p.pid).exe == SLEEP


def test_the_cache_is_bounded_least_recently_used_first(procs: list[subprocess.Popen[bytes]]) -> None:
    a, b, c = (_spawn(procs, BASH, "-c", f"read line; exec {SLEEP} 30") for _ in range(3))
    cache = ProcessCache(max_entries=2)
    for p in (a, b, c):
        assert cache.get(p.pid).exe == BASH
    for p in (a, c):
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        _wait_exe(p.pid, SLEEP)
    # a was evicted when c came in: read again, it shows what it runs now; c is still the cached bash.
    assert cache.get(a.pid).exe == SLEEP
    assert cache.get(c.pid).exe == BASH


def test_read_process_of_a_gone_pid_keeps_the_hints() -> None:
    info = read_process(_gone_pid(), comm_hint="curl", exe_hint="/usr/bin/curl")
    assert (info.exe, info.comm, info.cmdline, info.uid, info.user) == ("/usr/bin/curl", "curl", "", -1, "")


def test_container_ids_and_cgroup_paths_in_cgroup_files() -> None:
    assert container_id_from_cgroup(f"0::/system.slice/docker-{CID}.scope\n") == CID
    assert container_id_from_cgroup(f"12:memory:/docker/{CID}\n0::/\n") == CID
    assert container_id_from_cgroup(f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope\n") == CID
    assert container_id_from_cgroup(f"0::/machine.slice/libpod-{CID}.scope/container\n") == CID
    assert container_id_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n") == ""
    assert container_id_from_cgroup(f"0::/x/{CID}0\n") == ""  # 65 hex digits are not an id
    assert cgroup_path("4:memory:/m\n0::/user.slice\n") == "/user.slice"
    assert cgroup_path("4:memory:/m\n1:cpu:/c\n") == "/m"  # v1 only: the first line's
    assert cgroup_path("") == ""
    assert user_name(0) == "root"
    assert user_name(2**31 - 7) == str(2**31 - 7)


def _cgroup2_root() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.startswith("cgroup2 "):
            return Path(left.split()[4])
    raise AssertionError("this test needs a cgroup v2 hierarchy (mounted by systemd or scripts/bootstrap)")


def test_cgroup_ids_map_to_paths_and_a_new_cgroup_is_found_after_the_rescan_interval() -> None:
    root = _cgroup2_root()
    paths = CgroupPaths(rescan_ns=1_000)
    assert paths.root == str(root)
    assert paths.path(root.stat().st_ino, now_ns=0) == "/"
    assert paths.path(0, now_ns=0) == ""
    new = root / f"qtap-test-{uuid.uuid4().hex[:8]}"
    new.mkdir()
    try:
        ino = new.stat().st_ino
        assert paths.path(ino, now_ns=500) == ""  # scanned at 0: one walk per interval, however many misses
        assert paths.path(ino, now_ns=1_000) == "/" + new.name
        inner = new / "inner"
        inner.mkdir()
        try:
            assert paths.path(inner.stat().st_ino, now_ns=5_000) == f"/{new.name}/inner"
        finally:
            inner.rmdir()
    finally:
        new.rmdir()


def test_a_gone_process_gets_its_cgroup_and_container_from_the_kernels_cgroup_id() -> None:
    root = _cgroup2_root()
    new = root / f"docker-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope"
    new.mkdir()
    try:
        pid = _gone_pid()
        cache = ProcessCache(cgroups=CgroupPaths(rescan_ns=1))
        info = cache.get(pid, "curl", uid=0, cgroup_id=new.stat().st_ino, now_ns=10)
        assert (info.comm, info.uid, info.user) == ("curl", 0, "root")
        assert info.cgroup == "/" + new.name
        assert info.container_id == new.name[len("docker-"):-len(".scope")]
    finally:
        new.rmdir()


@pytest.mark.bpf
def test_the_kernels_exec_record_keys_the_executable_as_proc_does(procs: list[subprocess.Popen[bytes]]) -> None:
    # The exec record's (dev, inode) comes from the kernel (s_dev encoding); the cache must recognise it as
    # the file /proc/PID/exe names, else a gone process running the same binary is not named by its path.
    with Capture(CaptureSettings(self_tgid=os.getpid(), wakeup_bytes=0)) as cap:
        assert cap.ringbuf is not None
        live = _spawn(procs, SLEEP, "30")
        execs: list[ProcExec] = []
        for _ in range(50):
            execs += [r for r in map(decode, cap.ringbuf.poll(100)) if isinstance(r, ProcExec) and r.pid == live.pid]
            if execs:
                break
    assert execs, "no exec record for the spawned sleep"
    rec = execs[-1]
    assert (rec.exe_dev, rec.exe_ino) == _exe_key(SLEEP)
    cache = ProcessCache()
    cache.on_exec(rec.pid, rec.comm, rec.filename, rec.uid, rec.cgroup_id, rec.exe_ino, rec.exe_dev)
    assert cache.get(live.pid).exe == SLEEP
    gone = _gone_pid()
    cache.on_exec(gone, rec.comm, "./sleep", exe_ino=rec.exe_ino, exe_dev=rec.exe_dev)
    assert cache.get(gone).exe == SLEEP


def test_exited_processes_are_forgotten_after_the_bound_and_live_ones_still_named(
        procs: list[subprocess.Popen[bytes]]) -> None:
    # The soak's churn: a short-lived program per request. Each is forked, exec'd, looked up (its
    # connection), and exits; the cache keeps the last `exited_keep` of them and forgets the others.
    live = _spawn(procs, SLEEP, "30")
    dev, ino = _exe_key(TRUE)
    keep, runs = 8, 40
    cache = ProcessCache(exited_keep=keep)
    assert cache.get(live.pid).exe == SLEEP
    gone: list[int] = []
    for _ in range(runs):
        p = subprocess.Popen([TRUE])
        cache.on_fork(p.pid, os.getpid())
        cache.on_exec(p.pid, "true", TRUE, exe_ino=ino, exe_dev=dev)
        cache.get(p.pid)
        p.wait()
        cache.on_exit(p.pid)
        gone.append(p.pid)
    # The live process, the test's own (the forks' parent) and the last `keep` exits; nothing else.
    assert cache.tracked_pids() <= keep + 2
    st = cache.stats()
    assert st.entries <= keep + 2 and (st.evicted_exited, st.evicted_full) == (runs - keep, 0)
    # A recent exit is still named from what was cached (its connections may close after it)...
    assert cache.get(gone[-1]).exe == TRUE
    # ... an old one was forgotten: /proc and the hints are gone, so it is nameless.
    assert cache.get(gone[0]).exe == ""
    # And the live process is still named right (it was never touched by the forgetting).
    info = cache.get(live.pid)
    assert (info.exe, info.cmdline) == (SLEEP, f"{SLEEP} 30")


def test_a_reused_pid_is_not_forgotten_by_its_earlier_exit(procs: list[subprocess.Popen[bytes]]) -> None:
    # pid numbers wrap: the exit of an earlier process with this pid must not drop the new one's entry.
    p = _spawn(procs, SLEEP, "30")
    cache = ProcessCache(exited_keep=2)
    cache.on_exit(p.pid)  # an earlier process that had this pid
    cache.on_fork(p.pid, os.getpid())
    cache.on_exec(p.pid, "sleep", SLEEP)
    assert cache.get(p.pid).exe == SLEEP
    for _ in range(5):
        cache.on_exit(_gone_pid())
    assert p.pid in cache._cache and cache.exec_gen.get(p.pid) == 1
    assert cache.stats().evicted_exited == 0  # the gone pids had nothing cached: nothing was forgotten
