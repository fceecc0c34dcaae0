"""The allocator `qtap run` runs on: pymalloc by default; with QTAP_ALLOCATOR=mimalloc re-executed onto
mimalloc in place (same PID), the user's environment given back to the programs it starts, the setting
checked, and the heap trim on mimalloc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtap_async import ldcache
from qtap_async.errors import ConfigError
from qtap_async.telemetry import allocator
from qtap_async.telemetry.memory import HeapTrimmer

ROOT = Path(__file__).resolve().parents[2]
# A program that does what `qtap run` does first, then reports what it runs on and what a child inherits.
PROBE = """
import json, os, subprocess, sys
from qtap_async.telemetry import allocator
from qtap_async.telemetry.memory import HeapTrimmer
note = allocator.reexec_onto_mimalloc()
child = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                       capture_output=True, text=True, check=True)
print(json.dumps({"pid": os.getpid(), "active": allocator.active(), "note": note,
                  "maps": "libmimalloc" in open("/proc/self/maps").read(),
                  "child_env": json.loads(child.stdout), "trim_is_mi": HeapTrimmer()._trim is not None
                  and HeapTrimmer()._trim.__qualname__.startswith("load_mimalloc_collect")}))
"""

needs_mimalloc = pytest.mark.skipif(allocator.find_mimalloc() is None,
                                    reason="libmimalloc2.0 not installed (scripts/bootstrap installs it)")


def run_probe(**env: str) -> dict[str, object]:
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC", allocator.ENV)}
    e.update(env)
    p = subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    res: dict[str, object] = json.loads(out)
    res["started_pid"] = p.pid
    return res


@needs_mimalloc
def test_reexecutes_in_place_and_children_get_the_users_environment() -> None:
    r = run_probe(QTAP_ALLOCATOR="mimalloc")
    assert r["active"] == "mimalloc" and r["maps"] is True and r["note"] is None
    assert r["pid"] == r["started_pid"]  # exec, not a child: supervisors and pid files keep the right PID
    child = r["child_env"]
    assert isinstance(child, dict)
    assert not {"LD_PRELOAD", "PYTHONMALLOC", "_QTAP_ALLOCATOR_REEXEC"} & child.keys(), sorted(child)
    assert r["trim_is_mi"] is True  # the heap trim returns mimalloc's free pages


@needs_mimalloc
def test_a_users_own_preload_is_kept_and_given_back() -> None:
    user = allocator.find_mimalloc()  # any library that preloads cleanly; the same one is fine
    assert user is not None
    # Preloaded already, but Python objects still on pymalloc: re-executed for PYTHONMALLOC only.
    r = run_probe(QTAP_ALLOCATOR="mimalloc", LD_PRELOAD=user)
    assert r["active"] == "mimalloc" and r["pid"] == r["started_pid"]
    child = r["child_env"]
    assert isinstance(child, dict) and child["LD_PRELOAD"] == user and "PYTHONMALLOC" not in child
    r = run_probe(QTAP_ALLOCATOR="mimalloc", LD_PRELOAD="libz.so.1")
    assert r["active"] == "mimalloc"
    child = r["child_env"]
    assert isinstance(child, dict) and child["LD_PRELOAD"] == "libz.so.1" and "PYTHONMALLOC" not in child


def test_pymalloc_is_the_default_and_means_no_reexec() -> None:
    for env in ({}, {"QTAP_ALLOCATOR": "pymalloc"}):
        r = run_probe(**env)
        assert r["active"] == "pymalloc" and r["maps"] is False and r["trim_is_mi"] is False
    r = run_probe(PYTHONMALLOC="malloc")  # the user's own choice for Python is left alone
    assert r["active"] == "malloc" and r["maps"] is False
    assert r["child_env"]["PYTHONMALLOC"] == "malloc"  # type: ignore[index]
    assert allocator.planned({}).startswith("pymalloc (the default")


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"QTAP_ALLOCATOR='jemalloc': must be one of pymalloc, mimalloc"):
        allocator.choice({"QTAP_ALLOCATOR": "jemalloc"})
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["QTAP_ALLOCATOR"] = "jemalloc"
    r = subprocess.run([sys.executable, "-m", "cli.main", "run", "--no-tls"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "QTAP_ALLOCATOR='jemalloc'" in r.stderr, r.stderr
    assert "INVALID: QTAP_ALLOCATOR='jemalloc'" in allocator.planned({"QTAP_ALLOCATOR": "jemalloc"})


def test_mimalloc_asked_for_but_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_SEARCH", ("/nonexistent/libmimalloc.so.2",))
    monkeypatch.setattr(ldcache, "loader_entries", lambda: [])
    execs: list[list[str]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append(argv)

    with pytest.raises(ConfigError, match=r"QTAP_ALLOCATOR=mimalloc: libmimalloc\.so\.2 is not installed"):
        allocator.reexec_onto_mimalloc({"QTAP_ALLOCATOR": "mimalloc"}, execve)
    assert not execs
    assert allocator.planned({"QTAP_ALLOCATOR": "mimalloc"}).startswith("NONE: QTAP_ALLOCATOR=mimalloc")


@needs_mimalloc
def test_the_reexec_keeps_the_arguments_and_marks_the_environment() -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    env = {"LD_PRELOAD": "libz.so.1", "HOME": "/root", "QTAP_ALLOCATOR": "mimalloc"}
    allocator.reexec_onto_mimalloc(env, lambda p, a, e: calls.append((p, a, e)))
    (path, argv, new), = calls
    assert path == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
    assert new["PYTHONMALLOC"] == "malloc" and new["LD_PRELOAD"].endswith(" libz.so.1")
    assert "libmimalloc" in new["LD_PRELOAD"] and env["LD_PRELOAD"] == "libz.so.1" and "PYTHONMALLOC" not in env
    assert json.loads(new["_QTAP_ALLOCATOR_REEXEC"]) == {"LD_PRELOAD": "libz.so.1", "PYTHONMALLOC": None}


def test_this_test_process_trims_with_glibc() -> None:
    # pytest itself runs on pymalloc: the trimmer falls back to malloc_trim (glibc).
    assert allocator.active() == "pymalloc"
    assert HeapTrimmer().available and allocator.load_mimalloc_collect() is None


@needs_mimalloc
@pytest.mark.bpf
def test_qtap_run_on_mimalloc_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_status_e2e import Agent

    monkeypatch.setenv("QTAP_ALLOCATOR", "mimalloc")  # the agent's Popen inherits it
    agent = Agent(tmp_path)
    try:
        info = next(k for k in agent.metrics() if k.startswith("qtap_build_info{"))
        assert 'allocator="mimalloc"' in info, info
        assert "libmimalloc" in Path(f"/proc/{agent.proc.pid}/maps").read_text()  # the PID started, exec'd
    finally:
        assert agent.stop() == 0
    assert "allocator: mimalloc" in agent.err.read_text()


@needs_mimalloc
def test_mimalloc_outside_the_usual_directories_comes_from_the_loader_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_SEARCH", ("/nonexistent/libmimalloc.so.2",))
    found = allocator.find_mimalloc()
    assert found is not None and Path(found).name == "libmimalloc.so.2"
    assert ("libmimalloc.so.2", found) in ldcache.entries()
