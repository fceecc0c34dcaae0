"""ctypes declarations for the system libbpf (libbpf.so.1, >= 1.0).

The only place that knows libbpf's C signatures. Every function gets argtypes/restype so a wrong call
fails in Python instead of corrupting memory. libbpf 1.x reports errors as negative return values or as
NULL with errno set; `check_ptr`/`check_int` turn both into typed exceptions.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import Any

from qtap_async.errors import BpfError, LibbpfMissingError
from qtap_async.libc import libc

BTF_KIND_DATASEC = 15
_logger = logging.getLogger("qtap.bpf")

# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *, va_list ap)
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)


class BtfType(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts (libbpf >= 1.0 layout; `sz` tells libbpf which fields we know)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_major_version": (c_uint32, []),
    "libbpf_minor_version": (c_uint32, []),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__set_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_attach_target": (c_int, [c_void_p, c_int, c_char_p]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_tracepoint": (c_void_p, [c_void_p, c_char_p, c_char_p]),
    "bpf_program__attach_raw_tracepoint": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__attach_uprobe": (c_void_p, [c_void_p, c_bool, c_int, c_char_p, c_size_t]),
    "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t, POINTER(UprobeOpts)]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (POINTER(BtfType), [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__add": (c_int, [c_void_p, c_int, SAMPLE_FN, c_void_p]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(ctypes.c_uint32)]),
}


class Libbpf:
    """The loaded library with typed functions as attributes, plus log capture."""

    def __init__(self) -> None:
        name = os.environ.get("QTAP_LIBBPF", "libbpf.so.1")
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise LibbpfMissingError(
                f"cannot load {name} ({exc}); install the system libbpf: apt-get install libbpf1 "
                "(Debian/Ubuntu) or dnf install libbpf (Fedora)"
            ) from exc
        for fname, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(self.lib, fname)
            except AttributeError as exc:
                raise LibbpfMissingError(f"{name} lacks {fname}: libbpf >= 1.0 is required") from exc
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, fname, fn)
        self.version = (self.lib.libbpf_major_version(), self.lib.libbpf_minor_version())
        if self.version < (1, 0):
            raise LibbpfMissingError(f"libbpf {self.version[0]}.{self.version[1]} found; >= 1.0 is required")
        self._libc = libc()
        self._libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        self._libc.vsnprintf.restype = c_int
        self._log_lock = threading.Lock()
        self._log: list[str] | None = None
        self._print_cb = PRINT_FN(self._on_print)  # kept referenced: libbpf holds the pointer
        self.lib.libbpf_set_print(self._print_cb)

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        # x86_64 passes va_list as a pointer, so libc's vsnprintf can format it for us.
        if fmt is None:
            return 0
        buf = ctypes.create_string_buffer(8192)
        self._libc.vsnprintf(buf, len(buf), fmt, args)
        text = buf.value.decode("utf-8", "replace")
        if self._log is not None:
            self._log.append(text)
        elif level == 0:  # LIBBPF_WARN outside a captured call: still worth seeing
            _logger.warning("libbpf: %s", text.rstrip())
        return 0

    @contextmanager
    def capture_log(self) -> Iterator[list[str]]:
        """Collect what libbpf prints (incl. the verifier log on a failed load) during the block."""
        lines: list[str] = []
        with self._log_lock:
            self._log = lines
            try:
                yield lines
            finally:
                self._log = None

    def __getattr__(self, item: str) -> Any:  # for mypy: attributes are set dynamically above
        raise AttributeError(item)


_lib: Libbpf | None = None
_lib_lock = threading.Lock()


def libbpf() -> Libbpf:
    """The process-wide Libbpf, loaded on first use (so importing qtap_async needs no libbpf)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = Libbpf()
        return _lib


def check_ptr(ptr: int | None, what: str, detail: str = "", log: str = "", exc: type[BpfError] = BpfError) -> int:
    """A libbpf pointer result: NULL means failure with errno set."""
    if not ptr:
        err = ctypes.get_errno() or 22
        raise exc(what, err, detail, log)
    return ptr


def check_int(ret: int, what: str, detail: str = "", log: str = "", exc: type[BpfError] = BpfError) -> int:
    """A libbpf int result: negative errno means failure."""
    if ret < 0:
        raise exc(what, -ret, detail, log)
    return ret
