"""The allocator behind the agent's Python objects, and `qtap run` re-executing itself onto mimalloc.

CPython's small-object allocator (pymalloc) gives a 1 MiB arena back to the system only once every object
in it is free. After a burst (10k connections opened, then closed) a few dozen long-lived objects allocated
during it (timer handles, cached strings, the last parsed headers) are spread over the arenas the burst
filled and keep them all: benchmarks/bench_memory.py measured half of what 10k idle connections held still
resident after they closed. mimalloc (Debian: libmimalloc2.0) returns free pages one by one; with
PYTHONMALLOC=malloc every Python object comes from it, and the replay benchmark runs as fast as on pymalloc
(glibc's malloc instead returns memory as well but costs 10-30 % of replay throughput).

The library must be preloaded before the interpreter starts, so ``reexec_onto_mimalloc`` replaces the
process (same PID, same arguments) once at the start of `qtap run`; the new process takes LD_PRELOAD and
PYTHONMALLOC back out of its environment, so the programs it starts inherit the user's own.
``QTAP_ALLOCATOR``: ``auto`` (the default: mimalloc when installed), ``mimalloc`` (required: an error when it
is missing) or ``pymalloc`` (CPython's own, no re-exec).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from qtap_async.errors import ConfigError

__all__ = ["CHOICES", "ENV", "active", "choice", "find_mimalloc", "load_mimalloc_collect", "planned",
           "reexec_onto_mimalloc"]

ENV = "QTAP_ALLOCATOR"
CHOICES = ("auto", "mimalloc", "pymalloc")
# Set only in the re-executed process: what LD_PRELOAD and PYTHONMALLOC were before, to put them back.
_MARK = "_QTAP_ALLOCATOR_REEXEC"
_SEARCH = ("/usr/lib/*-linux-gnu/libmimalloc.so.2", "/usr/lib64/libmimalloc.so.2", "/usr/local/lib/libmimalloc.so.2",
           "/usr/lib/libmimalloc.so.2")


def choice(env: MutableMapping[str, str] | None = None) -> str:
    """The QTAP_ALLOCATOR setting; ConfigError naming it for anything but the three choices."""
    value = (os.environ if env is None else env).get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(f"{ENV}={value!r}: must be one of {', '.join(CHOICES)}")
    return value


def find_mimalloc() -> str | None:
    """The path of libmimalloc.so.2 on this system, or None."""
    for pattern in _SEARCH:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    name = ctypes.util.find_library("mimalloc")  # elsewhere on the loader's path (ldconfig)
    return name


def _mimalloc_symbol(name: str) -> Any:  # a ctypes function, or None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


# True in the re-executed process, whose PYTHONMALLOC=malloc is no longer in its environment.
_reexecuted = False


def _python_on_malloc(env: MutableMapping[str, str]) -> bool:
    return _reexecuted or env.get("PYTHONMALLOC", "").startswith("malloc")


def active() -> str:
    """What this process allocates Python objects with: mimalloc, malloc (the C library's) or pymalloc."""
    if not _python_on_malloc(os.environ):
        return "pymalloc"  # whatever malloc is, small objects come from pymalloc's arenas
    return "mimalloc" if _mimalloc_symbol("mi_collect") is not None else "malloc"


def load_mimalloc_collect() -> Callable[[], None] | None:
    """``mi_collect(true)`` (free pages back to the system now) when mimalloc is this process's allocator."""
    fn = _mimalloc_symbol("mi_collect")
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_bool]
    fn.restype = None

    def collect() -> None:
        fn(True)

    return collect


def planned(env: MutableMapping[str, str] | None = None) -> str:
    """What `qtap run` started here would allocate with, and why (for `qtap inspect`)."""
    env = os.environ if env is None else env
    try:
        want = choice(env)
    except ConfigError as exc:
        return f"INVALID: {exc}"
    if want == "pymalloc":
        return f"pymalloc ({ENV}=pymalloc)"
    if want == "auto" and env.get("PYTHONMALLOC"):
        return f"as PYTHONMALLOC={env['PYTHONMALLOC']} asks"
    lib = find_mimalloc()
    if lib is None:
        if want == "mimalloc":
            return f"NONE: {ENV}=mimalloc but libmimalloc.so.2 is not installed (Debian: libmimalloc2.0)"
        return "pymalloc (libmimalloc.so.2 is not installed: RSS returns slowly after bursts)"
    return f"mimalloc ({lib})"


def reexec_onto_mimalloc(env: MutableMapping[str, str] | None = None,
                         execve: Callable[[str, list[str], dict[str, str]], object] = os.execve) -> str | None:
    """Re-execute this process with mimalloc preloaded, as QTAP_ALLOCATOR asks; returns only when no
    re-exec is needed, with why not (None: nothing to say). In the re-executed process it restores the
    environment and returns None."""
    global _reexecuted
    env = os.environ if env is None else env
    saved = env.pop(_MARK, None)
    if saved is not None:
        _reexecuted = True
        for key, value in json.loads(saved).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        if _mimalloc_symbol("mi_collect") is None:
            return "mimalloc could not be preloaded: allocating with the C library's malloc"
        return None
    want = choice(env)
    if want == "pymalloc" or (want == "auto" and env.get("PYTHONMALLOC")):  # off, or the user chose for Python
        return None
    loaded = _mimalloc_symbol("mi_collect") is not None  # preloaded by the user (or a wrapper) already
    if loaded and _python_on_malloc(env):
        return None
    lib = None if loaded else find_mimalloc()
    if not loaded and lib is None:
        if want == "mimalloc":
            raise ConfigError(f"{ENV}=mimalloc: libmimalloc.so.2 is not installed (Debian: apt install libmimalloc2.0)")
        return "libmimalloc.so.2 is not installed: allocating with pymalloc (RSS returns slowly after bursts)"
    new = dict(env)
    new[_MARK] = json.dumps({"LD_PRELOAD": env.get("LD_PRELOAD"), "PYTHONMALLOC": env.get("PYTHONMALLOC")})
    if lib is not None:
        new["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else lib
    new["PYTHONMALLOC"] = "malloc"
    try:
        execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], new)
    except OSError as exc:
        return f"re-executing onto mimalloc failed ({exc}): allocating with pymalloc"
    return None  # only a test's execve returns
