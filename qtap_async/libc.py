"""The C library this interpreter already runs on, for the calls the os module lacks (mount, umount2,
vsnprintf, malloc_trim).

Not ``ctypes.util.find_library("c")``: that runs ``ldconfig -p`` (then gcc or ld where it fails) in a
subprocess on every call, tens of milliseconds on the caller's thread. On the event loop in held-exec mode
it was worse: the agent's own hold stopped that ``ldconfig`` at exec while the loop waited for it, so
nothing was released and the agent hung. ``CDLL(None)`` is the process's global symbol namespace, where
the C library (glibc or musl) is loaded already.
"""

from __future__ import annotations

import ctypes

__all__ = ["libc"]


def libc(use_errno: bool = False) -> ctypes.CDLL:
    """A handle on the loaded C library; a new one per call, so argtypes set by one caller stay its own."""
    return ctypes.CDLL(None, use_errno=use_errno)
