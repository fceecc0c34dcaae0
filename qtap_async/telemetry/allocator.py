"""The allocator behind the agent's Python objects, and `qtap run` re-executing itself onto mimalloc.

CPython's small-object allocator (pymalloc) gives a 1 MiB arena back to the system only once every object
in it is free. After a burst (10k connections opened, then closed) a few long-lived objects allocated during
it (timer handles, cached strings, the last parsed headers) are spread over the arenas the burst filled and
keep them: benchmarks/bench_memory.py measures RSS staying 6-9 MiB above its start after 10k idle connections
closed, memory the next burst reuses. mimalloc (Debian: libmimalloc2.0) returns free pages one by one: with
PYTHONMALLOC=malloc every Python object comes from it and RSS goes back to within 1-2 MiB of its start. It
may cost CPU: the replay benchmark runs as fast, but the live agent spent 1-15 % more CPU per request on small
HTTP/1.1 exchanges at 10k req/s (glibc's malloc for Python objects returns memory too, at 10-30 % of replay
throughput). So pymalloc is the default, and ``QTAP_ALLOCATOR=mimalloc`` the choice for
hosts where memory given back after bursts matters more than that CPU.

The library must be preloaded before the interpreter starts, so ``reexec_onto_mimalloc`` replaces the
process (same PID, same arguments) once at the start of `qtap run`; the new process takes LD_PRELOAD and
PYTHONMALLOC back out of its environment, so the programs it starts inherit the user's own.
``QTAP_ALLOCATOR``: ``pymalloc`` (the default: CPython's own, no re-exec) or ``mimalloc`` (an error when it
is not installed).
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from qtap_async import ldcache
from qtap_async.errors import ConfigError

__all__ = ["CHOICES", "ENV", "active", "choice", "find_mimalloc", "load_mimalloc_collect", "planned",
           "reexec_onto_mimalloc"]

ENV = "QTAP_ALLOCATOR"
CHOICES = ("pymalloc", "mimalloc")
# Set only in the re-executed process: what LD_PRELOAD and PYTHONMALLOC were before, to put them back.
_MARK = "_QTAP_ALLOCATOR_REEXEC"
_SEARCH = ("/usr/lib/*-linux-gnu/libmimalloc.so.2", "/usr/lib64/libmimalloc.so.2", "/usr/local/lib/libmimalloc.so.2",
           "/usr/lib/libmimalloc.so.2")


def choice(env: MutableMapping[str, str] | None = None) -> str:
    """The QTAP_ALLOCATOR setting; ConfigError naming it for anything but ``CHOICES``."""
    value = (os.environ if env is None else env).get(ENV, "pymalloc").strip().lower() or "pymalloc"
    if value not in CHOICES:
        raise ConfigError(f"{ENV}={value!r}: must be one of {', '.join(CHOICES)}")
    return value


def find_mimalloc() -> str | None:
    """The path of libmimalloc.so.2 on this system, or None."""
    for pattern in _SEARCH:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    # Elsewhere on the loader's path: its cache, read in place (no ldconfig child).
    return next((path for name, path in ldcache.loader_entries() if name == "libmimalloc.so.2"), None)


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
        return f"pymalloc (the default; {ENV}=mimalloc gives memory back after bursts, for more CPU)"
    lib = find_mimalloc()
    if lib is None:
        return f"NONE: {ENV}=mimalloc but libmimalloc.so.2 is not installed (Debian: libmimalloc2.0)"
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
    if choice(env) == "pymalloc":
        return None
    loaded = _mimalloc_symbol("mi_collect") is not None  # preloaded by the user (or a wrapper) already
    if loaded and _python_on_malloc(env):
        return None
    lib = None if loaded else find_mimalloc()
    if not loaded and lib is None:
        raise ConfigError(f"{ENV}=mimalloc: libmimalloc.so.2 is not installed (Debian: apt install libmimalloc2.0)")
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
