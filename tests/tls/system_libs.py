"""The system's OpenSSL, analysed: a real TLS library for tests that need one."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

import pytest

from qtap_async.tls.libraries import analyze_file
from qtap_async.tls.model import FileKey, TlsLibrary


def system_libssl() -> TlsLibrary:
    name = ctypes.util.find_library("ssl")
    if name is None:
        pytest.fail("no libssl on this machine (scripts/bootstrap installs OpenSSL)")
    path = next((p for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu")
                 if (p := Path(d) / name).exists()), None)
    assert path is not None, f"{name} not found in the usual library directories"
    st = os.stat(path)
    lib = analyze_file(str(path), FileKey(st.st_dev, st.st_ino))
    assert lib is not None, f"{path} is not recognised as a TLS library"
    return lib
